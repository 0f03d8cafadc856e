"""Database behaviour the guarantees rest on, on SQLite and on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import func, inspect, select

from producers.models import OutboxRecord
from producers.relay import OutboxRelay
from renkei.db import insert_ignore, migrate, utcnow
from renkei.settings import Settings
from renkei.tables import metadata
from services.intake.models import Event
from services.notifications.models import Notification


async def test_migrations_create_every_table_and_rerun_cleanly(db_sessions) -> None:
    async with db_sessions() as session:
        engine = session.bind
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables
    await migrate(engine)  # at every start: a no-op when current


async def _events_with_outbox(sessions, count: int, streams: int = 5) -> list[str]:
    ids = []
    async with sessions() as session:
        for i in range(count):
            event_id = str(uuid.uuid4())
            ids.append(event_id)
            session.add(
                Event(
                    id=event_id,
                    sender_org_id="org",
                    message_id=f"m{uuid.uuid4().hex}",
                    event_type="admission",
                    status="accepted",
                    patient_id="p",
                    patient_key="k",
                    accepted_at=utcnow(),
                    bundle={},
                    content_sha256="0" * 64,
                )
            )
            await session.flush()
            session.add(
                OutboxRecord(
                    event_id=event_id,
                    topic="renkei.event.admission",
                    key=f"k{i % streams}",
                    headers=[],
                    value=b"{}",
                    created_at=utcnow(),
                )
            )
        await session.commit()
    return ids


async def test_two_relays_never_claim_the_same_row(db_sessions) -> None:
    await _events_with_outbox(db_sessions, 450, streams=450)
    settings = Settings(relay_claim_seconds=60)
    relays = [OutboxRelay(db_sessions, None, settings, relay_id=f"relay-{n}") for n in range(2)]  # type: ignore[arg-type]

    async def claim_all(relay: OutboxRelay) -> list[int]:
        claimed: list[int] = []
        while rows := await relay.claim():
            claimed += [row.id for row in rows]
        return claimed

    first, second = await asyncio.gather(*(claim_all(r) for r in relays))
    assert not set(first) & set(second)
    assert len(first) + len(second) == 450


async def test_an_expired_claim_is_taken_over(db_sessions) -> None:
    await _events_with_outbox(db_sessions, 3)
    crashed = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=0.01), relay_id="crashed")  # type: ignore[arg-type]
    assert len(await crashed.claim()) == 3
    other = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=30), relay_id="other")  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert len(await other.claim()) == 3
    assert await other.claim() == []


async def test_a_stream_waits_for_its_earlier_row_held_by_a_crashed_relay(db_sessions) -> None:
    """A relay killed with its claim in force holds the patient's admission: the discharge
    written after it is not published first by another relay, other patients go on."""
    first = await _events_with_outbox(db_sessions, 2)  # streams k0, k1
    crashed = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=0.3), relay_id="crashed")  # type: ignore[arg-type]
    assert len(await crashed.claim()) == 2
    later = await _events_with_outbox(db_sessions, 3)  # k0, k1 again, and a new stream k2
    other = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=30), relay_id="other")  # type: ignore[arg-type]
    taken = await other.claim()
    assert [(r.event_id, r.key) for r in taken] == [(later[2], "k2")]
    await asyncio.sleep(0.35)  # the dead relay's claim runs out: each stream in order, at once
    taken = await other.claim()
    assert [r.event_id for r in taken] == [first[0], first[1], later[0], later[1]]
    assert await other.claim() == []


async def test_a_live_relay_keeps_its_claims_a_dead_one_loses_them_fast(db_sessions) -> None:
    await _events_with_outbox(db_sessions, 3)
    slow = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=0.6), relay_id="slow")  # type: ignore[arg-type]
    other = OutboxRelay(db_sessions, None, Settings(relay_claim_seconds=30), relay_id="other")  # type: ignore[arg-type]
    assert len(await slow.claim()) == 3
    for _ in range(4):  # 1.2 s in flight, twice the claim: renewed, never taken over
        await asyncio.sleep(0.3)
        await slow._renew_claims()
        assert await other.claim() == []
    await asyncio.sleep(0.7)  # the slow relay stops renewing (killed): its claims run out
    assert len(await other.claim()) == 3


async def test_notification_writes_are_idempotent(db_sessions) -> None:
    [event_id] = await _events_with_outbox(db_sessions, 1)
    row = {
        "event_id": event_id, "recipient": "Organization/a", "recipient_org_id": "a",
        "care_team_role": "care-manager", "category": "admission", "priority": "urgent",
        "patient_id": "p", "sent": utcnow(), "due_at": None,
    }  # fmt: skip
    for _ in range(3):
        async with db_sessions() as session:
            statement = insert_ignore(
                session,
                Notification.__table__,
                [{**row, "id": str(uuid.uuid4())}],
                ["event_id", "recipient", "escalation_step"],
            )
            await session.execute(statement)
            await session.commit()
    async with db_sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Notification))
    assert count == 1


async def test_two_routers_routing_the_same_event_at_once_write_it_once(db_sessions) -> None:
    from zoneinfo import ZoneInfo

    from consumers.routing.service import route_event
    from consumers.routing.table import DEFAULT_ROUTING
    from services.demo_region import region_resources
    from services.registry import service as registry

    async with db_sessions() as session:
        for resource in region_resources():
            await registry.write(session, resource["resourceType"], resource, resource["id"])
        event_id = str(uuid.uuid4())
        session.add(
            Event(id=event_id, sender_org_id="misawa-general-hospital", message_id="m",
                  event_type="admission", status="accepted", patient_id="p01",
                  patient_key=await registry.patient_key(session, "p01"), accepted_at=utcnow(),
                  bundle={}, content_sha256="0" * 64)
        )  # fmt: skip
        await session.commit()

    async def route() -> bool:
        async with db_sessions() as session:
            event = await session.get(Event, event_id)
            outcome = await route_event(
                session, event, DEFAULT_ROUTING, ZoneInfo("Asia/Tokyo"), "opt-in"
            )
            await session.commit()
            return outcome.already_routed

    results = await asyncio.gather(route(), route())
    assert sorted(results) == [False, True]
    async with db_sessions() as session:
        notifications = await session.scalar(select(func.count()).select_from(Notification))
        records = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.topic == "renkei.notification")
        )
    assert notifications == records == 5
