"""The live stream: a caller's new notifications as Server-Sent Events, over every hub process.

- **Order.** ``notification.stream_seq`` is the event id. ``stamp_stream_order`` gives it when
  the notifications are written, under a lock held to the commit (PostgreSQL: a transaction
  advisory lock; SQLite: its one writer), so the numbers grow in commit order: a reader that
  saw N and reads ``> N`` later can never miss a row that committed with a smaller number.
- **Reading.** Each open stream reads the database (``recipient_org_id, stream_seq`` index)
  after its cursor: never one process's memory, so it works whichever HTTP worker holds the
  connection and wherever the router runs.
- **Waking.** The router rings ``hub.notifications_routed`` after its commit: streams in its
  process at once, those in other processes on the host through their doorbell
  (renkei.wakeup, ``wakeup-stream/``). Without a ring a stream reads again every
  ``stream_poll_seconds``; correctness never depends on the ring.
- **Ending.** The hub stopping (``close_streams``), the token expiring or being revoked: the
  stream says why in a last ``event: close`` and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.wakeup import RoutedSignal
from schemas.audit import AuditAction, AuditEntity
from services.audit.emit import emit, principal_agent
from services.auth.service import InvalidToken, Principal
from services.intake.models import Event
from services.notifications import service
from services.notifications.communication import to_communication
from services.notifications.models import Notification

log = logging.getLogger(__name__)

# Any constant the hub alone uses: the lock that orders the stream's numbers (PostgreSQL).
STREAM_ORDER_LOCK = 0x72656E6B  # "renk"


async def stamp_stream_order(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Give each notification row about to be inserted its ``stream_seq`` (caller commits).

    Every writer of notifications calls this just before its insert, in the same transaction:
    the lock is held to the commit, so a later number is never visible before an earlier one.
    A row the insert then ignores (already there) leaves a gap, which readers do not mind.
    """
    if not rows:
        return
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": STREAM_ORDER_LOCK}
        )
    # SQLite: the transaction already writes (the events were marked routed), so it holds the
    # database's one write lock to its commit.
    newest = await session.scalar(select(func.max(Notification.stream_seq)))
    for offset, row in enumerate(rows, start=1):
        row["stream_seq"] = (newest or 0) + offset


async def newest_seq(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.max(Notification.stream_seq))) or 0)


def sse_event(seq: int, resource: dict[str, Any]) -> bytes:
    data = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
    return f"id: {seq}\nevent: communication\ndata: {data}\n\n".encode()


def sse_close(reason: str) -> bytes:
    return f'event: close\ndata: {{"reason":"{reason}"}}\n\n'.encode()


HEARTBEAT = b": heartbeat\n\n"
# Sent first: the reconnection delay a browser's EventSource waits (ms) after a drop.
RETRY = b"retry: 2000\n\n"


async def _next_batch(
    session: AsyncSession, principal: Principal, references: list[str], cursor: int, limit: int
) -> list[tuple[Notification, Event]]:
    """The caller's notifications after ``cursor``, oldest first (the audience of
    GET /fhir/Communication: services/notifications/service.py)."""
    rows = await session.execute(
        service.visible(references, principal.org_id)
        .where(Notification.stream_seq > cursor)
        .order_by(Notification.stream_seq)
        .limit(limit)
    )
    return [(n, e) for n, e in rows.all()]


async def _deliver(
    hub: Any, principal: Principal, references: list[str], cursor: int
) -> tuple[list[bytes], int]:
    """One read: the events to send and the new cursor; one audit record per notification."""
    settings = hub.settings
    async with hub.sessions() as session:
        rows = await _next_batch(session, principal, references, cursor, settings.stream_batch)
        if not rows:
            return [], cursor
        shown = await service.shown(session, rows)
        zone = ZoneInfo(settings.timezone)
        agent = principal_agent(principal)
        chunks = []
        for (notification, event), what in zip(rows, shown, strict=True):
            chunks.append(
                sse_event(
                    int(notification.stream_seq or 0),
                    to_communication(notification, event, zone, what),
                )
            )
            await emit(
                session,
                agent,
                AuditAction.NOTIFICATION_LISTED,
                patient=notification.patient_id,
                source_org=event.sender_org_id,
                entities=[AuditEntity(f"Communication/{notification.id}")],
                detail={"via": "stream"},
            )
        await session.commit()
    hub.outbox_written.set()  # the audit records go out through the outbox
    return chunks, int(rows[-1][0].stream_seq or cursor)


async def open_stream(hub: Any, principal: Principal, resume: int | None) -> tuple[int, list[str]]:
    """Where the stream starts (after ``resume``, or after the newest: only new ones) and the
    caller's audience; audited as ``notification.stream-opened``."""
    async with hub.sessions() as session:
        references = await service.audience(session, principal)
        cursor = resume if resume is not None else await newest_seq(session)
        await emit(
            session,
            principal_agent(principal),
            AuditAction.STREAM_OPENED,
            entities=[AuditEntity("Communication", role="24", query="stream")],
            detail={"resumed": resume is not None},
        )
        await session.commit()
    hub.outbox_written.set()
    return cursor, references


async def events(
    hub: Any, principal: Principal, token: str, cursor: int, references: list[str]
) -> AsyncIterator[bytes]:
    """The stream's bytes until the hub closes, the token stops being valid or the client
    goes (Starlette cancels this generator when it disconnects)."""
    settings = hub.settings
    signal: RoutedSignal = hub.notifications_routed
    waiter = signal.waiter()
    loop = asyncio.get_running_loop()
    next_heartbeat = loop.time() + settings.stream_heartbeat_seconds
    try:
        yield RETRY
        while True:
            if signal.closing:
                yield sse_close("shutdown")
                return
            try:
                await hub.tokens.verify(token)  # cached; a revocation is seen at once
            except InvalidToken:
                yield sse_close("token")
                return
            waiter.clear()  # before the read: a ring during it makes the next wait return
            chunks, cursor = await _deliver(hub, principal, references, cursor)
            for chunk in chunks:
                yield chunk
            if len(chunks) >= settings.stream_batch:
                continue  # more are waiting
            now = loop.time()
            if now >= next_heartbeat:
                yield HEARTBEAT
                next_heartbeat = now + settings.stream_heartbeat_seconds
            wait = min(settings.stream_poll_seconds, max(0.0, next_heartbeat - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), wait)
    finally:
        signal.release(waiter)


def closing_server(config: Any, hub: Any) -> Any:
    """A uvicorn Server that ends the open streams when it is told to stop: uvicorn waits for
    open responses before the app's shutdown, and a stream never ends on its own."""
    import uvicorn

    class StreamClosingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            hub.notifications_routed.close_streams_threadsafe()
            super().handle_exit(sig, frame)

    return StreamClosingServer(config)
