"""The hub runtime: settings, database, broker and background workers, started and stopped together.

``renkei up`` and the test fixtures both build a Hub; the FastAPI app only reads from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from renkei.broker import Broker
from renkei.crypto import Keyring
from renkei.db import create_engine, migrate, session_factory
from renkei.keys import secure_dir, secure_tree
from renkei.settings import Settings
from renkei.wakeup import OutboxSignal, RoutedSignal
from services.auth.verifier import TokenVerifier

log = logging.getLogger(__name__)

Worker = Callable[["Hub"], Awaitable[None]]


class Hub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Everything the hub writes under the data dir (database, keys, broker logs) is the
        # hub's alone: files 0600, directories 0700.
        os.umask(0o077)
        secure_dir(Path(settings.data_dir))
        self.keyring = Keyring.local(settings.keys_dir, settings.dek_cache_seconds)
        self.engine: AsyncEngine = create_engine(settings.resolved_database_url)
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine, self.keyring)
        # Verifies every request's bearer token (key ring, registry, revocations; cached).
        self.tokens = TokenVerifier(settings.keys_dir, self.sessions)
        self.broker: Broker | None = None
        self._embedded = None
        self._tasks: list[asyncio.Task[None]] = []
        # Set by the intake (and the router) after it commits outbox rows, so a relay publishes
        # at once instead of at its next poll: the relay of this process directly, those of
        # other processes on this host through the doorbell (renkei.wakeup).
        self.outbox_written = OutboxSignal(settings.data_dir)
        # Rung by the router after it commits notifications: wakes the live streams of every
        # process on this host (services/notifications/stream.py).
        self.notifications_routed = RoutedSignal(settings.data_dir)

    async def start(
        self, *, broker: bool = True, workers: bool = True, prepared: bool = False
    ) -> None:
        """``prepared``: the supervisor (``renkei up``) migrated the database and created the
        region office before starting this process; its children skip that work."""
        if not prepared:
            await self.prepare()
        if broker:
            bootstrap = self.settings.kafka_bootstrap
            if not bootstrap:
                from deploy.tansu import EmbeddedTansu

                self._embedded = EmbeddedTansu(Path(self.settings.data_dir) / "broker")
                bootstrap = await asyncio.to_thread(self._embedded.start)
                log.info("embedded Tansu broker on %s", bootstrap)
            self.broker = Broker(self.settings, bootstrap)
            await self.broker.start()
        if self._embedded is not None:
            self.spawn("embedded-broker-watchdog", _watch_embedded_broker)
        if workers and self.broker is not None:
            from consumers.routing.router import run_router
            from producers.relay import run_relay
            from schemas.topics import LANES, RELAY_LANES

            # Priority lanes: each lane its own relay loop and router consumer (the audit lane
            # has a relay loop; its consumer is the audit writer, spawned last).
            for lane in RELAY_LANES:
                self.spawn(f"outbox-relay-{lane}", lambda h, lane=lane: run_relay(h, lane))
            for lane in LANES:
                self.spawn(f"router-{lane}", lambda h, lane=lane: run_router(h, lane))
            from consumers.audit.writer import run_audit_writer

            self.spawn("audit-writer", run_audit_writer)
            self.spawn_escalation()

    def spawn_escalation(self) -> None:
        """The escalation timer loop, beside the routers that start its timers (every router
        process runs one; a step is claimed in the database, so it fires once)."""
        from services.escalation.timer import run_escalation

        self.spawn("escalation-timer", run_escalation)

    async def prepare(self) -> None:
        """What the first process does once: schema, file modes, the region office."""
        await migrate(self.engine)
        # What an older hub (or another umask) left readable: the SQLite file and its -wal/-shm.
        await asyncio.to_thread(secure_tree, Path(self.settings.data_dir))
        await self._ensure_region_office()

    async def _ensure_region_office(self) -> None:
        from services.registry.service import ensure_region_office

        async with self.sessions() as session:
            await ensure_region_office(session, self.settings.region_org, self.settings.region_name)
            await session.commit()

    def spawn(self, name: str, worker: Worker) -> asyncio.Task[None]:
        task = asyncio.create_task(keep_running(self, name, worker), name=name)
        self._tasks.append(task)
        return task

    async def stop(self, grace: float = 15.0) -> None:
        """Stop the workers, giving them ``grace`` seconds to hand back their work.

        Bounded on purpose: a Kafka client stuck closing against an unreachable broker must
        not keep the hub (or Ctrl-C) waiting; anything a worker did not hand back is still in
        the database (claims expire, offsets were not committed).
        """
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _done, stuck = await asyncio.wait(self._tasks, timeout=grace)
            for task in stuck:
                log.warning(
                    "worker %s did not stop within %.0fs; leaving it", task.get_name(), grace
                )
        self._tasks.clear()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None
        self.outbox_written.close()
        self.notifications_routed.close()
        await self.engine.dispose()


async def keep_running(hub: Hub, name: str, worker: Worker, most: float = 5.0) -> None:
    """Run a background worker until the hub stops, starting it again if it fails.

    A worker handles what it expects (the broker away) itself; anything else, such as the
    database restarting under the relay or the router, must not end it silently while the
    intake goes on answering 202: it is logged (the type only, never data) and started again
    after a short backoff, and its work is still in the database (claims, offsets).
    """
    failures = 0
    while True:
        started = asyncio.get_running_loop().time()
        try:
            await worker(hub)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - restarted, not lost
            if asyncio.get_running_loop().time() - started > 30:
                failures = 0  # it ran well for a while: this is a new failure
            failures += 1
            delay = min(most, 0.2 * 2**failures)
            log.error(
                "worker %s failed (%s); starting it again in %.1fs",
                name,
                type(error).__name__,
                delay,
            )
            await asyncio.sleep(delay)


async def _watch_embedded_broker(hub: Hub, every: float = 1.0) -> None:
    """``make run`` should survive its broker: restart a Tansu that died, on the same port.

    It comes back empty; the relay recreates the topics and republishes what was not routed.
    """
    while True:
        await asyncio.sleep(every)
        embedded = hub._embedded
        if embedded is not None and not embedded.running:
            log.warning("embedded broker exited; restarting it on %s", embedded.bootstrap)
            try:
                await asyncio.to_thread(embedded.start)
                if hub.broker is not None:
                    await hub.broker.ensure_topics()  # it came back empty
            except (OSError, RuntimeError, TimeoutError, KafkaError) as error:
                log.error("embedded broker did not restart (%s); retrying", type(error).__name__)
