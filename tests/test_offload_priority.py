"""The validation gate: bounded, urgent waiters first, cancellation never leaks a turn."""

from __future__ import annotations

import asyncio

import pytest

from services.offload import PriorityGate


async def test_an_urgent_waiter_goes_before_the_bulk_queued_ahead_of_it() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    await gate.acquire(urgent=False)  # a validation running

    async def wait(name: str, urgent: bool) -> None:
        await gate.acquire(urgent)
        order.append(name)
        await asyncio.sleep(0)
        gate.release()

    tasks = [asyncio.create_task(wait(f"bulk-{n}", False)) for n in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("acute", True)))
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*tasks)
    assert order == ["acute", "bulk-0", "bulk-1", "bulk-2"]


async def test_a_cancelled_waiter_gives_its_turn_back() -> None:
    gate = PriorityGate(1)
    await gate.acquire(urgent=False)
    cancelled = asyncio.create_task(gate.acquire(urgent=True))
    later = asyncio.create_task(gate.acquire(urgent=False))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.release()
    await asyncio.wait_for(later, 1)  # the turn went to the next waiter, not lost
    assert gate._holders == 1
    gate.release()
    await asyncio.wait_for(gate.acquire(urgent=False), 1)
