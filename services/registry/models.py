"""Registry tables: one versioned store for the six FHIR resource types, with search indexes.

The resource body is kept as the FHIR JSON the caller wrote (validated); identifiers and
references are copied into index tables so searches and patient matching are indexed queries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKeyConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, JSONDocument, UTCDateTime

REGISTRY_TYPES = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "CareTeam",
    "Consent",
)
# Patient data: bodies sealed with the patient's data key, identifiers blind-indexed.
PATIENT_DATA = frozenset({"Patient", "CareTeam", "Consent"})


class RegistryResource(Base):
    __tablename__ = "registry_resource"

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    # Directory types (Organization, Practitioner, PractitionerRole) in clear: the region's
    # public directory. Patient data (PATIENT_DATA) only sealed under the patient's data key,
    # ``body`` then an empty object.
    body: Mapped[dict] = mapped_column(JSONDocument)
    body_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set by `renkei patient forget`: the data key is destroyed and the row answers 410.
    forgotten_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RegistryIdentifier(Base):
    """(system, value); for PATIENT_DATA the value is the blind index HMAC(system|value)."""

    __tablename__ = "registry_identifier"
    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "resource_id"],
            ["registry_resource.resource_type", "registry_resource.id"],
            ondelete="CASCADE",
        ),
        Index("ix_registry_identifier_lookup", "system", "value"),
    )

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)


class RegistryReference(Base):
    """A search parameter of reference type: e.g. CareTeam ``patient`` -> ``Patient/p1``."""

    __tablename__ = "registry_reference"
    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "resource_id"],
            ["registry_resource.resource_type", "registry_resource.id"],
            ondelete="CASCADE",
        ),
        Index("ix_registry_reference_lookup", "resource_type", "name", "target"),
    )

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
