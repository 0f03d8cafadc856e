"""A background worker that fails for a reason it did not expect is started again, not lost.

Found by the hub fault scenarios: with PostgreSQL restarted, the relay and the router ended on
the first database error while the intake went on answering 202.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.exc import OperationalError

from renkei.hub import keep_running


async def test_a_failing_worker_is_started_again_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def worker(_hub: object) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError())

    with caplog.at_level(logging.ERROR, logger="renkei.hub"):
        await asyncio.wait_for(keep_running(None, "relay", worker), 10)  # type: ignore[arg-type]
    assert calls == 3
    failures = [r.getMessage() for r in caplog.records if "worker relay failed" in r.getMessage()]
    assert len(failures) == 2 and all("OperationalError" in line for line in failures)
    assert all("SELECT" not in line for line in failures)  # the type, never the statement


async def test_cancelling_stops_it_without_a_restart() -> None:
    started = asyncio.Event()

    async def worker(_hub: object) -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(keep_running(None, "router", worker))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
