"""What a scrape computes on the spot: the outbox from the database, the lag from the broker.

Both are the state of the shared database and cluster, not of one process, so the worker that
answers the scrape asks for them; no process keeps them. The broker is asked with a short
timeout: a broker that is away makes ``renkei_broker_reachable`` 0, never a failed scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from producers.models import OutboxRecord
from renkei.broker import Broker
from renkei.db import utcnow
from renkei.hub import Hub
from renkei.settings import Settings
from schemas.topics import ALL_TOPICS, EVENT_TOPICS

log = logging.getLogger(__name__)

# A scrape waits this long for the broker at most (Prometheus' own timeout is 10 s by default).
LAG_TIMEOUT_SECONDS = 3.0
# Outbox rows for a topic the hub does not name (none today): counted, not named.
OTHER_TOPIC = "other"


@dataclass(frozen=True)
class OutboxTopic:
    topic: str
    depth: int
    oldest_age_seconds: float


def consumer_groups(settings: Settings) -> dict[str, tuple[str, tuple[str, ...]]]:
    """consumer label -> (group id, the topics it reads, unprefixed). The label is the role,
    not the group id (a setting that tests and deployments vary)."""
    return {"router": (settings.router_group_id, EVENT_TOPICS)}


def _label(settings: Settings, topic: str) -> str:
    return topic.removeprefix(settings.topic_prefix)


async def outbox_topics(hub: Hub) -> list[OutboxTopic]:
    """Unsent rows per topic and the age of the oldest, every topic of the hub's (an empty one
    as 0); unsent rows for any other topic are counted under "other".

    One search per topic in ix_outbox_unsent_topic (a partial index of the unsent rows only)
    and one count in ix_outbox_pending for the total, never a walk over the table. Statements
    apart, so rows written or sent in between may shift "other" by a few (never below 0).
    """
    unsent = OutboxRecord.sent_at.is_(None)
    found = []
    now = utcnow()
    async with hub.sessions() as session:
        for name in ALL_TOPICS:
            per_topic = select(func.count(), func.min(OutboxRecord.created_at)).where(
                unsent,
                OutboxRecord.topic == name,  # unprefixed: the relay adds the prefix
            )
            depth, oldest = (await session.execute(per_topic)).one()
            age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
            found.append(OutboxTopic(name, int(depth), max(age, 0.0)))
        total = await session.scalar(select(func.count()).select_from(OutboxRecord).where(unsent))
    named = sum(row.depth for row in found)
    found.append(OutboxTopic(OTHER_TOPIC, max(int(total or 0) - named, 0), 0.0))
    return found


def _aware(moment: datetime | str) -> datetime:
    """min() keeps the column's type, but be sure: SQLite stores UTC without a zone."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def consumer_lag(broker: Broker, settings: Settings) -> dict[tuple[str, str], int]:
    """(consumer, topic) -> records not yet committed by that consumer group, all partitions.

    A partition the group never committed counts from the log start (the router reads from
    the earliest offset).
    """
    options = broker.client_options()
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(LAG_TIMEOUT_SECONDS * 1000))
    reader = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(LAG_TIMEOUT_SECONDS * 1000),
        isolation_level="read_committed" if broker.info.idempotent_producer else "read_uncommitted",
    )
    try:
        await admin.start()
        await reader.start()
        lag: dict[tuple[str, str], int] = {}
        for consumer, (group_id, topics) in consumer_groups(settings).items():
            names = [settings.topic(t) for t in topics]
            partitions = [
                TopicPartition(topic["topic"], p["partition"])
                for topic in await admin.describe_topics(names)
                if not topic.get("error_code")
                for p in topic["partitions"]
            ]
            committed = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
            ends = await reader.end_offsets(partitions)
            starts = await reader.beginning_offsets(partitions)
            for tp in partitions:
                done = committed.get(tp)
                position = done.offset if done is not None and done.offset >= 0 else starts[tp]
                key = (consumer, _label(settings, tp.topic))
                lag[key] = lag.get(key, 0) + max(ends[tp] - position, 0)
        return lag
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.stop(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), 2)


async def scrape_families(hub: Hub) -> list[Metric]:
    depth = GaugeMetricFamily(
        "renkei_outbox_depth", "Outbox rows not yet published, by topic", labels=["topic"]
    )
    age = GaugeMetricFamily(
        "renkei_outbox_oldest_age_seconds",
        "Age of the oldest unpublished outbox row, by topic (0: none waiting)",
        labels=["topic"],
    )
    for row in await outbox_topics(hub):
        depth.add_metric([row.topic], row.depth)
        if row.topic != OTHER_TOPIC:
            age.add_metric([row.topic], row.oldest_age_seconds)
    reachable = GaugeMetricFamily(
        "renkei_broker_reachable",
        "1 when this scrape could read the consumer lag from the broker, else 0",
    )
    lag = GaugeMetricFamily(
        "renkei_consumer_lag",
        "Records not yet committed by the consumer group, by consumer and topic",
        labels=["consumer", "topic"],
    )
    if hub.broker is None:
        reachable.add_metric([], 0)
    else:
        try:
            found = await asyncio.wait_for(
                consumer_lag(hub.broker, hub.settings), LAG_TIMEOUT_SECONDS
            )
        except Exception as error:  # noqa: BLE001 - the scrape reports the broker as away
            log.warning("metrics: consumer lag not read (%s)", type(error).__name__)
            reachable.add_metric([], 0)
        else:
            reachable.add_metric([], 1)
            for (consumer, topic), value in sorted(found.items()):
                lag.add_metric([consumer, topic], value)
    return [depth, age, reachable, lag]
