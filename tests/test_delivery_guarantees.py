"""Nothing accepted is lost, nothing is routed twice: crashes, broker outages, two routers."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from consumers.routing.router import Router
from producers.relay import OutboxRelay
from schemas.events import EventType
from services.notifications.models import Notification
from tests.hubtools import accept, load_region, message, notification_count, wait_routed
from tests.test_end_to_end import EXPECTED

ADMISSION_RECIPIENTS = len(EXPECTED[EventType.ADMISSION])


async def until(predicate, within: float = 30.0, step: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


class Killed(Exception):
    """Stands for the router process dying between its database commit and its offset commit."""


async def test_router_killed_after_write_before_commit_creates_no_duplicate(hub_factory) -> None:
    from tests.conftest import _api

    hub = await hub_factory(workers=False)
    await load_region(hub)
    relay = hub.spawn("relay", lambda h: OutboxRelay(h.sessions, h.broker, h.settings).run())

    def die(_event_id: str) -> None:
        raise Killed

    first = Router(hub.sessions, hub.broker, hub.settings, after_write=die)
    async for api in _api(hub):
        event_id = await accept(hub, api.client, message(EventType.ADMISSION))
    with pytest.raises(Killed):
        await asyncio.wait_for(first.run(), 60)
    assert first.routed == 1
    assert await notification_count(hub, [event_id]) == ADMISSION_RECIPIENTS

    # A new router in the same group gets the uncommitted record again and writes nothing.
    second = Router(hub.sessions, hub.broker, hub.settings)
    task = asyncio.create_task(second.run())
    try:
        await until(lambda: _true(second.handled >= 1))
    finally:
        task.cancel()
    assert second.routed == 0
    assert await notification_count(hub, [event_id]) == ADMISSION_RECIPIENTS
    relay.cancel()


async def _true(value: bool) -> bool:
    return value


async def test_messages_posted_while_broker_down_are_all_delivered(hub_factory, broker) -> None:
    from tests.conftest import _api

    hub = await hub_factory()
    await load_region(hub)
    async for api in _api(hub):
        warm = await accept(hub, api.client, message(EventType.ADMISSION))
        await wait_routed(hub, [warm])
        await asyncio.to_thread(broker.pause)
        try:
            posted = [
                await accept(hub, api.client, message(EventType.DISCHARGE, patient))
                for patient in ("p01", "p04", "p05", "p06", "p08")
            ]
        finally:
            await asyncio.to_thread(broker.resume)
    await wait_routed(hub, posted, within=120)
    for event_id in posted:
        async with hub.sessions() as session:
            rows = await session.scalars(
                select(Notification.recipient).where(Notification.event_id == event_id)
            )
            recipients = list(rows)
        assert len(recipients) == len(set(recipients)) > 0


async def test_event_lost_by_the_broker_is_published_again(hub_factory, broker) -> None:
    """Acked, then the broker restarts before any router read it: the relay sends it again."""
    from tests.conftest import _api

    hub = await hub_factory(workers=False, relay_redeliver_after_seconds=2.0)
    await load_region(hub)
    relay = OutboxRelay(hub.sessions, hub.broker, hub.settings)
    relay_task = asyncio.create_task(relay.run())
    async for api in _api(hub):
        event_id = await accept(hub, api.client, message(EventType.ACUTE_CHANGE))
    await until(lambda: _published(hub, event_id))
    await asyncio.to_thread(broker.restart)
    router = Router(hub.sessions, hub.broker, hub.settings)
    router_task = asyncio.create_task(router.run())
    try:
        await wait_routed(hub, [event_id], within=90)
    finally:
        router_task.cancel()
        relay_task.cancel()
    assert await notification_count(hub, [event_id]) == len(EXPECTED[EventType.ACUTE_CHANGE])


async def _published(hub, event_id: str) -> bool:
    from producers.models import OutboxRecord

    async with hub.sessions() as session:
        sent = await session.scalar(
            select(OutboxRecord.sent_at).where(OutboxRecord.event_id == event_id)
        )
    return sent is not None


async def test_events_of_one_patient_are_routed_in_order(hub_factory) -> None:
    from services.intake.models import Event
    from tests.conftest import _api

    hub = await hub_factory()
    await load_region(hub)
    async for api in _api(hub):
        posted = [await accept(hub, api.client, message(EventType.ACUTE_CHANGE)) for _ in range(15)]
    await wait_routed(hub, posted)
    async with hub.sessions() as session:
        rows = await session.execute(select(Event.id, Event.routed_at).where(Event.id.in_(posted)))
        routed_at = dict(rows.all())
    assert sorted(posted, key=lambda e: routed_at[e]) == posted


async def test_two_routers_share_the_work_and_route_each_event_once(hub_factory) -> None:
    from tests.conftest import _api

    first = await hub_factory()
    second = await hub_factory()  # same database, group and topics: a second router process
    await load_region(first)
    async for api in _api(first):
        posted = [
            await accept(first, api.client, message(EventType.ADMISSION, patient))
            for patient in ("p01", "p04", "p05", "p06", "p08", "p09", "p10") * 2
        ]
    await wait_routed(first, posted, within=90)
    async with first.sessions() as session:
        rows = await session.execute(
            select(Notification.event_id, Notification.recipient, func.count())
            .where(Notification.event_id.in_(posted))
            .group_by(Notification.event_id, Notification.recipient)
        )
        counts = [row[2] for row in rows]
    assert counts and set(counts) == {1}
    assert second.broker is not None
