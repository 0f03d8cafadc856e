"""CPU-heavy work (FHIR validation of a 1 MB Bundle takes tens of milliseconds) off the event
loop, in worker threads, a bounded number at a time.

Without it one sender posting many large messages in parallel stalls every other request,
``/healthz`` included. The bound keeps a burst from starting more threads than there are cores
to run them; callers beyond it wait their turn (the per-client caps in services/throttle.py
keep one client from taking every turn).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")

# Configured from settings.validation_threads by create_app; 0 means one per core but one, which
# is left to the event loop (CPU-bound threads contend with it for the GIL).
_threads = 0
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PriorityGate] = (
    weakref.WeakKeyDictionary()
)


class PriorityGate:
    """At most ``size`` holders; a waiter marked urgent goes before every other waiter.

    An acute change (急変) posted during a hospital's flood of admissions must not wait for the
    flood's validations queued ahead of it: with one validation thread on a 2-core machine, 64
    waiting admissions are about 90 ms of queue.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._holders = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._bulk: deque[asyncio.Future[None]] = deque()

    async def acquire(self, urgent: bool) -> None:
        if self._holders < self.size and not self._urgent and not self._bulk:
            self._holders += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._bulk).append(waiter)
        try:
            await waiter  # the releaser counted this waiter in as a holder
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken and cancelled at once: pass the turn on
            else:
                (self._urgent if urgent else self._bulk).remove(waiter)
            raise

    def release(self) -> None:
        self._holders -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        while self._holders < self.size and (self._urgent or self._bulk):
            waiter = (self._urgent or self._bulk).popleft()
            if not waiter.done():
                self._holders += 1
                waiter.set_result(None)


def configure(threads: int) -> None:
    global _threads
    _threads = threads
    for gate in _gates.values():
        gate.resize(_size())


def _size() -> int:
    return _threads if _threads > 0 else max(1, (os.cpu_count() or 2) - 1)


def _gate() -> PriorityGate:
    # One per event loop: a gate's futures belong to the loop it was created on (tests, CLI).
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = PriorityGate(_size())
    return gate


async def run_cpu(func: Callable[..., T], *args: object, urgent: bool = False) -> T:
    """``func(*args)`` in a worker thread, at most ``validation_threads`` at once, urgent work
    first; waits (cancellation too) until the thread is done."""
    gate = _gate()
    await gate.acquire(urgent)
    try:
        return await anyio.to_thread.run_sync(func, *args)
    finally:
        gate.release()
