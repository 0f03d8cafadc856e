"""Group commit for the intake: the messages posted at the same moment share one transaction.

Each HTTP worker process has one queue and one writer task. A POST puts its parsed message in
the queue and waits; the writer takes everything waiting (up to ``max_batch``), accepts it in one
transaction (``service.accept_many``) and answers every waiting POST. A message is answered only
after the commit that holds it, so a 2xx still means "stored".

Why: on SQLite every writer takes the one database write lock, and writers that find it taken
sleep in SQLite's busy handler (1, 2, 5, 10 ... 100 ms), so concurrent single-message
transactions queue behind each other's sleeps and fsyncs. One writer per process, many messages
per commit, turns that into one lock and one fsync per batch. On PostgreSQL it saves the
commits and round trips. An idle hub is not slowed: the writer starts at once on the first
message, it never waits for a batch to fill. An acute change goes ahead of the bulk messages
waiting with it (its own lane from the first step): a hospital's admission batch never holds a
nurse's 急変 back by more than the one transaction already in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.audit import AuditAgent
from schemas.events import EventType
from schemas.message import ParsedMessage
from services.errors import FhirError
from services.intake.service import IntakeResult, Submission, accept_many

log = logging.getLogger(__name__)


class IntakeQueue:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], max_batch: int = 64) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self._urgent: list[tuple[Submission, asyncio.Future[IntakeResult]]] = []
        self._waiting: list[tuple[Submission, asyncio.Future[IntakeResult]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for tests and metrics)

    async def accept(
        self,
        message: ParsedMessage,
        caller_org_id: str,
        agent: AuditAgent | None = None,
        detail: dict[str, Any] | None = None,
    ) -> IntakeResult:
        """Accept one message with whatever else is waiting; raises its FhirError if refused.

        ``agent`` and ``detail``: who posted it, for its message.accepted audit record."""
        answer: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        lane = self._urgent if message.event_type is EventType.ACUTE_CHANGE else self._waiting
        lane.append((Submission(message, caller_org_id, agent, detail or {}), answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="intake-writer")
        # A client that hangs up does not take its message back: the batch it is in commits.
        return await asyncio.shield(answer)

    async def _write(self) -> None:
        while self._urgent or self._waiting:
            batch = self._take()
            try:
                async with self.sessions() as session:
                    outcomes = await accept_many(session, [submission for submission, _ in batch])
                self.batches += 1
            except Exception as error:  # noqa: BLE001 - every waiting POST gets an answer
                for _submission, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_submission, answer), outcome in zip(batch, outcomes, strict=True):
                if answer.done():
                    continue
                if isinstance(outcome, FhirError):
                    answer.set_exception(outcome)
                else:
                    answer.set_result(outcome)

    def _take(self) -> list[tuple[Submission, asyncio.Future[IntakeResult]]]:
        """The next batch: every urgent message first, then bulk ones up to ``max_batch``."""
        batch, self._urgent = self._urgent[: self.max_batch], self._urgent[self.max_batch :]
        room = self.max_batch - len(batch)
        batch += self._waiting[:room]
        self._waiting = self._waiting[room:]
        return batch

    async def close(self) -> None:
        """Let the writer finish what it holds (used at shutdown)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
