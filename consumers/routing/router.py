"""The router consumer: one consumer group over the event topics.

Each record is routed in one database transaction; the offset is committed only after that
transaction. A crash between the two makes Kafka deliver the record again, and the idempotent
writes (and the event's ``routed_at``) make the repeat create nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.routing.service import route_event
from consumers.routing.table import RoutingTable, load_routing
from renkei.broker import Broker
from renkei.crypto import CryptoError, KeyDestroyed, keyring_of
from renkei.settings import Settings
from schemas.envelope import (
    HEADER_EVENT_ID,
    HEADER_KEY_ID,
    HEADER_SCHEMA_VERSION,
    SCHEMA_VERSION,
    EnvelopeError,
    EventEnvelope,
    event_record_aad,
    header,
)
from schemas.topics import DLQ_TOPIC, EVENT_TOPICS
from services import metrics
from services.intake.models import STATUS_FORGOTTEN, Event

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
        settings: Settings,
        table: RoutingTable | None = None,
        after_write: Callable[[str], None] | None = None,
        outbox_written: asyncio.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.settings = settings
        self.table = table or load_routing(settings.routing_file)
        self.zone = ZoneInfo(settings.timezone)
        # Fault injection for tests: called after the database commit, before the offset commit.
        self.after_write = after_write
        # The notification records it writes go out through the outbox: wake this process's
        # relay rather than leave them to its next poll.
        self.outbox_written = outbox_written
        self.handled = 0  # records taken from Kafka (a redelivery counts again)
        self.routed = 0  # events this router routed (a redelivery of a routed event does not)

    async def run(self) -> None:
        failures = 0
        while True:
            consumer = self.broker.consumer(
                *(self.settings.topic(t) for t in EVENT_TOPICS),
                group_id=self.settings.router_group_id,
            )
            dlq = self.broker.producer()
            try:
                await consumer.start()
                await dlq.start()
                failures = 0
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
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            for partition, records in batches.items():
                for record in records:
                    await self.handle(record, dlq)
                    # Commit each record's offset right after its transaction, so a crash
                    # replays at most the one record in flight.
                    await consumer.commit({partition: OffsetAndMetadata(record.offset + 1, "")})

    async def handle(self, record: ConsumerRecord, dlq: AIOKafkaProducer) -> None:
        self.handled += 1
        version = header(record.headers, HEADER_SCHEMA_VERSION)
        event_id = header(record.headers, HEADER_EVENT_ID)
        if version != str(SCHEMA_VERSION) or not event_id or record.value is None:
            # A newer (or older, clear) producer's record: refuse rather than misread it.
            await self._dead_letter(dlq, record, "unsupported envelope schema version")
            return
        async with self.sessions() as session:
            try:
                plaintext = await keyring_of(session).open(
                    session, record.value, event_record_aad(event_id)
                )
                envelope = EventEnvelope.from_bytes(plaintext)
            except KeyDestroyed:
                # The patient was forgotten after the record was written: nothing to route.
                log.info("router: event %s is about a forgotten patient; skipped", event_id)
                return
            except (CryptoError, EnvelopeError) as error:
                await self._dead_letter(dlq, record, str(error))
                return
            event = await session.get(Event, envelope.event_id)
            if event is None or event.patient_id is None:
                await self._dead_letter(dlq, record, "event not in the database")
                return
            if event.status == STATUS_FORGOTTEN:
                log.info("router: event %s is about a forgotten patient; skipped", event.id)
                return
            outcome = await route_event(
                session, event, self.table, self.zone, self.settings.consent_default
            )
            await session.commit()
        if outcome.notified and self.outbox_written is not None:
            self.outbox_written.set()
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
            self.after_write(event.id)

    async def _dead_letter(
        self, dlq: AIOKafkaProducer, record: ConsumerRecord, reason: str
    ) -> None:
        log.error(
            "router: record %s/%d@%d to the DLQ: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        source = f"{record.topic}/{record.partition}/{record.offset}"
        # The record as it came, sealed again under the hub's own data key: the DLQ holds no
        # clear bytes either (the original may be a clear record of an older producer).
        async with self.sessions() as session:
            keyring = keyring_of(session)
            key = await keyring.hub_key(session)
            await session.commit()
        value = keyring.seal(key, record.value or b"", dlq_aad(source))
        headers = [
            ("renkei-dlq-reason", reason.encode()[:200]),
            ("renkei-source", source.encode()),
            (HEADER_KEY_ID, key.key_id.encode()),
        ]
        await dlq.send_and_wait(
            self.settings.topic(DLQ_TOPIC), value, key=record.key, headers=headers
        )


def dlq_aad(source: str) -> str:
    return f"kafka|dlq|{source}"


async def run_router(hub) -> None:  # noqa: ANN001 - Hub, imported lazily to avoid a cycle
    assert hub.broker is not None
    await Router(hub.sessions, hub.broker, hub.settings, outbox_written=hub.outbox_written).run()


__all__ = ["Router", "run_router"]
