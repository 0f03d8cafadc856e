"""Escalation chains: started by the router, stopped by an acknowledgement.

主治医・副主治医制: an acute change the team was told of at once (stat) and that nobody has
acknowledged (対応済) within the region's window goes to the backup physician (副主治医), after
another window to the care team's emergency hospital (急変時入院先), then to the region office.
The chain is the event's, not one recipient's: any stat notification of the event
acknowledged, the routed ones or an escalation step, means someone is acting, and stops it.

This module only writes and stops timers (the router and the inbox call it); firing them is
``services.escalation.timer``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import insert_ignore_many
from renkei.settings import Settings
from schemas.events import CareTeamRole, EventType
from services.escalation.models import PENDING, STOPPED, EscalationTimer

STAT = "stat"


def escalation_window(settings: Settings) -> timedelta | None:
    """The region's window, or None when the region turned escalation off (0 minutes)."""
    if settings.escalation_window_minutes <= 0:
        return None
    return timedelta(minutes=settings.escalation_window_minutes)


def _original(rows: list[dict]) -> dict:
    """The stat notification a chain continues: the primary physician's when there is one."""
    primary = [r for r in rows if r["care_team_role"] == CareTeamRole.PRIMARY_PHYSICIAN.value]
    return (primary or rows)[0]


async def start_escalations(
    session: AsyncSession, notifications: list[dict], window: timedelta
) -> int:
    """A timer for each acute change among ``notifications`` (rows the router is inserting)
    with a stat one; in the caller's transaction. Routine and urgent never escalate."""
    by_event: dict[str, list[dict]] = {}
    for n in notifications:
        if n["priority"] == STAT and n["category"] == EventType.ACUTE_CHANGE.value:
            by_event.setdefault(n["event_id"], []).append(n)
    timers = []
    for event_id, rows in by_event.items():
        original = _original(sorted(rows, key=lambda r: r["recipient"]))
        sent: datetime = original["sent"]
        timers.append(
            {
                "id": str(uuid.uuid4()),
                "event_id": event_id,
                "notification_id": original["id"],
                "patient_id": original["patient_id"],
                "step": 1,
                "due_at": sent + window,
                "status": PENDING,
                "created_at": sent,
                "updated_at": sent,
            }
        )
    if timers:
        await session.execute(
            insert_ignore_many(session, EscalationTimer.__table__, ["event_id"]), timers
        )
    return len(timers)


async def stop_escalation(session: AsyncSession, event_id: str, now: datetime) -> bool:
    """An acknowledgement of one of the event's stat notifications: the pending steps are
    cancelled in the acknowledgement's transaction (the timer checks again when it fires)."""
    result = await session.execute(
        update(EscalationTimer)
        .where(EscalationTimer.event_id == event_id, EscalationTimer.status == PENDING)
        .values(status=STOPPED, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)
