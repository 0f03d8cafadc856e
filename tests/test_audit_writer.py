"""The audit writer: records emitted with actions reach the chain exactly once, through the
outbox, the relay, the broker and the writer; a writer stopped while records are emitted loses
nothing; two writers at once never fork the chain; the relay publishes again what the writer
has not stored."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, update

from consumers.audit.writer import AuditWriter, run_audit_writer
from producers.models import OutboxRecord
from producers.relay import OutboxRelay
from renkei.db import utcnow
from renkei.hub import Hub
from renkei.settings import Settings
from schemas.audit import AuditAction, AuditEntity
from services.audit.emit import emit, emit_records, hub_agent
from services.audit.models import AuditCheckpoint, AuditRecordRow
from tests.audit_chain import records, stored_count, verify


async def wait_stored(hub: Hub, count: int, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await stored_count(hub.sessions) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{await stored_count(hub.sessions)} of {count} audit records stored")


async def stop_writer(hub: Hub) -> None:
    (task,) = [t for t in hub._tasks if t.get_name() == "audit-writer"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    hub._tasks.remove(task)


async def test_an_emitted_record_is_stored_once_and_checkpointed(hub_factory) -> None:
    hub = await hub_factory(audit_checkpoint_seconds=0.5)
    async with hub.sessions() as session:
        record = await emit(
            session,
            hub_agent("region-office", "hub:test"),
            AuditAction.PATIENT_READ,
            patient="p1",
            entities=[AuditEntity("Patient/p1", role="1")],
        )
        await session.commit()
    hub.outbox_written.set()
    await wait_stored(hub, 1)
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        async with hub.sessions() as session:
            if await session.scalar(select(func.count()).select_from(AuditCheckpoint)):
                break
        await asyncio.sleep(0.1)
    async with hub.sessions() as session:
        (row,) = (await session.scalars(select(AuditRecordRow))).all()
        assert (row.seq, row.id, row.document) == (1, record.id, record.to_bytes())
        (checkpoint,) = (await session.scalars(select(AuditCheckpoint))).all()
        assert (checkpoint.seq, checkpoint.hash) == (1, row.hash)
    report = await verify(hub.sessions, hub.settings.keys_dir, hub.settings.audit_archive_dir)
    assert report.intact and report.records == 1, report.problems


async def test_a_writer_stopped_while_records_are_emitted_loses_none(hub_factory) -> None:
    hub = await hub_factory(audit_checkpoint_records=250)
    await stop_writer(hub)
    emitted = records(1000)
    for start in range(0, len(emitted), 100):
        async with hub.sessions() as session:
            await emit_records(session, emitted[start : start + 100])
            await session.commit()
        hub.outbox_written.set()
    # The relay publishes them while no writer reads: all on the broker, none stored.
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        async with hub.sessions() as session:
            unsent = await session.scalar(
                select(func.count()).select_from(OutboxRecord).where(OutboxRecord.sent_at.is_(None))
            )
        if unsent == 0:
            break
        await asyncio.sleep(0.1)
    assert unsent == 0
    assert await stored_count(hub.sessions) == 0
    hub.spawn("audit-writer", run_audit_writer)
    await wait_stored(hub, 1000)
    await asyncio.sleep(1.0)  # anything delivered twice would be stored by now
    async with hub.sessions() as session:
        ids = (await session.scalars(select(AuditRecordRow.id))).all()
    assert sorted(ids) == sorted(r.id for r in emitted)  # each once
    report = await verify(hub.sessions, hub.settings.keys_dir, hub.settings.audit_archive_dir)
    assert report.intact and report.records == 1000, report.problems


async def test_two_writers_at_once_never_fork_the_chain(db_sessions, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    writers = [AuditWriter(db_sessions, None, settings) for _ in range(2)]  # type: ignore[arg-type]
    batches = [records(50) for _ in range(20)]
    shared = records(10)  # delivered to both (a redrive, a rebalance): stored once

    async def write(writer: AuditWriter, mine: list) -> None:
        for batch in mine:
            await writer.store(batch + shared)

    await asyncio.gather(write(writers[0], batches[0::2]), write(writers[1], batches[1::2]))
    assert await stored_count(db_sessions) == 20 * 50 + 10
    assert sum(w.stored for w in writers) == 1010
    report = await verify(db_sessions, settings.keys_dir, settings.audit_archive_dir)
    assert report.intact and report.last_seq == 1010, report.problems


async def test_the_relay_publishes_again_audit_rows_the_writer_has_not_stored(
    db_sessions, tmp_path
) -> None:
    settings = Settings(data_dir=tmp_path / "var", relay_redeliver_after_seconds=60)
    stored, lost, recent = records(1), records(1), records(1)
    for batch in (stored, lost, recent):  # three transactions: three outbox rows
        async with db_sessions() as session:
            await emit_records(session, batch)
            await session.commit()
    from services.audit.chain import append

    async with db_sessions() as session:
        await append(session, stored)
        long_ago = utcnow() - timedelta(seconds=120)
        await session.execute(update(OutboxRecord).values(sent_at=long_ago))
        await session.execute(
            update(OutboxRecord).where(OutboxRecord.key == recent[0].id).values(sent_at=utcnow())
        )
        await session.commit()
    for lane in ("audit", None, "bulk"):
        relay = OutboxRelay(db_sessions, None, settings, lane=lane)  # type: ignore[arg-type]
        count = await relay.maybe_redrive()
        assert count == (1 if lane == "audit" else 0)  # the audit lane's, once
    async with db_sessions() as session:
        unsent = (
            await session.scalars(select(OutboxRecord.key).where(OutboxRecord.sent_at.is_(None)))
        ).all()
    assert unsent == [lost[0].id]  # not the stored one, not the one still in its window


async def test_an_unreadable_record_goes_to_the_dlq_and_the_rest_are_stored(hub_factory) -> None:
    from schemas.audit import HEADER_AUDIT_ID, HEADER_SCHEMA_VERSION
    from schemas.topics import AUDIT_TOPIC, DLQ_TOPIC

    hub = await hub_factory()
    producer = hub.broker.producer()
    await producer.start()
    try:
        headers = [(HEADER_AUDIT_ID, b"forged"), (HEADER_SCHEMA_VERSION, b"2")]
        await producer.send_and_wait(
            hub.settings.topic(AUDIT_TOPIC), b"not sealed", key=b"forged", headers=headers
        )
    finally:
        await producer.stop()
    async with hub.sessions() as session:
        await emit_records(session, records(3))
        await session.commit()
    hub.outbox_written.set()
    await wait_stored(hub, 3)
    consumer = hub.broker.consumer(hub.settings.topic(DLQ_TOPIC), group_id="dlq-reader")
    await consumer.start()
    try:
        found = []
        deadline = asyncio.get_running_loop().time() + 30
        while not found and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            found = [r for part in batches.values() for r in part]
    finally:
        await consumer.stop()
    (dead,) = found
    assert dict(dead.headers)["renkei-dlq-reason"].startswith(b"unreadable audit record")
    assert await stored_count(hub.sessions) == 3


async def test_the_actions_of_a_message_reach_the_chain_once_each(live_api) -> None:
    from schemas.events import EventType
    from tests.audit_emitted import audit_records
    from tests.hubtools import accept, load_region, message, wait_routed

    hub = live_api.hub
    await load_region(hub)
    posted = [await accept(hub, live_api.client, message(EventType.ADMISSION, "p01"))]
    await wait_routed(hub, posted)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        emitted = {r.id for r in await audit_records(hub.sessions)}
        async with hub.sessions() as session:
            stored = (await session.scalars(select(AuditRecordRow.id))).all()
            actions = set((await session.scalars(select(AuditRecordRow.action))).all())
        if emitted and set(stored) == emitted:
            break
        assert asyncio.get_running_loop().time() < deadline, (len(emitted), len(stored))
        await asyncio.sleep(0.1)
    assert len(stored) == len(set(stored))  # none twice
    assert {"message.accepted", "routing.delivered"} <= actions
    report = await verify(hub.sessions, hub.settings.keys_dir, hub.settings.audit_archive_dir)
    assert report.intact and report.records == len(emitted), report.problems
