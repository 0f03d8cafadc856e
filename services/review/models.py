"""The region office's review of break-glass events: who looked at one, and when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime


class BreakGlassReview(Base):
    """One row per reviewed break-glass event (an event is reviewed once; the first counts)."""

    __tablename__ = "break_glass_review"

    event_id: Mapped[str] = mapped_column(String(36), ForeignKey("event.id"), primary_key=True)
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "Practitioner/x" for a person's token, else "Organization/<region office>".
    reviewed_by: Mapped[str] = mapped_column(String(140))
