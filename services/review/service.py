"""Break-glass review: the events senders marked as emergencies, for the region office.

Every break-glass use reached people the patient's Consent did not (or did not yet) allow; the
office checks each one was an emergency and marks it reviewed. Reads are two queries whatever
the page size: the events with their reviews, then all their notifications at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import insert_ignore, utcnow
from schemas.audit import AuditEntity, AuditRecord
from services.audit.emit import emit_records
from services.auth.service import Principal
from services.errors import FhirError
from services.intake.models import Event
from services.notifications.models import Notification
from services.review.models import BreakGlassReview


@dataclass(frozen=True)
class BreakGlassEntry:
    event: Event
    review: BreakGlassReview | None
    notifications: list[Notification]


def _events(reviewed: bool | None):
    query = (
        select(Event, BreakGlassReview)
        .outerjoin(BreakGlassReview, BreakGlassReview.event_id == Event.id)
        .where(Event.break_glass.is_(True))
    )
    if reviewed is True:
        query = query.where(BreakGlassReview.event_id.is_not(None))
    elif reviewed is False:
        query = query.where(BreakGlassReview.event_id.is_(None))
    return query


async def _with_notifications(
    session: AsyncSession, rows: list[tuple[Event, BreakGlassReview | None]]
) -> list[BreakGlassEntry]:
    ids = [event.id for event, _ in rows]
    by_event: dict[str, list[Notification]] = {i: [] for i in ids}
    if ids:
        found = await session.scalars(
            select(Notification)
            .where(Notification.event_id.in_(ids))
            .order_by(Notification.recipient)
        )
        for notification in found:
            by_event[notification.event_id].append(notification)
    return [BreakGlassEntry(event, review, by_event[event.id]) for event, review in rows]


async def search(
    session: AsyncSession, reviewed: bool | None, count: int, offset: int
) -> list[BreakGlassEntry]:
    """Newest first; ``reviewed`` False gives the office's to-do list."""
    rows = await session.execute(
        _events(reviewed).order_by(Event.accepted_at.desc(), Event.id).limit(count).offset(offset)
    )
    return await _with_notifications(session, [(e, r) for e, r in rows.all()])


async def get(session: AsyncSession, event_id: str) -> BreakGlassEntry:
    row = (await session.execute(_events(None).where(Event.id == event_id))).first()
    if row is None:
        raise FhirError(404, "not-found", "no break-glass event with this id")
    [entry] = await _with_notifications(session, [(row[0], row[1])])
    return entry


def reviewer(principal: Principal) -> str:
    if principal.practitioner_id:
        return f"Practitioner/{principal.practitioner_id}"
    return f"Organization/{principal.org_id}"


async def mark_reviewed(
    session: AsyncSession,
    principal: Principal,
    event_id: str,
    now: datetime | None = None,
    audit: AuditRecord | None = None,
) -> BreakGlassEntry:
    """Record who reviewed the event and when; a second review changes nothing (the first
    reviewer and time stay, as an audit record should). ``audit``: the break-glass.reviewed
    record (agent and session), committed with the review; the event is filled in here."""
    entry = await get(session, event_id)
    row = {"event_id": event_id, "reviewed_at": now or utcnow(), "reviewed_by": reviewer(principal)}
    await session.execute(insert_ignore(session, BreakGlassReview.__table__, [row], ["event_id"]))
    if audit is not None:
        event = entry.event
        entities = [AuditEntity(f"Bundle/{event.id}", role="3")]
        if event.patient_id:
            entities.append(AuditEntity(f"Patient/{event.patient_id}", role="1"))
        reviewed = dataclasses.replace(
            audit,
            patient=event.patient_id,
            source_org=event.sender_org_id,
            entities=tuple(entities),
            detail={**audit.detail, "first_review": entry.review is None},
        )
        await emit_records(session, [reviewed])
    await session.commit()
    return await get(session, event_id)
