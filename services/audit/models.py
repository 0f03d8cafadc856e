"""Audit tables: the append-only chain of records and its signed checkpoints.

``audit_record`` is written by the audit writer alone, in chain order (``seq`` 1, 2, 3 ...
without gaps): each row's ``hash`` is SHA-256 over the previous row's hash and this row's
canonical document, so changing, removing or inserting a row breaks every link after it. The
columns beside the document are copies of its fields for searching; ``renkei audit verify``
checks they agree with the document. ``audit_checkpoint`` rows sign the chain head every N
records or T seconds, each naming the previous checkpoint (a digest chain like CloudTrail's).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime

# The chain's start: the "previous hash" of record 1 (and of an archive's first record is the
# hash its predecessor in the live chain had, so verify passes across a retention cut).
GENESIS_HASH = "0" * 64


class AuditRecordRow(Base):
    __tablename__ = "audit_record"
    __table_args__ = (
        Index("ix_audit_record_patient_recorded", "patient_id", "recorded"),
        Index("ix_audit_record_agent_org_recorded", "agent_org", "recorded"),
        Index("ix_audit_record_source_org_recorded", "source_org", "recorded"),
        Index("ix_audit_record_recorded", "recorded"),
        Index("ix_audit_record_action_recorded", "action", "recorded"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(2))
    agent_org: Mapped[str] = mapped_column(String(64))
    agent_role: Mapped[str] = mapped_column(String(20))
    agent_practitioner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    agent_client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_org: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The entities' references, space-separated with a space at each end (" Bundle/e1
    # Communication/n1 "), so "entity=Communication/n1" is a LIKE on both engines.
    entity_refs: Mapped[str] = mapped_column(String(2000), default=" ")
    # schemas.audit.canonical_bytes of the record's document: what the hash is taken over.
    document: Mapped[bytes] = mapped_column(LargeBinary)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The chain head it signs: the last record's seq and hash, and how many records since the
    # previous checkpoint.
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    previous_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Ed25519 by the hub's signing key ring (services.auth.keys), base64url, over the
    # checkpoint's canonical document; kid names the key.
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))


class AuditArchive(Base):
    """One retention cut: records ``first_seq``..``last_seq`` moved to an archive file.

    The live chain goes on from ``last_hash`` (the next live record's ``prev_hash``), so verify
    passes across the cut. The row is signed like a checkpoint (over ``archive_document``) and
    is append-only like the records; on PostgreSQL the delete trigger lets the archive remove
    only records that such a row covers (migration 0012).
    """

    __tablename__ = "audit_archive"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    first_prev_hash: Mapped[str] = mapped_column(String(64))
    last_hash: Mapped[str] = mapped_column(String(64))
    # The file's name under the data dir's audit-archive/, and SHA-256 of its record lines.
    file: Mapped[str] = mapped_column(String(200))
    file_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))
