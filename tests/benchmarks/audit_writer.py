# ruff: noqa: ASYNC240  (a measuring script)
"""Figures for the audit trail (issue 14): how many records per second the audit writer
stores, and how long ``renkei audit verify`` takes over 100,000 records.

    .venv/bin/python -m tests.benchmarks.audit_writer                  # SQLite
    .venv/bin/python -m tests.benchmarks.audit_writer --postgres       # embedded PostgreSQL
    .venv/bin/python -m tests.benchmarks.audit_writer --records 20000 --verify-records 100000

The writer leg: N records emitted through ``emit_records`` (the outbox) with no worker
running, then the audit lane's relay alone until every row is on the broker, then the writer
alone until every record is chained (so its own rate, not the relay's). The verify leg chains
the records straight into a fresh database (a checkpoint every 1,000) and times the walk.
Embedded Tansu unless RENKEI_KAFKA_BOOTSTRAP is set. Prints the load average: the machine
may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select


async def _count(hub, statement) -> int:  # noqa: ANN001
    async with hub.sessions() as session:
        return int(await session.scalar(statement) or 0)


async def _until(hub, statement, target: int, within: float = 900.0) -> float:  # noqa: ANN001
    started = time.monotonic()
    while await _count(hub, statement) < target:
        if time.monotonic() - started > within:
            raise SystemExit(f"not done within {within:.0f}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def writer_leg(records: int, url: str, work: Path) -> tuple[float, float]:
    from consumers.audit.writer import AuditWriter
    from producers.models import OutboxRecord
    from producers.relay import OutboxRelay
    from renkei.hub import Hub
    from renkei.settings import Settings
    from services.audit.emit import emit_records
    from services.audit.models import AuditRecordRow
    from tests.audit_chain import records as make_records

    settings = Settings(
        data_dir=work / "var",
        database_url=url,
        kafka_bootstrap=os.environ.get("RENKEI_KAFKA_BOOTSTRAP"),
        audit_group_id=f"audit-{os.getpid()}",
        topic_prefix=f"bench{os.getpid()}.",
    )
    hub = Hub(settings)
    await hub.start(workers=False)
    try:
        for start in range(0, records, 1000):
            async with hub.sessions() as session:
                await emit_records(session, make_records(min(1000, records - start)))
                await session.commit()
        sent = (
            select(func.count()).select_from(OutboxRecord).where(OutboxRecord.sent_at.is_not(None))
        )
        relay = asyncio.create_task(
            OutboxRelay(hub.sessions, hub.broker, settings, lane="audit").run()
        )
        relay_seconds = await _until(hub, sent, records)
        writer = AuditWriter(hub.sessions, hub.broker, settings)
        task = asyncio.create_task(writer.run())
        stored = select(func.count()).select_from(AuditRecordRow)
        writer_seconds = await _until(hub, stored, records)
        task.cancel()
        relay.cancel()
        await asyncio.gather(task, relay, return_exceptions=True)
    finally:
        await hub.stop()
    return relay_seconds, writer_seconds


async def verify_leg(records: int, url: str, work: Path) -> tuple[float, float, int]:
    from renkei.crypto import Keyring
    from renkei.db import create_engine, migrate, session_factory
    from services.audit.verify import verify_trail
    from tests.audit_chain import chain

    engine = create_engine(url)
    await migrate(engine)
    keys = work / "verify-keys"
    sessions = session_factory(engine, Keyring.local(keys))
    started = time.monotonic()
    await chain(sessions, keys, records, checkpoint_every=1000, batch=1000)
    chained = time.monotonic() - started
    started = time.monotonic()
    async with sessions() as session:
        report = await verify_trail(session, keys, work / "archive")
    seconds = time.monotonic() - started
    await engine.dispose()
    if not report.intact or report.records != records:
        raise SystemExit(f"verify failed: {report.problems[:3]}")
    return chained, seconds, report.checkpoints


async def main(records: int, verify_records: int, postgres: bool) -> None:
    from tests.databases import fresh_database_url, stop_embedded_postgres

    kind = "postgresql" if postgres else "sqlite"
    work = Path(tempfile.mkdtemp(prefix="renkei-audit-bench-"))
    load = os.getloadavg()
    try:
        relay_s, writer_s = await writer_leg(records, await fresh_database_url(kind, work), work)
        chained_s, verify_s, checkpoints = await verify_leg(
            verify_records, await fresh_database_url(kind, work), work
        )
    finally:
        stop_embedded_postgres()
    after = os.getloadavg()
    print(f"database={kind} cores={os.cpu_count()} load before={load[0]:.1f} after={after[0]:.1f}")
    print(f"relay (audit lane) {records / relay_s:8.0f} records/s ({records} in {relay_s:.1f}s)")
    print(f"audit writer       {records / writer_s:8.0f} records/s ({records} in {writer_s:.1f}s)")
    print(
        f"verify             {verify_records / verify_s:8.0f} records/s "
        f"({verify_records} records, {checkpoints} checkpoints in {verify_s:.2f}s; "
        f"chained in {chained_s:.1f}s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--verify-records", type=int, default=100000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.records, args.verify_records, args.postgres))
