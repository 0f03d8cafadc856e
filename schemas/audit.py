"""The audit record: what one action did, emitted through the outbox onto ``renkei.audit``.

Every service says what happened in these words; the audit writer (consumers.audit) chains and
stores them, and GET /fhir/AuditEvent shapes them as FHIR AuditEvents (IHE Basic Audit Log
Patterns). The record names actors and resources by their hub ids only (Organization,
PractitionerRole, client, token id, the patient's FHIR id): never a name, an identifier value,
a query's values or message content, so the trail itself holds no personal data to protect.

The record value on Kafka is a JSON array of the canonical documents of one transaction's
records (``batch_bytes``), sealed under the hub's data key (the trail must outlive a patient's
forgotten keys), AAD ``kafka|audit|<first record id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

AUDIT_SCHEMA_VERSION = 1  # of one record's document (hashed into the chain)
# Of the Kafka record: version 2 carries every audit record of one transaction as a JSON array,
# sealed once, so auditing adds one outbox row per transaction, not one per record.
AUDIT_BATCH_VERSION = 2
HEADER_AUDIT_ID = "renkei-audit-id"  # the first record's id (AAD and outbox key)
HEADER_AUDIT_COUNT = "renkei-audit-count"
HEADER_SCHEMA_VERSION = "renkei-schema-version"
HEADER_KEY_ID = "renkei-key-id"


def audit_record_aad(record_id: str) -> str:
    return f"kafka|audit|{record_id}"


class AuditAction(StrEnum):
    """One code per kind of action (the record's ``action``)."""

    # intake (POST /fhir/$process-message)
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_REFUSED = "message.refused"
    EVENT_LINKED = "event.linked"  # the region office linked an unmatched event to a patient
    # routing: one record per recipient decision
    ROUTING_DELIVERED = "routing.delivered"
    ROUTING_WITHHELD = "routing.withheld"  # consent did not permit it (reason says which rule)
    ROUTING_BREAK_GLASS = "routing.break-glass"  # delivered outside consent, as an emergency
    BREAK_GLASS_REVIEWED = "break-glass.reviewed"
    # escalation of an unanswered stat acute change (services/escalation)
    ESCALATION_FIRED = "escalation.fired"  # one record per escalation notification written
    ESCALATION_WITHHELD = "escalation.withheld"  # consent did not permit that step's recipient
    ESCALATION_SKIPPED = "escalation.skipped"  # the care team has nobody in the step's role
    # notifications (the inbox)
    NOTIFICATION_LISTED = "notification.listed"
    NOTIFICATION_READ = "notification.read"
    NOTIFICATION_ACKNOWLEDGED = "notification.acknowledged"
    # GET /notifications/stream opened (each notification it then delivers is a
    # notification.listed record with detail {"via": "stream"})
    STREAM_OPENED = "notification.stream-opened"
    # the sender read its message's receipts (GET /fhir/MessageHeader/{id}/$status)
    RECEIPTS_READ = "receipts.read"
    # patient data in the registry (Patient, CareTeam, Consent, the unmatched queue)
    PATIENT_READ = "patient.read"
    PATIENT_QUERY = "patient.query"
    # registry writes, with their author (Consent changes are these with entity type Consent)
    RESOURCE_CREATED = "resource.created"
    RESOURCE_UPDATED = "resource.updated"
    RESOURCE_DELETED = "resource.deleted"
    PATIENT_FORGOTTEN = "patient.forgotten"
    # tokens, clients, sign-in
    TOKEN_ISSUED = "token.issued"
    TOKEN_REFUSED = "token.refused"  # POST /oauth/token answered with an error
    TOKEN_REVOKED = "token.revoked"
    SIGNIN_FAILED = "signin.failed"  # a request's bearer token did not verify
    # A signed-in caller the route rules refused (role, scope): services.auth.policy.
    ACCESS_REFUSED = "access.refused"
    CLIENT_ADDED = "client.added"
    CLIENT_REVOKED = "client.revoked"
    # keys
    KEYS_ROTATED = "keys.rotated"
    # the audit trail itself
    AUDIT_QUERIED = "audit.queried"
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_ARCHIVED = "audit.archived"


class AuditOutcome(StrEnum):
    """FHIR AuditEvent.outcome codes."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"  # refused: the caller's request was wrong or not allowed
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(frozen=True)
class AuditAgent:
    """Who acted: the organization and role always; the person, client and token when known.

    The hub's own workers (router, relay, CLI on the host) act as ``org`` = the region office
    with role ``system`` and ``client`` = ``hub:router`` / ``hub:cli`` and so on.
    """

    org: str
    role: str
    practitioner: str | None = None  # PractitionerRole id
    client: str | None = None
    token: str | None = None  # the token's jti
    network: str | None = None  # the caller's address (AuditEvent.agent.network)


@dataclass(frozen=True)
class AuditEntity:
    """A resource the action touched, as ``type/id`` (``Patient/p1``, ``Communication/n1``,
    ``Bundle/<event id>``, ``Consent/c1``) and its role in the action (DICOM/HL7
    object-role: 1 patient, 3 report, 4 domain resource, 24 query, ...)."""

    reference: str
    role: str = "4"
    # The query's parameter names (never their values) for searches.
    query: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    id: str  # uuid4, chosen by the emitter: the writer stores each id once
    recorded: datetime  # the hub's clock when the action committed (timezone-aware)
    action: AuditAction
    outcome: AuditOutcome
    agent: AuditAgent
    patient: str | None = None  # the Patient's hub id (FHIR id), when one is concerned
    # The organization whose data the action touched: the sender of the message that was
    # routed, listed, read or acknowledged. Its auditor sees who accessed what it sent.
    source_org: str | None = None
    entities: tuple[AuditEntity, ...] = field(default_factory=tuple)
    # Why it was refused or withheld, in the hub's own words (no personal data).
    reason: str | None = None
    # Seconds the session (the token) had been alive, for sign-in style records.
    detail: dict[str, Any] = field(default_factory=dict)
    schema_version: int = AUDIT_SCHEMA_VERSION

    def to_document(self) -> dict[str, Any]:
        """The canonical document: what is sealed, stored and hashed into the chain."""
        agent = {k: v for k, v in vars(self.agent).items() if v is not None}
        entities = [{k: v for k, v in vars(e).items() if v is not None} for e in self.entities]
        document: dict[str, Any] = {
            "id": self.id,
            "recorded": self.recorded.isoformat(),
            "action": str(self.action),
            "outcome": str(self.outcome),
            "agent": agent,
            "entities": entities,
            "schema_version": self.schema_version,
        }
        if self.patient is not None:
            document["patient"] = self.patient
        if self.source_org is not None:
            document["source_org"] = self.source_org
        if self.reason is not None:
            document["reason"] = self.reason
        if self.detail:
            document["detail"] = self.detail
        return document

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_document())

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> AuditRecord:
        return cls(
            id=document["id"],
            recorded=datetime.fromisoformat(document["recorded"]),
            action=AuditAction(document["action"]),
            outcome=AuditOutcome(document["outcome"]),
            agent=AuditAgent(**document["agent"]),
            patient=document.get("patient"),
            source_org=document.get("source_org"),
            entities=tuple(AuditEntity(**e) for e in document.get("entities", ())),
            reason=document.get("reason"),
            detail=document.get("detail", {}),
            schema_version=document.get("schema_version", AUDIT_SCHEMA_VERSION),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuditRecord:
        return cls.from_document(json.loads(raw))



def batch_bytes(records: list[AuditRecord]) -> bytes:
    """One transaction's records, in order, as one JSON array of canonical documents."""
    return b"[" + b",".join(r.to_bytes() for r in records) + b"]"


def batch_from_bytes(raw: bytes) -> list[AuditRecord]:
    documents = json.loads(raw)
    if not isinstance(documents, list) or not documents:
        raise ValueError("an audit batch is a non-empty JSON array")
    return [AuditRecord.from_document(d) for d in documents]


def batch_headers(records: list[AuditRecord], key_id: str) -> list[tuple[str, bytes]]:
    return [
        (HEADER_AUDIT_ID, records[0].id.encode()),
        (HEADER_AUDIT_COUNT, str(len(records)).encode()),
        (HEADER_SCHEMA_VERSION, str(AUDIT_BATCH_VERSION).encode()),
        (HEADER_KEY_ID, key_id.encode()),
    ]


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same document always gives the same bytes (what
    the chain's SHA-256 is taken over; RFC 8785 in spirit for the JSON the records hold)."""
    return json.dumps(
        document, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")
