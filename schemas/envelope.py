"""The record the hub puts on the event topics.

Schema version 2: the record value is this envelope (JSON) sealed with AES-256-GCM under the
patient's data key (renkei.crypto.seal), with AAD naming the record kind and the event id, so
a value cannot be replayed as another event's. Kafka headers carry only what a broker-side tool
may see: event id, type, schema version and the data key's id — never personal data, not even
the pseudonymous key. Version 1 records (clear JSON) are refused like any unknown version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.events import EventType

SCHEMA_VERSION = 2

HEADER_EVENT_ID = "renkei-event-id"
HEADER_EVENT_TYPE = "renkei-event-type"
HEADER_SCHEMA_VERSION = "renkei-schema-version"
HEADER_KEY_ID = "renkei-key-id"


def event_record_aad(event_id: str) -> str:
    return f"kafka|event|{event_id}"


def notification_record_aad(event_id: str) -> str:
    return f"kafka|notification|{event_id}"


def header(headers: list[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


_FIELDS = (
    "event_id", "event_type", "patient_key", "schema_version", "sender_org_id",
    "occurred_at", "accepted_at", "message_id", "payload",
)  # fmt: skip


class EnvelopeError(ValueError):
    """Bytes that are not an envelope this code understands."""


@dataclass(frozen=True)
class EventEnvelope:
    event_id: str
    event_type: EventType
    patient_key: str
    schema_version: int
    sender_org_id: str
    occurred_at: datetime | None
    accepted_at: datetime
    message_id: str
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        # Naive datetimes would be read back in whatever zone the consumer runs in.
        for name in ("occurred_at", "accepted_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    def to_bytes(self) -> bytes:
        doc = {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "patient_key": self.patient_key,
            "schema_version": self.schema_version,
            "sender_org_id": self.sender_org_id,
            "occurred_at": self.occurred_at.isoformat() if self.occurred_at else None,
            "accepted_at": self.accepted_at.isoformat(),
            "message_id": self.message_id,
            "payload": self.payload,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, b: bytes) -> EventEnvelope:
        try:
            doc = json.loads(bytes(b).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EnvelopeError(f"envelope is not UTF-8 JSON: {type(exc).__name__}") from None
        if not isinstance(doc, dict) or not set(_FIELDS) <= doc.keys():
            raise EnvelopeError("envelope lacks required fields")
        version = doc["schema_version"]
        if not isinstance(version, int) or version != SCHEMA_VERSION:
            # A newer producer's record: refuse rather than misread it (goes to the DLQ).
            raise EnvelopeError(f"unsupported envelope schema version {version!r}")
        try:
            return cls(
                event_id=str(doc["event_id"]),
                event_type=EventType(doc["event_type"]),
                patient_key=str(doc["patient_key"]),
                schema_version=version,
                sender_org_id=str(doc["sender_org_id"]),
                occurred_at=_parse_dt(doc["occurred_at"]),
                accepted_at=_parse_dt(doc["accepted_at"]),  # type: ignore[arg-type]
                message_id=str(doc["message_id"]),
                payload=doc["payload"],
            )
        except (ValueError, TypeError) as exc:
            raise EnvelopeError(f"malformed envelope: {type(exc).__name__}") from None

    def headers(self, key_id: str) -> list[tuple[str, bytes]]:
        return [
            (HEADER_EVENT_ID, self.event_id.encode("utf-8")),
            (HEADER_EVENT_TYPE, self.event_type.value.encode("utf-8")),
            (HEADER_SCHEMA_VERSION, str(self.schema_version).encode("ascii")),
            (HEADER_KEY_ID, key_id.encode("ascii")),
        ]


def _parse_dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("datetime must be an ISO string")
    return datetime.fromisoformat(value)
