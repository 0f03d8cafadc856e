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
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

# Configured from settings.validation_threads by create_app; 0 means one per core but one, which
# is left to the event loop (CPU-bound threads contend with it for the GIL).
_threads = 0
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def configure(threads: int) -> None:
    global _threads
    _threads = threads
    for limiter in _limiters.values():
        limiter.total_tokens = _size()


def _size() -> int:
    return _threads if _threads > 0 else max(1, (os.cpu_count() or 2) - 1)


def _limiter() -> anyio.CapacityLimiter:
    # One per event loop: a limiter belongs to the loop it was created on (tests, CLI runs).
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(_size())
    return limiter


async def run_cpu(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in a worker thread; waits (cancellation too) until the thread is done."""
    return await anyio.to_thread.run_sync(func, *args, limiter=_limiter())
