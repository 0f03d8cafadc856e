"""The transactional outbox: written with the event, published by the relay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, JSONDocument, UTCDateTime
from schemas.topics import LANE_BULK, lane_of


def encode_headers(headers: list[tuple[str, bytes]]) -> list[list[str]]:
    return [[name, value.decode()] for name, value in headers]


def _lane_of_row(context: DefaultExecutionContext) -> str:
    """A row written without a lane (an event row of the intake) gets its topic's lane."""
    return lane_of(context.get_current_parameters()["topic"])


class OutboxRecord(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "sent_at", "id"),
        # Unsent rows only, by topic: GET /metrics counts them per topic from the index alone.
        Index(
            "ix_outbox_unsent_topic",
            "topic",
            "created_at",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
        # The urgent relay claims only its lane's rows: a bulk backlog is never scanned for them.
        Index("ix_outbox_lane_pending", "lane", "sent_at", "id"),
        # The claim's check for an earlier unsent row of the same stream held by another relay.
        Index(
            "ix_outbox_unsent_stream",
            "key",
            "topic",
            "id",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # None for an audit record (services.audit.emit): its key is the record's id.
    event_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("event.id"), nullable=True)
    topic: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[bytes] = mapped_column(LargeBinary)
    # Kafka headers as [[name, value], ...]: set by whoever writes the row (no personal data).
    headers: Mapped[list] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A relay claims rows for a while so two relays never publish the same row at once.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # urgent | bulk | audit (schemas.topics.lane_of): which relay lane claims the row.
    lane: Mapped[str] = mapped_column(String(8), default=_lane_of_row, server_default=LANE_BULK)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
