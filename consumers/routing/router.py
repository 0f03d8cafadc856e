"""The router consumer: a consumer group per lane over the event topics.

What a poll returns is routed in one database transaction (at most ``router_batch_records``
records, each partition's in offset order); the offsets are committed only after that
transaction. A crash between the two makes Kafka deliver the batch again, and the idempotent
writes (the events' ``routed_at``, insert-ignore notifications) make the repeat create nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from consumers.dlq import dead_letter
from consumers.routing.service import RoutingOutcome, route_events
from consumers.routing.table import RoutingTable, load_routing
from renkei.broker import Broker
from renkei.crypto import CryptoError, KeyDestroyed, keyring_of
from renkei.settings import Settings
from renkei.wakeup import RoutedSignal
from schemas.envelope import (
    HEADER_EVENT_ID,
    HEADER_SCHEMA_VERSION,
    SCHEMA_VERSION,
    EnvelopeError,
    EventEnvelope,
    event_record_aad,
    header,
)
from schemas.topics import LANE_URGENT, LANES, event_topics_of
from services import metrics
from services.escalation.service import escalation_window
from services.intake.models import STATUS_FORGOTTEN, Event

log = logging.getLogger(__name__)
URGENT_GROUP_SUFFIX = "-urgent"


@dataclass
class _Routable:
    record: ConsumerRecord
    event: Event


class Router:
    """Routes what one ``getmany`` returns, a bounded batch per database transaction.

    ``lane``: ``urgent`` reads the acute-change topic in a consumer group of its own
    (``router_group_id`` + ``-urgent``), so an acute change never waits behind a batch of
    admissions in the same consumer; ``bulk`` reads the other event topics; ``None`` (tests,
    one-consumer set-ups) reads every event topic in ``router_group_id``.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
        settings: Settings,
        table: RoutingTable | None = None,
        after_write: Callable[[str], None] | None = None,
        outbox_written: asyncio.Event | None = None,
        lane: str | None = None,
        notifications_routed: RoutedSignal | None = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.settings = settings
        self.table = table or load_routing(settings.routing_file)
        self.zone = ZoneInfo(settings.timezone)
        self.lane = lane
        self.topics = event_topics_of(lane)
        suffix = URGENT_GROUP_SUFFIX if lane == LANE_URGENT else ""
        self.group_id = f"{settings.router_group_id}{suffix}"
        # Fault injection for tests: called for each event of a batch after the batch's
        # database commit, before its offset commit.
        self.after_write = after_write
        # The notification records it writes go out through the outbox: wake this process's
        # relay rather than leave them to its next poll.
        self.outbox_written = outbox_written
        # The live streams (GET /notifications/stream) of every process on this host.
        self.notifications_routed = notifications_routed
        self.handled = 0  # records taken from Kafka (a redelivery counts again)
        self.routed = 0  # events this router routed (a redelivery of a routed event does not)

    async def run(self) -> None:
        failures = 0
        while True:
            consumer = self.broker.consumer(
                *(self.settings.topic(t) for t in self.topics), group_id=self.group_id
            )
            dlq = self.broker.producer()
            try:
                await consumer.start()
                await dlq.start()
                failures = 0  # back at full speed at once: no backoff left over
                await self._consume(consumer, dlq)
            except (KafkaError, OSError) as error:
                failures += 1
                delay = min(self.settings.relay_backoff_max_seconds, 0.1 * 2**failures)
                log.warning(
                    "router: broker unavailable (%s); retry in %.1fs", type(error).__name__, delay
                )
                await asyncio.sleep(delay)
            finally:
                # Bounded: leaving the group or flushing against a broker that is gone must
                # not hold up a shutdown (the uncommitted offsets are simply read again).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(dlq.stop(), 5)

    async def _consume(self, consumer: AIOKafkaConsumer, dlq: AIOKafkaProducer) -> None:
        limit = self.settings.router_batch_records
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=limit)
            # Each partition's records in offset order; partitions are independent streams.
            records = [record for part in batches.values() for record in part]
            if records:
                await self.handle_batch(records, dlq)
                await self._commit(consumer, records)

    async def _commit(self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]) -> None:
        """The batch's offsets, after its transaction: a crash in between replays the batch,
        and the idempotent writes make the replay create nothing."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in records:
            offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(
                record.offset + 1, ""
            )
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            # Not committed is not lost: the next commit covers these offsets, or after a
            # rebalance the records are read again and find their events routed.
            log.warning("router: offset commit failed (%s); carrying on", type(error).__name__)

    async def handle(self, record: ConsumerRecord, dlq: AIOKafkaProducer) -> None:
        """One record on its own (a batch of one)."""
        await self.handle_batch([record], dlq)

    async def handle_batch(self, records: list[ConsumerRecord], dlq: AIOKafkaProducer) -> None:
        """Route the records in one transaction, then call ``after_write`` for each event.

        A record that cannot be read goes to the DLQ without touching the others; a record
        whose routing fails outright makes the batch be routed again one record at a time, so
        only that record's failure is raised."""
        self.handled += len(records)
        dead: list[tuple[ConsumerRecord, str]] = []
        try:
            routed = await self._route(records, dead)
        except Exception as error:
            if len(records) == 1:
                raise
            log.warning(
                "router: a batch of %d failed (%s); routing it record by record",
                len(records),
                type(error).__name__,
            )
            self.handled -= len(records)
            for record in records:
                await self.handle_batch([record], dlq)
            return
        for record, reason in dead:
            await self._dead_letter(dlq, record, reason)
        if any(outcome.notified for _e, outcome in routed):
            if self.outbox_written is not None:
                self.outbox_written.set()
            if self.notifications_routed is not None:
                self.notifications_routed.ring()
        for event, outcome in routed:
            if not outcome.already_routed:
                self.routed += 1
                metrics.observe_routed(event.event_type, event.accepted_at, outcome.priorities)
                log.info(
                    "routed event %s: %d notified, %d withheld",
                    event.id,
                    outcome.notified,
                    outcome.suppressed,
                )
        if self.after_write is not None:
            for event, _outcome in routed:
                self.after_write(event.id)

    async def _route(
        self, records: list[ConsumerRecord], dead: list[tuple[ConsumerRecord, str]]
    ) -> list[tuple[Event, RoutingOutcome]]:
        """Open, look up and route the records (committed); unreadable ones added to ``dead``."""
        async with self.sessions() as session:
            opened: list[tuple[ConsumerRecord, EventEnvelope]] = []
            keyring = keyring_of(session)
            for record in records:
                version = header(record.headers, HEADER_SCHEMA_VERSION)
                event_id = header(record.headers, HEADER_EVENT_ID)
                if version != str(SCHEMA_VERSION) or not event_id or record.value is None:
                    # A newer (or older, clear) producer's record: refuse rather than misread.
                    dead.append((record, "unsupported envelope schema version"))
                    continue
                try:
                    plaintext = await keyring.open(
                        session, record.value, event_record_aad(event_id)
                    )
                    opened.append((record, EventEnvelope.from_bytes(plaintext)))
                except KeyDestroyed:
                    # The patient was forgotten after the record was written: nothing to route.
                    log.info("router: event %s is about a forgotten patient; skipped", event_id)
                except (CryptoError, EnvelopeError) as error:
                    dead.append((record, str(error)))
            events = await self._events(session, [envelope.event_id for _r, envelope in opened])
            routable: list[_Routable] = []
            for record, envelope in opened:
                event = events.get(envelope.event_id)
                if event is None or event.patient_id is None:
                    dead.append((record, "event not in the database"))
                elif event.status == STATUS_FORGOTTEN:
                    log.info("router: event %s is about a forgotten patient; skipped", event.id)
                else:
                    routable.append(_Routable(record, event))
            outcomes = await route_events(
                session,
                [r.event for r in routable],
                self.table,
                self.zone,
                self.settings.consent_default,
                escalation_window=escalation_window(self.settings),
                region_org=self.settings.region_org,
            )
            await session.commit()
        return [(r.event, outcome) for r, outcome in zip(routable, outcomes, strict=True)]

    @staticmethod
    async def _events(session: AsyncSession, event_ids: list[str]) -> dict[str, Event]:
        if not event_ids:
            return {}
        # Not the sealed bundle: routing reads the event's columns only.
        rows = await session.scalars(
            select(Event)
            .options(defer(Event.bundle), defer(Event.bundle_sealed))
            .where(Event.id.in_(set(event_ids)))
        )
        return {event.id: event for event in rows}

    async def _dead_letter(
        self, dlq: AIOKafkaProducer, record: ConsumerRecord, reason: str
    ) -> None:
        await dead_letter(self.sessions, self.settings, dlq, record, reason, "router")


async def run_router(hub, lane: str | None = None) -> None:  # noqa: ANN001 - Hub (import cycle)
    """The router of one lane, or (``None``) of both lanes, each its own consumer."""
    assert hub.broker is not None
    routers = [
        Router(
            hub.sessions,
            hub.broker,
            hub.settings,
            outbox_written=hub.outbox_written,
            lane=name,
            notifications_routed=hub.notifications_routed,
        )
        for name in ([lane] if lane else LANES)
    ]
    await asyncio.gather(*(router.run() for router in routers))


__all__ = ["Router", "run_router"]
