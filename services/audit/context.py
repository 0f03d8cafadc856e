"""Audit records of HTTP requests: the caller as agent, the session's age, failures alone.

What every view needs to emit its record: the agent from the verified token and the caller's
address (AuditEvent.agent.network), and — as 医療情報システムの安全管理に関するガイドライン 6.0
(システム運用編 17) asks — the login time and session length: the token's issue time and its
age in seconds at the action, in ``detail``. A refusal has no transaction of its own, so it is
written in a small one (``emit_alone``); a flood of bad bearer tokens is throttled to one
signin.failed record per caller address per second (``SigninFailures``).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from renkei.db import utcnow
from schemas.audit import AuditAction, AuditAgent, AuditOutcome, AuditRecord
from services.audit.emit import emit_records, new_record, principal_agent
from services.auth.service import Principal

# An agent nobody could vouch for (a bearer token that did not verify, an unknown client).
UNKNOWN = "unknown"
SIGNIN_FAILURES_PER_ADDRESS_SECONDS = 1.0


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def query_names(request: Request) -> str:
    """A search's parameter names, never their values (the values may be personal data)."""
    return ",".join(sorted(set(request.query_params.keys())))


def session_detail(principal: Principal, at: datetime | None = None) -> dict[str, Any]:
    """The token's issue time and age in seconds (the session's login time and length)."""
    if principal.issued_at is None:
        return {}
    age = ((at or utcnow()) - principal.issued_at).total_seconds()
    return {
        "token_issued_at": principal.issued_at.isoformat(),
        "token_age_seconds": max(int(age), 0),
    }


def request_agent(request: Request | None, principal: Principal) -> AuditAgent:
    return principal_agent(principal, network=client_address(request) if request else None)


def request_record(
    request: Request | None,
    principal: Principal,
    action: AuditAction,
    *,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> AuditRecord:
    """A record of an action made under ``principal``'s token (the session in ``detail``)."""
    return new_record(
        request_agent(request, principal),
        action,
        detail={**session_detail(principal), **(detail or {})},
        **fields,
    )


async def audit_request(
    session: AsyncSession,
    request: Request | None,
    principal: Principal,
    action: AuditAction,
    **fields: Any,
) -> AuditRecord:
    """Add the request's record to ``session``'s transaction (the caller commits)."""
    record = request_record(request, principal, action, **fields)
    await emit_records(session, [record])
    return record


async def emit_alone(sessions: async_sessionmaker[AsyncSession], record: AuditRecord) -> None:
    """A record of an action that wrote nothing (a refusal): its own small transaction."""
    async with sessions() as session:
        await emit_records(session, [record])
        await session.commit()


class SigninFailures:
    """At most one signin.failed record per caller address per ``every`` seconds: a client
    hammering the hub with bad tokens leaves a trace in the trail, not a flood of records."""

    def __init__(self, every: float = SIGNIN_FAILURES_PER_ADDRESS_SECONDS) -> None:
        self.every = every
        self._last: dict[str | None, float] = {}
        self.suppressed = 0  # failures not recorded (for tests and metrics)

    def admit(self, address: str | None) -> bool:
        now = time.monotonic()
        if now - self._last.get(address, float("-inf")) < self.every:
            self.suppressed += 1
            return False
        if len(self._last) > 10_000:  # bounded: drop what is older than the window
            self._last = {a: t for a, t in self._last.items() if now - t < self.every}
        self._last[address] = now
        return True


async def signin_failed(request: Request, check: str) -> None:
    """Record that the request's bearer token did not verify (``check``: which check failed,
    never the token's content), unless this address already failed within the second."""
    state = request.app.state
    failures = getattr(state, "signin_failures", None)
    if failures is None:
        failures = state.signin_failures = SigninFailures()
    address = client_address(request)
    if not failures.admit(address):
        return
    record = new_record(
        AuditAgent(org=UNKNOWN, role=UNKNOWN, network=address),
        AuditAction.SIGNIN_FAILED,
        outcome=AuditOutcome.MINOR_FAILURE,
        reason=check,
        # The route's template, not the path sent (a path segment is the caller's text).
        detail={"route": getattr(request.scope.get("route"), "path", None)},
    )
    await emit_alone(state.hub.sessions, record)


# The route whose refusals are message.refused (the others are access.refused).
PROCESS_MESSAGE = "/fhir/$process-message"


async def access_refused(request: Request, principal: Principal, route: str, reason: str) -> None:
    """A signed-in caller the route rules refused (role, scope, region office only)."""
    action = AuditAction.MESSAGE_REFUSED if route == PROCESS_MESSAGE else AuditAction.ACCESS_REFUSED
    record = request_record(
        request,
        principal,
        action,
        outcome=AuditOutcome.MINOR_FAILURE,
        source_org=principal.org_id if action == AuditAction.MESSAGE_REFUSED else None,
        reason=reason,
        detail={"route": f"{request.method} {route}", "status": 403},
    )
    await emit_alone(request.app.state.hub.sessions, record)
