"""Notifications: one row per (event, recipient), written by the router, read as Communication."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (
        # A redelivered Kafka record must create nothing new; an escalation step is a
        # notification of its own to a recipient the routing may already have notified.
        UniqueConstraint(
            "event_id", "recipient", "escalation_step", name="uq_notification_event_recipient_step"
        ),
        Index("ix_notification_org_sent", "recipient_org_id", "sent"),
        # The live stream: the next ones after a reader's cursor, and the newest (0010).
        Index("ix_notification_stream_seq", "stream_seq", unique=True),
        Index("ix_notification_org_stream", "recipient_org_id", "stream_seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), ForeignKey("event.id"))
    # "Organization/x" (the whole organization receives) or "PractitionerRole/y" (that person).
    recipient: Mapped[str] = mapped_column(String(140))
    recipient_org_id: Mapped[str] = mapped_column(String(64))
    care_team_role: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(String(64))
    sent: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    read_by: Mapped[str | None] = mapped_column(String(140), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(140), nullable=True)
    # Minimum necessary: "full" carries the message, "summary" only what happened and what is
    # due (consumers/routing/table.py decides per role).
    content: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    # Delivered because the sender invoked break-glass (an emergency), not because of consent.
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Why it was shared (consumers/routing/rules.py: consent-permit, opt-out-default,
    # break-glass); None for notifications routed before the reason was recorded.
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Escalation (services/escalation): 0 for what the router wrote; 1 (backup physician),
    # 2 (emergency hospital) or 3 (region office) for a step of an unanswered stat acute
    # change, with ``escalation_of`` the stat notification whose chain it continues.
    escalation_step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    escalation_of: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Its place in the live stream (the SSE event id), one order over every hub process, given
    # in commit order by services/notifications/stream.py ``stamp_stream_order``.
    stream_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
