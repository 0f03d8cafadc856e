"""The audit trail: records emitted with every action, chained and stored by the audit writer,
reviewed through GET /fhir/AuditEvent and ``renkei audit``."""
