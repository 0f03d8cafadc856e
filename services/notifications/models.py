"""Notifications: one row per (event, recipient), written by the router, read as Communication."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (
        # A redelivered Kafka record must create nothing new.
        UniqueConstraint("event_id", "recipient", name="uq_notification_event_recipient"),
        Index("ix_notification_org_sent", "recipient_org_id", "sent"),
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
