"""The audit writer: a consumer group of its own over ``renkei.audit``.

What a poll returns (each Kafka record one transaction's audit records) is opened (the hub's
data key, AAD ``kafka|audit|<first record id>``) and chained in one database transaction
(services.audit.chain.append); the offsets are committed only after that transaction. A crash
in between makes Kafka deliver the batch again and ``append`` stores each record id once, so
every record is stored exactly once however often it arrives (the relay re-drives what the
writer has not stored, too). Two writers at once (a second process,
a rebalance) never fork the chain: both take the seq after the head, one commit collides on
the primary key, and that writer rolls back and chains its batch again after the new head.

Every ``audit_checkpoint_records`` records or ``audit_checkpoint_seconds`` seconds, whichever
comes first, the head is signed (services.audit.signing) if it moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.dlq import dead_letter
from renkei.broker import Broker
from renkei.crypto import CryptoError, keyring_of
from renkei.settings import Settings
from schemas.audit import (
    AUDIT_BATCH_VERSION,
    HEADER_AUDIT_ID,
    HEADER_SCHEMA_VERSION,
    AuditRecord,
    audit_record_aad,
    batch_from_bytes,
)
from schemas.envelope import header
from schemas.topics import AUDIT_TOPIC
from services.audit.chain import append
from services.audit.signing import Signer, add_checkpoint

log = logging.getLogger(__name__)
# A collision with another writer is retried at once (with a little jitter); this many in a
# row means something else is wrong, and the worker is restarted (keep_running).
STORE_ATTEMPTS = 20


class AuditWriter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.settings = settings
        self.group_id = settings.audit_group_id
        self.signer = Signer(settings.keys_dir)
        self.handled = 0  # records taken from Kafka (a redelivery counts again)
        self.stored = 0  # records this writer added to the chain
        self.collisions = 0  # transactions rolled back because another writer took the seq
        self._unsigned = 0  # records stored since this writer's last checkpoint
        self._checkpoint_at: float | None = None  # loop time the next one is due at the latest

    async def run(self) -> None:
        failures = 0
        while True:
            consumer = self.broker.consumer(
                self.settings.topic(AUDIT_TOPIC), group_id=self.group_id
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
                    "audit writer: broker unavailable (%s); retry in %.1fs",
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(dlq.stop(), 5)

    async def _consume(self, consumer: AIOKafkaConsumer, dlq: AIOKafkaProducer) -> None:
        limit = self.settings.audit_batch_records
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=limit)
            records = [record for part in batches.values() for record in part]
            if records:
                await self.handle_batch(records, dlq)
                await self._commit(consumer, records)
            await self.maybe_checkpoint()

    async def _commit(self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in records:
            offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(
                record.offset + 1, ""
            )
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            # Read again after a rebalance at worst: append stores each record id once.
            log.warning("audit writer: offset commit failed (%s)", type(error).__name__)

    async def handle_batch(self, records: list[ConsumerRecord], dlq: AIOKafkaProducer) -> int:
        """Open the records and chain them in one transaction; unreadable ones to the DLQ.
        Returns how many were added to the chain (a redelivered record is not)."""
        self.handled += len(records)
        dead: list[tuple[ConsumerRecord, str]] = []
        opened = await self._open(records, dead)
        stored = await self.store(opened)
        for record, reason in dead:
            await self._dead_letter(dlq, record, reason)
        return stored

    async def _open(
        self, records: list[ConsumerRecord], dead: list[tuple[ConsumerRecord, str]]
    ) -> list[AuditRecord]:
        opened: list[AuditRecord] = []
        async with self.sessions() as session:
            keyring = keyring_of(session)
            for record in records:
                version = header(record.headers, HEADER_SCHEMA_VERSION)
                first_id = header(record.headers, HEADER_AUDIT_ID)
                if version != str(AUDIT_BATCH_VERSION) or not first_id or record.value is None:
                    dead.append((record, "unsupported audit record schema version"))
                    continue
                try:
                    plaintext = await keyring.open(
                        session, record.value, audit_record_aad(first_id)
                    )
                    batch = batch_from_bytes(plaintext)
                except (CryptoError, ValueError, KeyError, TypeError) as error:
                    # ValueError covers bad JSON, an unknown action or outcome, a bad date.
                    dead.append((record, f"unreadable audit record ({type(error).__name__})"))
                    continue
                if batch[0].id != first_id:
                    dead.append((record, "audit record id differs from its header"))
                    continue
                opened.extend(batch)
            await session.commit()  # the data key row read (and cached), nothing written
        return opened

    async def store(self, records: list[AuditRecord]) -> int:
        """Chain the records after the head, in one transaction, retried after a collision."""
        if not records:
            return 0
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                async with self.sessions() as session:
                    rows = await append(session, records)
                    await session.commit()
            except (IntegrityError, OperationalError) as error:
                # Another writer chained after the same head first (same seq, or the same
                # record id redelivered to both): chain again after the new head.
                if attempt == STORE_ATTEMPTS:
                    raise
                self.collisions += 1
                log.info(
                    "audit writer: chain head taken by another writer (%s); retrying",
                    type(error).__name__,
                )
                await asyncio.sleep(random.uniform(0, 0.02 * attempt))
                continue
            self.stored += len(rows)
            self._unsigned += len(rows)
            return len(rows)
        return 0  # not reached

    async def maybe_checkpoint(self) -> None:
        """Sign the head after ``audit_checkpoint_records`` records or when the time is up."""
        now = asyncio.get_running_loop().time()
        if self._checkpoint_at is None:
            self._checkpoint_at = now + self.settings.audit_checkpoint_seconds
        if self._unsigned < self.settings.audit_checkpoint_records and now < self._checkpoint_at:
            return
        await self.checkpoint()

    async def checkpoint(self) -> None:
        now = asyncio.get_running_loop().time()
        self._unsigned = 0
        self._checkpoint_at = now + self.settings.audit_checkpoint_seconds
        try:
            async with self.sessions() as session:
                made = await add_checkpoint(session, self.signer)
                await session.commit()
        except (IntegrityError, OperationalError) as error:
            # Another writer signed at the same moment: its checkpoint covers the head.
            log.info("audit writer: checkpoint taken by another writer (%s)", type(error).__name__)
            return
        if made is not None:
            log.info("audit checkpoint %d signed at seq %d (kid %s)", made.id, made.seq, made.kid)

    async def _dead_letter(
        self, dlq: AIOKafkaProducer, record: ConsumerRecord, reason: str
    ) -> None:
        await dead_letter(self.sessions, self.settings, dlq, record, reason, "audit writer")


async def run_audit_writer(hub, _lane: str | None = None) -> None:  # noqa: ANN001 - Hub
    """The audit writer of this process (``renkei worker audit``, Hub.start)."""
    assert hub.broker is not None
    await AuditWriter(hub.sessions, hub.broker, hub.settings).run()


__all__ = ["AuditWriter", "run_audit_writer"]
