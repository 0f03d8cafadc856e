"""``renkei audit export``'s memory and speed: N stored records exported as NDJSON and CSV, with
the peak of Python allocations during each export (tracemalloc) and records per second.

The peak should not grow with N (the export reads EXPORT_CHUNK records at a time).

    .venv/bin/python -m tests.benchmarks.audit_export --records 10000 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from renkei.crypto import Keyring
from renkei.db import create_engine, migrate, session_factory
from schemas.audit import AuditAction, AuditEntity
from services.audit.chain import append
from services.audit.emit import hub_agent, new_record
from services.audit.export import export_period

BATCH = 5000


async def measure(records: int, work: Path) -> None:
    database = work / f"audit-{records}.sqlite3"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    await migrate(engine)
    sessions = session_factory(engine, Keyring.local(work / "keys"))
    agent = hub_agent("region-office", "hub:router")
    started = time.perf_counter()
    for first in range(0, records, BATCH):
        batch = [
            new_record(agent, AuditAction.ROUTING_DELIVERED, patient=f"p{i % 997}",
                       source_org="hospital-b",
                       entities=[AuditEntity(f"Bundle/e{i}", role="3"),
                                 AuditEntity(f"Communication/n{i}")])
            for i in range(first, min(first + BATCH, records))
        ]  # fmt: skip
        async with sessions() as session:
            await append(session, batch)
            await session.commit()
    stored = time.perf_counter() - started
    print(f"{records:,} records stored in {stored:.1f} s")
    for fmt in ("ndjson", "csv"):
        target = work / f"export-{records}.{fmt}"
        tracemalloc.start()
        started = time.perf_counter()
        with target.open("w", encoding="utf-8", newline="") as out:
            async with sessions() as session:
                done = await export_period(session, out, None, None, fmt)
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        size = target.stat().st_size
        print(
            f"  {fmt:6} {done:,} records in {elapsed:.1f} s ({done / elapsed:,.0f}/s), "
            f"peak Python memory {peak / 2**20:.1f} MiB, file {size / 2**20:.1f} MiB"
        )
    await engine.dispose()
    os.remove(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for records in args.records:
            asyncio.run(measure(records, Path(work)))


if __name__ == "__main__":
    main()
