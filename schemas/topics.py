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

# Priority lanes. An acute change (急変) must never wait behind a hospital's morning batch of
# admissions: its topic has a relay claim and a router consumer group of its own, and so do the
# notification records of stat priority on their way to partners. Everything else is bulk.
LANE_URGENT = "urgent"
LANE_BULK = "bulk"
LANES: tuple[str, ...] = (LANE_URGENT, LANE_BULK)
# The audit records have a relay lane of their own: a morning batch of events never holds up
# the trail, and the trail (one record per read) never holds up an event.
LANE_AUDIT = "audit"
RELAY_LANES: tuple[str, ...] = (*LANES, LANE_AUDIT)
URGENT_EVENT_TOPICS: tuple[str, ...] = (event_topic(EventType.ACUTE_CHANGE),)
BULK_EVENT_TOPICS: tuple[str, ...] = tuple(t for t in EVENT_TOPICS if t not in URGENT_EVENT_TOPICS)


def event_topics_of(lane: str | None) -> tuple[str, ...]:
    """The event topics a lane's router reads; ``None``: every event topic (one consumer)."""
    if lane is None:
        return EVENT_TOPICS
    return {LANE_URGENT: URGENT_EVENT_TOPICS, LANE_BULK: BULK_EVENT_TOPICS}[lane]


def lane_of(topic: str, priority: str | None = None) -> str:
    """The lane of an outbox row: urgent for the acute-change topic and for stat notifications,
    audit for the audit records."""
    if topic == AUDIT_TOPIC:
        return LANE_AUDIT
    return LANE_URGENT if topic in URGENT_EVENT_TOPICS or priority == "stat" else LANE_BULK
