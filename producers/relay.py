"""The transactional outbox relay: database rows -> Kafka, at least once, in order per patient.

A row is claimed (so two relays never publish it at the same time), sent with ``acks=all``,
and marked sent only after the broker's ack. While the broker is away the relay backs off and
keeps trying; nothing is lost because the database, not the broker, is the record. An event
that was published but not routed within a window is published again (Tansu forgets
everything on restart; a real cluster can lose an acked record in an unclean failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from producers.models import OutboxRecord
from renkei.broker import Broker
from renkei.db import utcnow
from renkei.settings import Settings
from schemas.topics import AUDIT_TOPIC, LANE_AUDIT, RELAY_LANES
from services.audit.models import AuditRecordRow
from services.intake.models import Event

log = logging.getLogger(__name__)
BATCH = 200
MAX_CHAINS = 500  # streams in flight at once
CLOSE_SECONDS = 5.0
STREAM_SEPARATOR = "\x1f"  # cannot occur in a topic name


def stream_of(row: OutboxRecord) -> str:
    """What must stay in order: one patient's records on one topic (one Kafka partition)."""
    return f"{row.topic}{STREAM_SEPARATOR}{row.key}"


class OutboxRelay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
        settings: Settings,
        relay_id: str | None = None,
        wakeup: asyncio.Event | None = None,
        lane: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.settings = settings
        # urgent | bulk: only that lane's rows (each lane its own loop, claim and producer, so
        # a bulk backlog never delays an acute change); None: every row.
        self.lane = lane
        name = f"relay-{lane}" if lane else "relay"
        self.relay_id = relay_id or f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._producer: AIOKafkaProducer | None = None
        self._last_redrive = 0.0
        self._wakeup = wakeup or asyncio.Event()
        # One task per stream in flight, a stream being one topic and one patient key (what
        # Kafka keeps in order): a patient whose partition has no leader (or a frozen broker)
        # waits alone while every other stream goes on.
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._not_before: dict[str, float] = {}  # stream -> loop time of its next try
        self._sent: list[int] = []
        self._unsent: list[int] = []
        # Rows claimed and not settled yet: their claims are renewed while they are in flight,
        # so a claim can be short (a killed relay's rows come back within seconds) and still
        # never run out under a relay that is alive but slow.
        self._held: set[int] = set()
        self._last_renewal = 0.0
        self._failed_chains = 0  # chains failed since the last successful send
        self._last_error: BaseException | None = None
        # After an outage: when to re-drive early, and which sends (before the return) count.
        self._recovery_redrive: tuple[float, datetime] | None = None
        self._outage = False  # a send failed since the last one that got through
        # Audit rows sent before this were looked at by the audit re-drive (None: not yet).
        self._audit_checked_until: datetime | None = None

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    claimed = await self.publish_pending()
                    await self._settle()
                    await self._renew_claims()
                    await self.maybe_redrive()
                    if self._stalled():
                        raise self._last_error or KafkaConnectionError()
                    failures = 0  # full speed at once: no back-off left over from the outage
                    if claimed == 0:
                        await self._idle()
                except (KafkaError, OSError) as error:
                    failures += 1
                    self._outage = True
                    delay = min(self.settings.relay_backoff_max_seconds, 0.1 * 2**failures)
                    log.warning(
                        "relay: broker unavailable (%s); retry in %.1fs",
                        type(error).__name__,
                        delay,
                    )
                    await self._reset_producer()
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
        finally:
            # Hand back what is not sent, so another relay need not wait for the claims to expire.
            with contextlib.suppress(Exception):
                await self._reset_producer()

    def _recovered(self) -> None:
        """The broker is back: what it lost (Tansu restarted, an unclean failover) is published
        again shortly, not after the whole re-drive window."""
        delay = self.settings.relay_recovery_redrive_seconds
        self._recovery_redrive = (asyncio.get_running_loop().time() + delay, utcnow())
        log.info("relay: broker back; unrouted earlier sends re-driven in %.0fs", delay)

    def _stalled(self) -> bool:
        """Every send has failed since the last success: the broker, not one partition."""
        return self._failed_chains >= 2 and not self._chains

    async def _idle(self) -> None:
        """Wait for the next poll, or less if this process's intake wrote to the outbox."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.settings.relay_poll_seconds)
        self._wakeup.clear()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self.broker.producer()
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            # A broker that came back empty (Tansu restart) needs its topics again.
            await self.broker.ensure_topics()
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # A producer flushing to an unreachable broker may wait out its timeouts: bounded.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), CLOSE_SECONDS)

    async def claim(self, exclude_streams: set[str] | None = None) -> list[OutboxRecord]:
        """Claim up to BATCH unsent rows; a claim expires so a crashed relay's rows come back.

        ``exclude_streams``: streams (see ``stream_of``) this relay still has in flight or
        backing off; their later rows wait, so each stream stays in order."""
        now = utcnow()
        free = or_(OutboxRecord.claimed_until.is_(None), OutboxRecord.claimed_until < now)
        # A stream with a row another relay still holds (one that crashed with its claim in
        # force, or one still sending) waits for it: claiming a later row would publish a
        # patient's discharge before the admission that a dead relay never sent. The held rows
        # are few (a batch per live relay): found through their own index and compared as a
        # set, once per claim, whatever the backlog (a correlated EXISTS per candidate took
        # PostgreSQL two minutes on a fresh 20,000-row outbox without statistics).
        stream = OutboxRecord.topic + STREAM_SEPARATOR + OutboxRecord.key
        held = aliased(OutboxRecord)
        held_streams = select(held.topic + STREAM_SEPARATOR + held.key).where(
            held.sent_at.is_(None), held.claimed_until >= now
        )
        pending = [
            OutboxRecord.sent_at.is_(None),
            free,
            stream.not_in(held_streams),
            *self._in_lane(),
        ]
        if exclude_streams:
            pending.append(stream.not_in(exclude_streams))
        candidates = (
            select(OutboxRecord.id)
            .where(*pending)
            .order_by(OutboxRecord.id)
            .limit(BATCH)
            .scalar_subquery()
        )
        async with self.sessions() as session:
            # The claimed rows come back whole from the UPDATE (one round trip, not two), in no
            # particular order: sorted here, each stream's rows in the order they were written.
            claimed = (
                await session.scalars(
                    update(OutboxRecord)
                    # Re-checked under the row lock, so a row two relays both chose goes to one.
                    .where(OutboxRecord.id.in_(candidates), OutboxRecord.sent_at.is_(None), free)
                    .values(
                        claimed_by=self.relay_id,
                        claimed_until=now + timedelta(seconds=self.settings.relay_claim_seconds),
                    )
                    .returning(OutboxRecord)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            await session.commit()
            self._held.update(row.id for row in claimed)
            return sorted(claimed, key=lambda row: row.id)

    def _in_lane(self) -> list:
        return [] if self.lane is None else [OutboxRecord.lane == self.lane]

    async def publish_pending(self) -> int:
        """Claim rows of patients with nothing in flight and start one send chain per patient."""
        in_flight = sum(1 for task in self._chains.values() if not task.done())
        if in_flight >= MAX_CHAINS:
            return 0
        # The producer first: rows claimed while the broker is away would sit out their claim.
        producer = await self._ensure_producer()
        now = asyncio.get_running_loop().time()
        self._not_before = {k: t for k, t in self._not_before.items() if t > now}
        rows = await self.claim(exclude_streams=set(self._chains) | set(self._not_before))
        if not rows:
            return 0
        streams: dict[str, list[OutboxRecord]] = defaultdict(list)
        for row in rows:
            streams[stream_of(row)].append(row)
        for stream, chain in streams.items():
            self._chains[stream] = asyncio.create_task(self._publish_chain(producer, stream, chain))
        return len(rows)

    async def _publish_chain(
        self, producer: AIOKafkaProducer, stream: str, chain: list[OutboxRecord]
    ) -> None:
        """One stream's rows in order: a later event never overtakes an earlier one.

        With the idempotent producer (Apache Kafka) the stream's sends are pipelined: the broker
        keeps them in order through retries (sequence numbers) and aiokafka never expires such a
        batch, so no later record can land before an earlier one that failed. Without it (Tansu)
        a batch can expire and fail while the next one of the partition still gets through, so
        each send waits for the one before; streams are pipelined with each other either way.
        """
        done = 0
        try:
            if self.broker.info.idempotent_producer:
                futures: list[asyncio.Future] = []
                try:
                    for row in chain:
                        futures.append(await self._send(producer, row))
                    for future in futures:
                        await future
                        done += 1
                finally:
                    # What did not complete is not marked sent (sent again later: a harmless
                    # duplicate at most); its outcome is not waited for here.
                    for future in futures[done:]:
                        future.add_done_callback(_outcome_ignored)
            else:
                for row in chain:
                    await (await self._send(producer, row))
                    done += 1
            self._failed_chains = 0
            if self._outage and done:
                self._outage = False
                self._recovered()
        except (KafkaError, OSError) as error:
            self._outage = True
            # A send got through before this one failed: one partition, not the whole broker.
            self._failed_chains = 1 if done else self._failed_chains + 1
            self._last_error = error
            backoff = min(self.settings.relay_backoff_max_seconds, 0.5)
            self._not_before[stream] = asyncio.get_running_loop().time() + backoff
        finally:
            self._sent.extend(row.id for row in chain[:done])
            self._unsent.extend(row.id for row in chain[done:])
            del self._chains[stream]
            self._wakeup.set()

    async def _send(self, producer: AIOKafkaProducer, row: OutboxRecord) -> asyncio.Future:
        headers = [(name, value.encode()) for name, value in row.headers]
        return await producer.send(
            self.settings.topic(row.topic), row.value, key=row.key.encode(), headers=headers
        )

    async def _settle(self) -> None:
        """Record what the chains finished: sent rows marked, failed ones released to retry."""
        sent, self._sent = self._sent, []
        unsent, self._unsent = self._unsent, []
        # No longer renewed, whatever happens next: if marking fails (the database away) the
        # claims run out and the rows are sent again (a duplicate the router drops), never stuck.
        self._held.difference_update(sent)
        self._held.difference_update(unsent)
        await self._mark_sent(sent)
        await self._release(unsent)

    async def _renew_claims(self) -> None:
        """Extend the claims of the rows in flight, a third of a claim's length at a time."""
        claim = self.settings.relay_claim_seconds
        now = asyncio.get_running_loop().time()
        if not self._held or now - self._last_renewal < claim / 3:
            return
        self._last_renewal = now
        held = sorted(self._held)
        async with self.sessions() as session:
            for start in range(0, len(held), 500):
                await session.execute(
                    update(OutboxRecord)
                    .where(
                        OutboxRecord.id.in_(held[start : start + 500]),
                        OutboxRecord.claimed_by == self.relay_id,
                        OutboxRecord.sent_at.is_(None),
                    )
                    .values(claimed_until=utcnow() + timedelta(seconds=claim))
                )
            await session.commit()

    async def _reset_producer(self) -> None:
        """After a broker-wide failure: end the chains, settle them, start over."""
        for task in list(self._chains.values()):
            task.cancel()
        await asyncio.gather(*self._chains.values(), return_exceptions=True)
        await self._settle()
        self._failed_chains = 0
        await self._close_producer()

    async def _mark_sent(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        async with self.sessions() as session:
            await session.execute(
                update(OutboxRecord)
                .where(OutboxRecord.id.in_(row_ids))
                .values(
                    sent_at=utcnow(),
                    claimed_by=None,
                    claimed_until=None,
                    attempts=OutboxRecord.attempts + 1,
                )
            )
            await session.commit()

    async def _release(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        async with self.sessions() as session:
            await session.execute(
                update(OutboxRecord)
                .where(OutboxRecord.id.in_(row_ids), OutboxRecord.sent_at.is_(None))
                .values(
                    claimed_by=None,
                    claimed_until=None,
                    attempts=OutboxRecord.attempts + 1,
                    last_error="broker unavailable",
                )
            )
            await session.commit()

    async def maybe_redrive(self) -> int:
        """Publish again what was sent but not routed within the window (the safety net), and
        shortly after an outage what was sent before it."""
        loop = asyncio.get_running_loop()
        if self._recovery_redrive is not None and loop.time() >= self._recovery_redrive[0]:
            cutoff = self._recovery_redrive[1]
            self._recovery_redrive = None
            return await self._redrive(cutoff, "sent before the broker's return", recovery=True)
        window = self.settings.relay_redeliver_after_seconds
        if loop.time() - self._last_redrive < min(window / 4, 5.0):
            return 0
        self._last_redrive = loop.time()
        cutoff = utcnow() - timedelta(seconds=window)
        return await self._redrive(cutoff, f"not routed within {window:.0f}s")

    async def _redrive(self, cutoff: datetime, why: str, *, recovery: bool = False) -> int:
        count = 0
        if self.lane != LANE_AUDIT:
            count += await self._redrive_events(cutoff, why)
        if self.lane in (None, LANE_AUDIT):
            count += await self._redrive_audit(cutoff, why, recovery=recovery)
        return count

    async def _redrive_events(self, cutoff: datetime, why: str) -> int:
        unrouted = select(Event.id).where(Event.routed_at.is_(None), Event.status == "accepted")
        async with self.sessions() as session:
            result = await session.execute(
                update(OutboxRecord)
                .where(
                    and_(OutboxRecord.sent_at < cutoff, OutboxRecord.event_id.in_(unrouted)),
                    *self._in_lane(),
                )
                .values(sent_at=None)
            )
            await session.commit()
        count = result.rowcount or 0
        if count:
            log.warning("relay: %d event(s) %s; publishing again", count, why)
        return count

    async def _redrive_audit(self, cutoff: datetime, why: str, *, recovery: bool) -> int:
        """Audit rows sent before ``cutoff`` whose record the writer has not stored.

        Cheap on a large outbox: each pass looks only at the rows sent since the last pass
        looked (an index range on lane, sent_at), a row being looked at once when it leaves
        the window; a row published again gets a new sent_at and is looked at again. After
        the relay starts, it looks ``relay_audit_lookback_seconds`` back once. A recovery
        pass (the broker came back) looks at what the window still holds and moves nothing.
        """
        since = self._audit_checked_until
        if since is None:
            since = utcnow() - timedelta(seconds=self.settings.relay_audit_lookback_seconds)
        if since >= cutoff:
            return 0
        stored = exists().where(AuditRecordRow.id == OutboxRecord.key)
        async with self.sessions() as session:
            result = await session.execute(
                update(OutboxRecord)
                .where(
                    OutboxRecord.lane == LANE_AUDIT,
                    OutboxRecord.sent_at >= since,
                    OutboxRecord.sent_at < cutoff,
                    OutboxRecord.topic == AUDIT_TOPIC,
                    ~stored,
                )
                .values(sent_at=None)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        if not recovery:
            self._audit_checked_until = cutoff
        count = result.rowcount or 0
        if count:
            log.warning("relay: %d audit record(s) %s and not stored; publishing again", count, why)
        return count


def _outcome_ignored(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def run_relay(hub, lane: str | None = None) -> None:  # noqa: ANN001 - Hub (import cycle)
    """The relay of one lane, or (``None``) of both lanes, each its own loop and producer."""
    assert hub.broker is not None
    hub.outbox_written.listen()  # the doorbell: writers in other processes wake this relay
    lanes = [lane] if lane else list(RELAY_LANES)
    # One intake wake-up for both: the intake does not know the lane of what it wrote.
    wakeups = [asyncio.Event() for _ in lanes]
    relays = [
        OutboxRelay(hub.sessions, hub.broker, hub.settings, wakeup=wakeup, lane=name)
        for name, wakeup in zip(lanes, wakeups, strict=True)
    ]
    await asyncio.gather(_fan_out(hub.outbox_written, wakeups), *(r.run() for r in relays))


async def _fan_out(source: asyncio.Event, targets: list[asyncio.Event]) -> None:
    """Pass each wake-up of the intake on to every lane's relay."""
    while True:
        await source.wait()
        source.clear()
        for target in targets:
            target.set()
