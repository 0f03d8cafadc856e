# ruff: noqa: B023, ASYNC240  (a measuring script: one poster set per run, files written at the end)
"""Backlog drain of the pipeline: N admissions accepted with relay and router stopped, then
the relay alone (outbox -> Kafka), then the router (Kafka -> notifications), each timed.

A quick measurement for issue 13's pipeline work, not the full ``make bench``:

    .venv/bin/python -m tests.benchmarks.pipeline_drain --events 2000            # SQLite
    .venv/bin/python -m tests.benchmarks.pipeline_drain --events 2000 --postgres # embedded PG

Embedded Tansu unless RENKEI_KAFKA_BOOTSTRAP is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

PATIENTS = ("p01", "p02", "p04", "p05", "p06", "p07", "p08", "p09", "p10")


async def _count(hub, statement) -> int:  # noqa: ANN001
    async with hub.sessions() as session:
        return int(await session.scalar(statement) or 0)


async def _until(hub, statement, target: int, within: float = 600.0) -> float:  # noqa: ANN001
    started = time.monotonic()
    while await _count(hub, statement) < target:
        if time.monotonic() - started > within:
            raise SystemExit(f"not done within {within:.0f}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def main(events: int, postgres: bool, concurrency: int) -> None:
    from consumers.routing.router import Router
    from producers.models import OutboxRecord
    from producers.relay import OutboxRelay
    from renkei.hub import Hub
    from renkei.settings import Settings
    from schemas.events import EventType
    from services.intake.models import Event
    from services.notifications.models import Notification
    from tests.conftest import _api
    from tests.databases import fresh_database_url, stop_embedded_postgres
    from tests.hubtools import accept, load_region, message

    work = Path(tempfile.mkdtemp(prefix="renkei-drain-"))
    url = await fresh_database_url("postgresql" if postgres else "sqlite", work)
    settings = Settings(
        data_dir=work / "var",
        database_url=url,
        kafka_bootstrap=os.environ.get("RENKEI_KAFKA_BOOTSTRAP"),
        router_group_id=f"router-{os.getpid()}",
        topic_prefix=f"bench{os.getpid()}.",
    )
    hub = Hub(settings)
    await hub.start(workers=False)
    try:
        await load_region(hub)
        started = time.monotonic()
        posted: list[str] = []
        async for api in _api(hub):
            queue = [
                message(EventType.ADMISSION, PATIENTS[i % len(PATIENTS)]) for i in range(events)
            ]

            async def poster() -> None:
                while queue:
                    posted.append(await accept(hub, api.client, queue.pop(0)))

            await asyncio.gather(*(poster() for _ in range(concurrency)))
        intake = time.monotonic() - started
        sent = (
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.sent_at.is_not(None), OutboxRecord.topic.like("renkei.event.%"))
        )
        relay = OutboxRelay(hub.sessions, hub.broker, settings)
        relay_task = asyncio.create_task(relay.run())
        relay_seconds = await _until(hub, sent, events)
        routed = select(func.count()).select_from(Event).where(Event.routed_at.is_not(None))
        if os.environ.get("ROUTER_ALONE"):  # diagnosis: the router without a relay beside it
            relay_task.cancel()
        profiler = None
        if os.environ.get("PROFILE"):
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="disabled")
            profiler.start()
        router = Router(hub.sessions, hub.broker, settings)
        router_task = asyncio.create_task(router.run())
        router_seconds = await _until(hub, routed, events)
        if profiler is not None:
            profiler.stop()
            Path(os.environ["PROFILE"]).write_text(
                profiler.output_text(unicode=False, show_all=bool(os.environ.get("PROFILE_ALL")))
            )
        notified = await _count(hub, select(func.count()).select_from(Notification))
        router_task.cancel()
        relay_task.cancel()
        await asyncio.gather(router_task, relay_task, return_exceptions=True)
    finally:
        await hub.stop()
        stop_embedded_postgres()
    db = "postgresql" if postgres else "sqlite"
    print(f"database={db} events={events} notifications={notified}")
    print(f"intake  {events / intake:8.0f} events/s ({intake:.1f}s, {concurrency} concurrent)")
    print(f"relay   {events / relay_seconds:8.0f} events/s ({relay_seconds:.1f}s)")
    print(f"router  {events / router_seconds:8.0f} events/s ({router_seconds:.1f}s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.postgres, args.concurrency))
