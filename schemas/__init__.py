"""The hub's contract: event types, topics, envelope and message validation. Pure code, no I/O."""

from schemas.canonical import CANONICAL_BASE, CARE_TEAM_ROLE_SYSTEM, EVENT_ID_SYSTEM, EVENT_SYSTEM
from schemas.envelope import SCHEMA_VERSION, EnvelopeError, EventEnvelope
from schemas.events import (
    EVENT_RULES,
    CareTeamRole,
    EventRule,
    EventType,
    care_team_role_code_system,
    code_system,
)
from schemas.message import ParsedMessage, PatientIdentifier, parse_message
from schemas.outcome import InvalidMessage, Issue, accepted_outcome, operation_outcome
from schemas.topics import (
    ALL_TOPICS,
    AUDIT_TOPIC,
    DLQ_TOPIC,
    EVENT_TOPICS,
    NOTIFICATION_TOPIC,
    event_topic,
)

__all__ = [
    "ALL_TOPICS",
    "AUDIT_TOPIC",
    "CANONICAL_BASE",
    "CARE_TEAM_ROLE_SYSTEM",
    "DLQ_TOPIC",
    "EVENT_ID_SYSTEM",
    "EVENT_RULES",
    "EVENT_SYSTEM",
    "EVENT_TOPICS",
    "NOTIFICATION_TOPIC",
    "SCHEMA_VERSION",
    "CareTeamRole",
    "EnvelopeError",
    "EventEnvelope",
    "EventRule",
    "EventType",
    "InvalidMessage",
    "Issue",
    "ParsedMessage",
    "PatientIdentifier",
    "accepted_outcome",
    "care_team_role_code_system",
    "code_system",
    "event_topic",
    "operation_outcome",
    "parse_message",
]
