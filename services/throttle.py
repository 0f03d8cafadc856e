"""Rate limits and fairness per client, in process memory.

Each client (a token subject: its organization and its client id, or the token's jti) has a
token bucket of ``rate_limit_burst`` requests refilled at ``rate_limit_per_second``; a request
finding it empty answers 429 with Retry-After. ``$process-message`` also caps how many messages
one client may have in validation and storage at once (``process_message_concurrency``), so a
sender posting in parallel cannot take every worker thread from the others.

Per process on purpose: several hub processes behind a balancer each allow the rate, which is
a bound on cost per process, the thing being protected.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request

from services.auth.policy import caller
from services.auth.service import Principal
from services.errors import FhirError

# Idle full buckets are forgotten past this many clients, so memory stays bounded.
_PRUNE_ABOVE = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Throttle:
    def __init__(self, rate: float, burst: int, concurrency: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.concurrency = max(1, concurrency)
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[str, int] = {}

    def take(self, client: str, now: float | None = None) -> float | None:
        """Spend one request: None if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.rate if self.rate > 0 else 60.0

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]

    def enter(self, client: str) -> bool:
        """Claim one of the client's message slots; False when all are in use."""
        running = self._in_flight.get(client, 0)
        if running >= self.concurrency:
            return False
        self._in_flight[client] = running + 1
        return True

    def leave(self, client: str) -> None:
        running = self._in_flight.get(client, 1) - 1
        if running > 0:
            self._in_flight[client] = running
        else:
            self._in_flight.pop(client, None)


def client_key(principal: Principal) -> str:
    """The token subject: organization plus the client (SMART client id) or the token id."""
    client = getattr(principal, "client_id", None) or principal.token_id or "-"
    return f"{principal.org_id}|{client}"


def _throttled(diagnostics: str, retry_after: float) -> FhirError:
    return FhirError(
        429,
        "throttled",
        diagnostics,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def rate_limit(request: Request, principal: Principal = Depends(caller)) -> None:
    """Dependency on every authenticated route (services/app.py)."""
    wait = request.app.state.throttle.take(client_key(principal))
    if wait is not None:
        raise _throttled("too many requests from this client; retry later", wait)


async def message_slot(
    request: Request, principal: Principal = Depends(caller)
) -> AsyncIterator[None]:
    """Dependency of ``$process-message``: at most N of one client's messages at once."""
    throttle: Throttle = request.app.state.throttle
    client = client_key(principal)
    if not throttle.enter(client):
        raise _throttled("too many messages in progress from this client; retry later", 1)
    try:
        yield
    finally:
        throttle.leave(client)
