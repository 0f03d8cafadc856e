"""Kafka topic names. One topic per event type, keyed by the pseudonymous patient key."""

from __future__ import annotations

from schemas.events import EventType

_EVENT_PREFIX = "renkei.event."


def event_topic(event_type: EventType) -> str:
    return f"{_EVENT_PREFIX}{EventType(event_type).value}"


def event_type_of_topic(topic: str) -> EventType:
    """The event type an event topic carries; ValueError for any other topic."""
    if not topic.startswith(_EVENT_PREFIX):
        raise ValueError(f"not an event topic: {topic!r}")
    return EventType(topic.removeprefix(_EVENT_PREFIX))


EVENT_TOPICS: tuple[str, ...] = tuple(event_topic(t) for t in EventType)
NOTIFICATION_TOPIC = "renkei.notification"
AUDIT_TOPIC = "renkei.audit"
DLQ_TOPIC = "renkei.dlq"
ALL_TOPICS: tuple[str, ...] = (*EVENT_TOPICS, NOTIFICATION_TOPIC, AUDIT_TOPIC, DLQ_TOPIC)
