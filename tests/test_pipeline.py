"""The batched pipeline (issue 13): batches keep order and exactly-once, lanes keep urgent first.

Real brokers and both databases (legs). Structural, never timed: what must have happened, not
how fast.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from sqlalchemy import func, select

from consumers.routing.router import Router
from producers.models import OutboxRecord
from producers.relay import OutboxRelay
from renkei.db import utcnow
from schemas.envelope import HEADER_EVENT_ID
from schemas.events import EventType
from schemas.topics import LANE_BULK, LANE_URGENT, NOTIFICATION_TOPIC, event_topic, lane_of
from services.intake.models import Event
from services.notifications.models import Notification
from tests.conftest import _api
from tests.hubtools import accept, load_region, message, notification_count, wait_routed
from tests.test_end_to_end import EXPECTED

PATIENTS = ("p01", "p04", "p05", "p06", "p08")  # each with consent, in care teams


class Killed(Exception):
    """The router process dying between a batch's database commit and its offset commit."""


async def until(predicate, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def all_sent(hub, event_ids: list[str]) -> bool:
    async with hub.sessions() as session:
        unsent = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.event_id.in_(event_ids), OutboxRecord.sent_at.is_(None))
        )
    return unsent == 0


async def routed_order(hub, event_ids: list[str]) -> dict[tuple[str, str], list[str]]:
    """(patient, event type) -> its events in the order the router marked them routed.

    What stays in order is one patient's events of one type: one topic, one partition."""
    async with hub.sessions() as session:
        rows = (
            await session.execute(
                select(Event.patient_id, Event.event_type, Event.id)
                .where(Event.id.in_(event_ids))
                .order_by(Event.routed_at, Event.id)
            )
        ).all()
    order: dict[tuple[str, str], list[str]] = defaultdict(list)
    for patient, event_type, event_id in rows:
        order[(patient, event_type)].append(event_id)
    return dict(order)


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


async def notification_records(hub, event_ids: list[str]) -> int:
    async with hub.sessions() as session:
        return await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.event_id.in_(event_ids), OutboxRecord.topic == NOTIFICATION_TOPIC)
        )


async def test_router_killed_mid_batch_replays_it_creating_nothing_twice_in_order(
    hub_factory,
) -> None:
    hub = await hub_factory(workers=False)
    await load_region(hub)
    relay = hub.spawn("relay", lambda h: OutboxRelay(h.sessions, h.broker, h.settings).run())
    posted: dict[tuple[str, str], list[str]] = defaultdict(list)
    async for api in _api(hub):
        for round_ in range(4):
            for patient in PATIENTS:
                kind = EventType.ADMISSION if round_ % 2 == 0 else EventType.DISCHARGE
                event_id = await accept(hub, api.client, message(kind, patient))
                posted[(patient, kind.value)].append(event_id)
    every = [e for events in posted.values() for e in events]
    # The whole backlog is on Kafka before any router reads: the first poll is a real batch.
    await until(lambda: all_sent(hub, every))

    seen: list[str] = []

    def die_on_second(event_id: str) -> None:
        seen.append(event_id)
        if len(seen) == 2:
            raise Killed

    first = Router(hub.sessions, hub.broker, hub.settings, after_write=die_on_second)
    with pytest.raises(Killed):
        await asyncio.wait_for(first.run(), 90)
    # Killed after its batch's commit, on the batch's second event: the batch was routed whole.
    assert first.routed >= 2
    assert first.routed == await _routed_count(hub, every)

    second = Router(hub.sessions, hub.broker, hub.settings)
    task = asyncio.create_task(second.run())
    try:
        await wait_routed(hub, every, within=90)
        # The replayed batch is read again (its offsets were never committed) and finds its
        # events routed.
        await until(lambda: _true(second.handled >= len(every)))
    finally:
        task.cancel()
        relay.cancel()
    assert first.routed + second.routed == len(every)
    assert await duplicate_pairs(hub, every) == 0
    notified = await notification_count(hub, every)
    assert notified >= len(every)  # every patient here has consent and a care team
    assert await notification_records(hub, every) == notified  # no record written twice
    assert await routed_order(hub, every) == dict(posted)


async def _routed_count(hub, event_ids: list[str]) -> int:
    async with hub.sessions() as session:
        return await session.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.id.in_(event_ids), Event.routed_at.is_not(None))
        )


async def _true(value: bool) -> bool:
    return value


async def test_urgent_lane_routes_an_acute_change_behind_a_stopped_bulk_backlog(
    hub_factory,
) -> None:
    hub = await hub_factory(workers=False)
    await load_region(hub)
    async for api in _api(hub):
        backlog = [
            await accept(hub, api.client, message(EventType.ADMISSION, patient))
            for patient in PATIENTS * 4
        ]
        acute = await accept(hub, api.client, message(EventType.ACUTE_CHANGE, "p01"))
    # Only the urgent lane runs: its relay and its router. The bulk lane is stopped with the
    # admissions in the outbox ahead of the acute change.
    urgent_relay = OutboxRelay(hub.sessions, hub.broker, hub.settings, lane=LANE_URGENT)
    urgent_router = Router(hub.sessions, hub.broker, hub.settings, lane=LANE_URGENT)
    tasks = [asyncio.create_task(urgent_relay.run()), asyncio.create_task(urgent_router.run())]
    try:
        await wait_routed(hub, [acute], within=90)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert await _routed_count(hub, backlog) == 0
    async with hub.sessions() as session:
        unsent_backlog = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.event_id.in_(backlog), OutboxRecord.sent_at.is_(None))
        )
        lanes = dict(
            (
                await session.execute(
                    select(Notification.priority, func.count())
                    .where(Notification.event_id == acute)
                    .group_by(Notification.priority)
                )
            ).all()
        )
        record_lanes = sorted(
            (
                await session.scalars(
                    select(OutboxRecord.lane).where(
                        OutboxRecord.event_id == acute, OutboxRecord.topic == NOTIFICATION_TOPIC
                    )
                )
            ).all()
        )
    assert unsent_backlog == len(backlog)  # the bulk relay never ran
    assert lanes == {"stat": 2, "urgent": 1}
    # Stat notification records go out in the urgent lane, the care manager's (urgent) in bulk.
    assert record_lanes == [LANE_BULK, LANE_URGENT, LANE_URGENT]

    # The bulk lane starts: the backlog drains, the acute change is not routed again.
    bulk = [
        OutboxRelay(hub.sessions, hub.broker, hub.settings, lane=LANE_BULK),
        Router(hub.sessions, hub.broker, hub.settings, lane=LANE_BULK),
    ]
    tasks = [asyncio.create_task(worker.run()) for worker in bulk]
    try:
        await wait_routed(hub, backlog, within=90)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert event_topic(EventType.ACUTE_CHANGE) not in bulk[1].topics
    assert await notification_count(hub, [acute]) == len(EXPECTED[EventType.ACUTE_CHANGE])


async def test_hub_runs_both_lanes(hub_factory) -> None:
    hub = await hub_factory()
    names = sorted(task.get_name() for task in hub._tasks)
    assert {"outbox-relay-urgent", "outbox-relay-bulk", "router-urgent", "router-bulk"} <= set(
        names
    )
    await load_region(hub)
    async for api in _api(hub):
        posted = [
            await accept(hub, api.client, message(EventType.ADMISSION, "p01")),
            await accept(hub, api.client, message(EventType.ACUTE_CHANGE, "p01")),
        ]
    await wait_routed(hub, posted)
    await until(lambda: all_sent(hub, posted))  # the notification records too, in both lanes


async def test_relay_lanes_claim_only_their_rows_and_mark_a_batch_sent(hub_factory) -> None:
    hub = await hub_factory(workers=False)
    await load_region(hub)
    async for api in _api(hub):
        admissions = [
            await accept(hub, api.client, message(EventType.ADMISSION, patient))
            for patient in PATIENTS * 3
        ]
        acute = await accept(hub, api.client, message(EventType.ACUTE_CHANGE, "p04"))
    urgent = OutboxRelay(hub.sessions, hub.broker, hub.settings, lane=LANE_URGENT)
    bulk = OutboxRelay(hub.sessions, hub.broker, hub.settings, lane=LANE_BULK)
    claimed = await urgent.claim()
    assert [row.event_id for row in claimed] == [acute]
    assert await urgent.claim() == []  # claimed, not yet expired

    task = asyncio.create_task(bulk.run())
    try:
        await until(lambda: all_sent(hub, admissions))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with hub.sessions() as session:
        rows = (await session.scalars(select(OutboxRecord).order_by(OutboxRecord.id))).all()
    sent = [r for r in rows if r.event_id in admissions]
    assert len(sent) == len(admissions)
    assert all(r.claimed_by is None and r.attempts == 1 and r.lane == LANE_BULK for r in sent)
    [acute_row] = [r for r in rows if r.event_id == acute]
    # The bulk relay never touched the urgent row: still the urgent relay's claim, unsent.
    assert acute_row.sent_at is None and acute_row.claimed_by == urgent.relay_id
    assert acute_row.lane == LANE_URGENT

    # Kafka holds each patient's admissions in outbox order (one stream, one partition).
    topic = hub.settings.topic(event_topic(EventType.ADMISSION))
    consumer = hub.broker.consumer(topic, group_id=f"check-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    by_key: dict[bytes, list[str]] = defaultdict(list)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while sum(len(v) for v in by_key.values()) < len(admissions):
            assert asyncio.get_running_loop().time() < deadline
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event_id = dict(record.headers)[HEADER_EVENT_ID].decode()
                    if event_id not in by_key[record.key]:
                        by_key[record.key].append(event_id)
    finally:
        await consumer.stop()
    expected: dict[bytes, list[str]] = defaultdict(list)
    for row in sent:
        expected[row.key.encode()].append(row.event_id)
    assert dict(by_key) == dict(expected)


async def test_an_expired_claim_of_the_urgent_lane_is_taken_over(db_sessions) -> None:
    from renkei.settings import Settings

    event_ids = []
    async with db_sessions() as session:
        for n, topic in enumerate(
            [event_topic(EventType.ADMISSION), event_topic(EventType.ACUTE_CHANGE)] * 2
        ):
            event_id = str(uuid.uuid4())
            event_ids.append(event_id)
            session.add(
                Event(id=event_id, sender_org_id="org", message_id=f"m{n}",
                      event_type=topic.rsplit(".", 1)[1], status="accepted", patient_id="p",
                      patient_key="k", accepted_at=utcnow(), bundle={}, content_sha256="0" * 64)
            )  # fmt: skip
            await session.flush()
            session.add(
                OutboxRecord(event_id=event_id, topic=topic, key="k", headers=[], value=b"{}",
                             created_at=utcnow())
            )  # fmt: skip
        await session.commit()
    crashed = OutboxRelay(db_sessions, None, Settings(), relay_id="crashed", lane=LANE_URGENT)  # type: ignore[arg-type]
    taken = await crashed.claim()
    assert [r.event_id for r in taken] == [event_ids[1], event_ids[3]]
    other = OutboxRelay(db_sessions, None, Settings(), relay_id="other", lane=LANE_URGENT)  # type: ignore[arg-type]
    assert await other.claim() == []
    async with db_sessions() as session:  # the crashed relay's claim runs out
        for row in await session.scalars(
            select(OutboxRecord).where(OutboxRecord.claimed_by == "crashed")
        ):
            row.claimed_until = utcnow().replace(year=2000)
        await session.commit()
    assert [r.event_id for r in await other.claim()] == [event_ids[1], event_ids[3]]
    bulk = OutboxRelay(db_sessions, None, Settings(), relay_id="bulk", lane=LANE_BULK)  # type: ignore[arg-type]
    assert [r.event_id for r in await bulk.claim()] == [event_ids[0], event_ids[2]]


def test_lane_of_outbox_rows() -> None:
    assert lane_of(event_topic(EventType.ACUTE_CHANGE)) == LANE_URGENT
    for kind in (EventType.ADMISSION, EventType.DISCHARGE, EventType.END_OF_LIFE):
        assert lane_of(event_topic(kind)) == LANE_BULK
    assert lane_of(NOTIFICATION_TOPIC, "stat") == LANE_URGENT
    assert lane_of(NOTIFICATION_TOPIC, "urgent") == LANE_BULK


async def test_after_the_broker_returns_unrouted_earlier_sends_are_redriven_early(
    db_sessions,
) -> None:
    """The safety net's window is long (60 s); after an outage what the broker may have lost
    goes out again at once (here: a recovery delay of 0), exactly once per recovery."""
    from datetime import timedelta

    from renkei.settings import Settings

    event_id = str(uuid.uuid4())
    async with db_sessions() as session:
        session.add(
            Event(id=event_id, sender_org_id="org", message_id="m", event_type="admission",
                  status="accepted", patient_id="p", patient_key="k", accepted_at=utcnow(),
                  bundle={}, content_sha256="0" * 64)
        )  # fmt: skip
        await session.flush()
        session.add(
            OutboxRecord(event_id=event_id, topic=event_topic(EventType.ADMISSION), key="k",
                         headers=[], value=b"{}", created_at=utcnow(),
                         sent_at=utcnow() - timedelta(seconds=1))
        )  # fmt: skip
        await session.commit()
    settings = Settings(relay_redeliver_after_seconds=600, relay_recovery_redrive_seconds=0)
    relay = OutboxRelay(db_sessions, None, settings)  # type: ignore[arg-type]

    async def sent_at():
        async with db_sessions() as session:
            return await session.scalar(
                select(OutboxRecord.sent_at).where(OutboxRecord.event_id == event_id)
            )

    assert await relay.maybe_redrive() == 0  # inside the window: the safety net waits
    relay._recovered()  # what the relay calls on its first send after a failed one
    assert await relay.maybe_redrive() == 1
    assert await sent_at() is None  # claimable again: published anew
    async with db_sessions() as session:
        row = await session.scalar(select(OutboxRecord).where(OutboxRecord.event_id == event_id))
        row.sent_at = utcnow() - timedelta(seconds=1)
        await session.commit()
    assert await relay.maybe_redrive() == 0  # once per recovery
    assert await sent_at() is not None


async def test_an_event_twice_in_one_batch_is_routed_once(db_sessions) -> None:
    """The broker delivered a record twice and both copies came in one poll: one set of
    notifications and one notification record per recipient, not two."""
    from zoneinfo import ZoneInfo

    from consumers.routing.service import route_events
    from consumers.routing.table import DEFAULT_ROUTING
    from services.demo_region import region_resources
    from services.registry import service as registry

    async with db_sessions() as session:
        for resource in region_resources():
            await registry.write(session, resource["resourceType"], resource, resource["id"])
        event_id = str(uuid.uuid4())
        session.add(
            Event(id=event_id, sender_org_id="misawa-general-hospital", message_id="m-twice",
                  event_type="admission", status="accepted", patient_id="p01",
                  patient_key=await registry.patient_key(session, "p01"), accepted_at=utcnow(),
                  bundle={}, content_sha256="0" * 64)
        )  # fmt: skip
        await session.flush()
        event = await session.get(Event, event_id)
        outcomes = await route_events(
            session, [event, event], DEFAULT_ROUTING, ZoneInfo("Asia/Tokyo"), "opt-in"
        )
        await session.commit()
        notifications = (await session.scalars(select(Notification))).all()
        records = (
            await session.scalars(
                select(OutboxRecord).where(OutboxRecord.topic == NOTIFICATION_TOPIC)
            )
        ).all()
    assert notifications and outcomes[1].already_routed and not outcomes[0].already_routed
    assert len(records) == len(notifications) == outcomes[0].notified
