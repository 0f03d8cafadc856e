"""The record the router puts on ``renkei.notification``: one per recipient.

For partners who follow notifications on Kafka rather than over FHIR. It names the event, the
recipient and what is due; it carries no message content and no personal data (the patient is
the hub's pseudonymous key). Like every record value it is sealed under the patient's data key
(schema version 2); headers carry the event id, type, schema version and key id only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from schemas.envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_KEY_ID,
    HEADER_SCHEMA_VERSION,
)

NOTIFICATION_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class NotificationRecord:
    notification_id: str
    event_id: str
    event_type: str
    patient_key: str
    recipient: str  # "Organization/x" or "PractitionerRole/y"
    care_team_role: str
    priority: str  # routine | urgent | stat
    sent: str  # ISO instant
    due_at: str | None
    # What the notification carries (full | summary) and whether it was delivered under
    # break-glass; defaults keep records written before these fields readable.
    content: str = "full"
    break_glass: bool = False
    # An escalation step (1-3) and the stat notification it continues; 0 / None when routed.
    escalation_step: int = 0
    escalation_of: str | None = None
    schema_version: int = NOTIFICATION_SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        # Every field is a str, bool, int or None: vars() is asdict() without its deep copy
        # (the router writes one of these per recipient on its hot path).
        return json.dumps(vars(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> NotificationRecord:
        return cls(**json.loads(raw))

    def headers(self, key_id: str) -> list[tuple[str, bytes]]:
        return [
            (HEADER_EVENT_ID, self.event_id.encode()),
            (HEADER_EVENT_TYPE, self.event_type.encode()),
            (HEADER_SCHEMA_VERSION, str(self.schema_version).encode()),
            (HEADER_KEY_ID, key_id.encode()),
        ]
