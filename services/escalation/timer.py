"""The escalation timer: fires the due steps of unanswered stat acute changes, once.

Several hub processes may run the loop (each router process does): a step is claimed by a
conditional UPDATE of its timer row (``step`` and ``status`` as read, ``due_at`` passed), the
claim and everything the step writes (notifications, outbox records, audit records) commit
together, and a claimer that lost the race updates nothing and writes nothing. On PostgreSQL
the loser's UPDATE waits for the winner's row lock and then finds the step moved on; SQLite
serializes writers. A crash before the commit leaves the step due: the next loop fires it.

The clock is a parameter (a callable returning an aware ``datetime``): tests move it forward
instead of waiting ten minutes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from consumers.routing.rules import BREAK_GLASS, care_team_members, escalation_decision
from consumers.routing.service import RoutingLookups, _notification_records
from consumers.routing.table import SUMMARY, RoutingTable, content_for, load_routing
from producers.models import OutboxRecord
from renkei.crypto import keyring_of
from renkei.db import insert_ignore_many, utcnow
from renkei.settings import Settings
from schemas.audit import AuditAction, AuditEntity
from schemas.events import CareTeamRole, EventType
from services.audit.emit import emit, hub_agent
from services.escalation.models import COMPLETED, PENDING, STOPPED, EscalationTimer
from services.escalation.service import STAT, escalation_window
from services.intake.models import STATUS_FORGOTTEN, Event
from services.notifications.models import Notification
from services.notifications.stream import stamp_stream_order

log = logging.getLogger(__name__)

HUB_ESCALATION = "hub:escalation"
REGION_OFFICE_ROLE = "region-office"  # care_team_role of the last step's notification
DEFAULT_WINDOW = timedelta(minutes=10)
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Step:
    number: int
    role: CareTeamRole | None  # None: the region office, which is no care-team role


# 副主治医, then 急変時入院先, then the region office (地域連携相談窓口).
STEPS = (
    Step(1, CareTeamRole.BACKUP_PHYSICIAN),
    Step(2, CareTeamRole.EMERGENCY_HOSPITAL),
    Step(3, None),
)
LAST_STEP = STEPS[-1].number


@dataclass(frozen=True)
class _Target:
    reference: str
    org_id: str
    role: str
    content: str
    permitted: bool
    reason: str


class Escalator:
    """Fires due escalation steps; ``fire_due`` once, ``run`` as the hub's loop."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        clock: Clock = utcnow,
        table: RoutingTable | None = None,
        outbox_written: object | None = None,
        batch: int = 50,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.table = table or load_routing(settings.routing_file)
        self.zone = ZoneInfo(settings.timezone)
        self.window = escalation_window(settings) or DEFAULT_WINDOW
        self.agent = hub_agent(settings.region_org, HUB_ESCALATION)
        # The escalation notifications go out through the outbox: wake the relay.
        self.outbox_written = outbox_written
        self.batch = batch

    async def run(self) -> None:
        while True:
            fired = await self.fire_due()
            if fired < self.batch:
                await asyncio.sleep(self.settings.escalation_poll_seconds)

    async def fire_due(self) -> int:
        """Fire every step due by the clock's now; the number of timers this call advanced."""
        now = self.clock()
        async with self.sessions() as session:
            due = (
                await session.execute(
                    select(EscalationTimer.id, EscalationTimer.step)
                    .where(EscalationTimer.status == PENDING, EscalationTimer.due_at <= now)
                    .order_by(EscalationTimer.due_at)
                    .limit(self.batch)
                )
            ).all()
        advanced = 0
        for timer_id, step in due:
            advanced += await self.fire(timer_id, step, now)
        return advanced

    async def fire(self, timer_id: str, step: int, now: datetime) -> int:
        """Claim and fire one timer's step (one transaction); 0 when another process had it."""
        async with self.sessions() as session:
            claimed = await session.execute(
                update(EscalationTimer)
                .where(
                    EscalationTimer.id == timer_id,
                    EscalationTimer.step == step,
                    EscalationTimer.status == PENDING,
                    EscalationTimer.due_at <= now,
                )
                .values(step=step + 1, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:
                await session.rollback()
                return 0
            timer = await session.get(EscalationTimer, timer_id)
            assert timer is not None
            written = await self._advance(session, timer, step, now)
            await session.commit()
        if written and self.outbox_written is not None:
            self.outbox_written.set()
        return 1

    async def _advance(
        self, session: AsyncSession, timer: EscalationTimer, step: int, now: datetime
    ) -> int:
        """The claimed step, falling through to the next while a step reaches nobody."""
        if await _acknowledged(session, timer.event_id):
            # The acknowledgement committed after the timer was read: it still wins.
            timer.status = STOPPED
            return 0
        event = await session.scalar(
            select(Event)
            .options(defer(Event.bundle), defer(Event.bundle_sealed))
            .where(Event.id == timer.event_id)
        )
        if event is None or event.status == STATUS_FORGOTTEN or event.patient_id is None:
            timer.status = COMPLETED  # a forgotten patient: nobody is told of them any more
            return 0
        lookups = RoutingLookups()
        await lookups.load(session, [event.patient_id])
        number, written = step, 0
        while True:
            written = await self._step(session, timer, event, STEPS[number - 1], now, lookups)
            if written or number == LAST_STEP:
                break
            number += 1
        if number == LAST_STEP:
            timer.status = COMPLETED
        else:
            timer.step = number + 1
            timer.due_at = now + self.window
        timer.updated_at = now
        return written

    async def _step(
        self,
        session: AsyncSession,
        timer: EscalationTimer,
        event: Event,
        step: Step,
        now: datetime,
        lookups: RoutingLookups,
    ) -> int:
        """Write one step's notifications (and their audit records); how many were written."""
        targets = self._targets(event, step, now, lookups)
        role = step.role.value if step.role else REGION_OFFICE_ROLE
        entities = [AuditEntity(f"Patient/{event.patient_id}", role="1"),
                    AuditEntity(f"Bundle/{event.id}", role="3"),
                    AuditEntity(f"Communication/{timer.notification_id}")]  # fmt: skip
        detail = {"step": step.number, "role": role}
        if not targets:
            log.info("escalation %s: step %d has nobody in its role", timer.id, step.number)
            await emit(session, self.agent, AuditAction.ESCALATION_SKIPPED,
                       patient=event.patient_id, source_org=event.sender_org_id,
                       entities=entities, reason="no-such-role", detail=detail)  # fmt: skip
            return 0
        rows = []
        for target in targets:
            recipient = AuditEntity(target.reference, role="4")
            if not target.permitted:
                await emit(session, self.agent, AuditAction.ESCALATION_WITHHELD,
                           patient=event.patient_id, source_org=event.sender_org_id,
                           entities=[*entities, recipient], reason=target.reason,
                           detail=detail)  # fmt: skip
                continue
            row = self._notification(timer, event, step, target, now)
            rows.append(row)
            await emit(session, self.agent, AuditAction.ESCALATION_FIRED,
                       patient=event.patient_id, source_org=event.sender_org_id,
                       entities=[*entities, recipient, AuditEntity(f"Communication/{row['id']}")],
                       reason=target.reason, detail=detail)  # fmt: skip
        if rows:
            # Its place on the live stream, like every notification (after the step's claim,
            # so this transaction already holds SQLite's write lock).
            await stamp_stream_order(session, rows)
            await session.execute(
                insert_ignore_many(
                    session, Notification.__table__, ["event_id", "recipient", "escalation_step"]
                ),
                rows,
            )
            key = await keyring_of(session).patient_dek(session, event.patient_id or "")
            records = _notification_records(session, event, rows, key)
            await session.execute(insert(OutboxRecord.__table__), records)
        log.info("escalation %s: step %d notified %d", timer.id, step.number, len(rows))
        return len(rows)

    def _targets(
        self, event: Event, step: Step, now: datetime, lookups: RoutingLookups
    ) -> list[_Target]:
        """Who the step reaches, each with the consent decision (same rules as routing)."""
        consents = lookups.consents.get(event.patient_id or "", [])
        default = self.settings.consent_default
        if step.role is None:
            org = self.settings.region_org
            if org == event.sender_org_id:
                return []
            reference = f"Organization/{org}"
            decision = escalation_decision(
                consents, org, reference, None, now, self.zone, default, event.break_glass
            )
            # Minimum necessary: the office phones the team; it needs what happened, not the
            # clinical message.
            return [_Target(reference, org, REGION_OFFICE_ROLE, SUMMARY, *_pair(decision))]
        teams = lookups.care_teams.get(event.patient_id or "", [])
        targets: dict[str, _Target] = {}
        for member in care_team_members(teams, now, self.zone):
            if member.role != step.role or member.reference in targets:
                continue
            org = lookups.organization_of(member.reference)
            if org is None or org == event.sender_org_id:
                continue  # the sender found the acute change; it is not who must answer
            decision = escalation_decision(
                consents, org, member.reference, member.role, now, self.zone, default,
                event.break_glass,
            )  # fmt: skip
            content = content_for(self.table, EventType.ACUTE_CHANGE, member.role)
            targets[member.reference] = _Target(
                member.reference, org, member.role.value, content, *_pair(decision)
            )
        return sorted(targets.values(), key=lambda t: t.reference)

    def _notification(
        self, timer: EscalationTimer, event: Event, step: Step, target: _Target, now: datetime
    ) -> dict:
        return {
            "id": str(uuid.uuid4()),
            "event_id": event.id,
            "recipient": target.reference,
            "recipient_org_id": target.org_id,
            "care_team_role": target.role,
            "category": event.event_type,
            "priority": STAT,
            "patient_id": event.patient_id,
            "sent": now,
            # Answer before the next step goes out.
            "due_at": now + self.window,
            "content": target.content,
            "break_glass": target.reason == BREAK_GLASS,
            "reason": target.reason,
            "escalation_step": step.number,
            "escalation_of": timer.notification_id,
        }


def _pair(decision) -> tuple[bool, str]:  # noqa: ANN001 - ConsentDecision
    return decision.permitted, decision.reason


async def _acknowledged(session: AsyncSession, event_id: str) -> bool:
    """Has any stat notification of the event (routed or an escalation step) been acknowledged?"""
    return bool(
        await session.scalar(
            select(
                exists().where(
                    Notification.event_id == event_id,
                    Notification.priority == STAT,
                    Notification.acknowledged_at.is_not(None),
                )
            )
        )
    )


async def run_escalation(hub, clock: Clock = utcnow) -> None:  # noqa: ANN001 - Hub (import cycle)
    """The hub's escalation loop (in the router process, or ``renkei worker escalation``)."""
    if escalation_window(hub.settings) is None:
        log.info("escalation is off (RENKEI_ESCALATION_WINDOW_MINUTES=0)")
        return
    await Escalator(
        hub.sessions, hub.settings, clock=clock, outbox_written=hub.outbox_written
    ).run()


__all__ = ["STEPS", "Escalator", "run_escalation"]
