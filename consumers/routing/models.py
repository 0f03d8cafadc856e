"""Routing decisions that did not become notifications: kept, never silently lost."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime


class SuppressedDelivery(Base):
    """A care-team member the event was withheld from, and why (consent deny, no consent)."""

    __tablename__ = "suppressed_delivery"

    event_id: Mapped[str] = mapped_column(String(36), ForeignKey("event.id"), primary_key=True)
    recipient: Mapped[str] = mapped_column(String(140), primary_key=True)
    reason: Mapped[str] = mapped_column(String(40))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
