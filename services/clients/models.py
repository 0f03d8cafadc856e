"""System clients (SMART Backend Services) and the assertion ids they have already used."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, JSONDocument, UTCDateTime


class Client(Base):
    """A machine client of one organization: it proves itself with a key of its JWKS."""

    __tablename__ = "client"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Public keys only (the CLI refuses a JWKS with private parts).
    jwks: Mapped[dict] = mapped_column(JSONDocument)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UsedAssertion(Base):
    """A client assertion's jti, kept until the assertion expires: a replay is refused."""

    __tablename__ = "client_assertion_jti"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
