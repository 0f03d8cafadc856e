"""Escalation timers: one row per stat acute change, the next step and when it is due."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime

PENDING = "pending"  # a step is due at ``due_at``
STOPPED = "stopped"  # a stat notification of the event was acknowledged: nobody is chased
COMPLETED = "completed"  # every step has fired (or had nobody to reach)


class EscalationTimer(Base):
    """Written by the router in the transaction that writes the stat notifications, so a
    committed acute change always has its timer (and a rolled-back one never does); fired by
    whichever hub process claims it first (``services.escalation.service.fire_due``)."""

    __tablename__ = "escalation"
    __table_args__ = (Index("ix_escalation_status_due", "status", "due_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # One chain per event: a redelivered record starts nothing new.
    event_id: Mapped[str] = mapped_column(String(36), ForeignKey("event.id"), unique=True)
    # The stat notification the chain continues (the primary physician's when there is one).
    notification_id: Mapped[str] = mapped_column(String(36))
    patient_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer, default=1)  # the next step to fire, 1-3
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
