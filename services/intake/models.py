"""Intake tables: every accepted message is an event row, matched to a patient or not."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, LargeBinary, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, JSONDocument, UTCDateTime

# An event waits in ``unmatched`` until an admin links its patient, then becomes ``accepted``.
STATUS_ACCEPTED = "accepted"
STATUS_UNMATCHED = "unmatched"
# The patient was forgotten (crypto-shredded): a later message is kept, never routed.
STATUS_FORGOTTEN = "forgotten"

# Why an event waits in the unmatched queue (Event.unmatched_reason).
REASON_UNKNOWN_PATIENT = "unknown-patient"  # no registry Patient has the sender's identifier
REASON_NOT_SENDER_SYSTEM = "not-sender-identifier"  # names the patient only by others' ids
REASON_BIRTH_DATE = "birth-date-mismatch"  # matched, but the birth date contradicts the registry
REASON_AMBIGUOUS = "ambiguous"  # the identifiers name more than one registry Patient


class Event(Base):
    __tablename__ = "event"
    __table_args__ = (
        # The same MessageHeader from the same sender is the same event (answered 200, not 202).
        UniqueConstraint("sender_org_id", "message_id", name="uq_event_sender_message"),
        Index("ix_event_status", "status"),
        Index("ix_event_break_glass", "break_glass", "accepted_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sender_org_id: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set by the router in the same transaction as the notifications: an event is done when
    # routed, not when the broker acknowledged it (the relay republishes until this is set).
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The message, sealed under the patient's data key (or the event's own key while it is
    # unmatched). ``bundle`` stays an empty object: it held the clear message before 0004.
    bundle: Mapped[dict] = mapped_column(JSONDocument, default=dict)
    bundle_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    unmatched_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Tells a true repeat (same content) from a reused MessageHeader id (different content).
    content_sha256: Mapped[str] = mapped_column(String(64))
    # The sender marked this acute change as an emergency (break-glass): its physicians, nurse
    # and emergency hospital receive it whatever the Consent says, and the region office
    # reviews it (services/review). The reason stays in the message, not in a clear column.
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
