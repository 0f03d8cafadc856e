"""Routers as real OS processes: killed mid-record, and two of them sharing the group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sqlalchemy import func, select

from producers.relay import OutboxRelay
from schemas.events import EventType
from services.notifications.models import Notification
from tests.conftest import _api
from tests.hubtools import accept, load_region, message, notification_count, wait_routed
from tests.test_end_to_end import EXPECTED


def router_env(hub) -> dict[str, str]:
    s = hub.settings
    return dict(
        os.environ,
        RENKEI_DATA_DIR=str(s.data_dir),
        RENKEI_DATABASE_URL=s.resolved_database_url,
        RENKEI_KAFKA_BOOTSTRAP=hub.broker.bootstrap,
        RENKEI_TOPIC_PREFIX=s.topic_prefix,
        RENKEI_TOPIC_PARTITIONS=str(s.topic_partitions),
        RENKEI_ROUTER_GROUP_ID=s.router_group_id,
        RENKEI_CONSUMER_SESSION_TIMEOUT_MS=str(s.consumer_session_timeout_ms),
    )


async def start_router(hub, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.router_process", *args,
        env=router_env(hub), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line.strip() == b"ready"
    return process


async def next_line(process: asyncio.subprocess.Process, within: float = 60) -> str:
    return (await asyncio.wait_for(process.stdout.readline(), within)).decode().strip()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def duplicate_pairs(hub, event_ids: list[str]) -> int:
    async with hub.sessions() as session:
        grouped = (
            select(Notification.event_id, Notification.recipient)
            .where(Notification.event_id.in_(event_ids))
            .group_by(Notification.event_id, Notification.recipient)
            .having(func.count() > 1)
            .subquery()
        )
        return await session.scalar(select(func.count()).select_from(grouped))


async def test_router_process_killed_between_write_and_commit(hub_factory) -> None:
    hub = await hub_factory(workers=False)
    await load_region(hub)
    hub.spawn("relay", lambda h: OutboxRelay(h.sessions, h.broker, h.settings).run())
    doomed = await start_router(hub, "--die-after-write")
    async for api in _api(hub):
        event_id = await accept(hub, api.client, message(EventType.ADMISSION))
    assert (await next_line(doomed)).startswith("handled 1 routed 1")
    assert await asyncio.wait_for(doomed.wait(), 30) == 137
    assert await notification_count(hub, [event_id]) == len(EXPECTED[EventType.ADMISSION])

    # Its offset was never committed: the next router gets the record again, writes nothing.
    survivor = await start_router(hub)
    try:
        line = await next_line(survivor, within=90)
    finally:
        await stop(survivor)
    assert line == f"handled 1 routed 0 {event_id}"
    assert await notification_count(hub, [event_id]) == len(EXPECTED[EventType.ADMISSION])


async def test_two_router_processes_one_killed_mid_stream(hub_factory) -> None:
    hub = await hub_factory(workers=False)
    await load_region(hub)
    hub.spawn("relay", lambda h: OutboxRelay(h.sessions, h.broker, h.settings).run())
    routers = [await start_router(hub), await start_router(hub)]
    patients = ("p01", "p04", "p05", "p06", "p08", "p09", "p10")
    posted: list[str] = []
    try:
        async for api in _api(hub):
            for patient in patients:
                posted.append(await accept(hub, api.client, message(EventType.ADMISSION, patient)))
            await wait_routed(hub, posted, within=90)
            routers[0].kill()  # SIGKILL: the group notices only after the session timeout
            await routers[0].wait()
            for patient in patients:
                posted.append(await accept(hub, api.client, message(EventType.DISCHARGE, patient)))
        await wait_routed(hub, posted, within=120)
    finally:
        for process in routers:
            await stop(process)
    assert await duplicate_pairs(hub, posted) == 0
    assert await notification_count(hub, posted) > 0
