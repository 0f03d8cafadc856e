"""The audit writer: renkei.audit -> the hash-chained audit_record table, with signed
checkpoints."""
