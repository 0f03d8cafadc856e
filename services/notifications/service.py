"""Notification queries and receipts: what a caller may see, and 既読 / 対応済."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import utcnow
from services.auth.service import Principal
from services.errors import FhirError
from services.escalation.service import STAT, stop_escalation
from services.intake.models import Event
from services.intake.service import event_bundle
from services.notifications.communication import FORGOTTEN_PATIENT, UNNAMED_PATIENT, Shown
from services.notifications.models import Notification
from services.registry import service as registry


async def audience(session: AsyncSession, principal: Principal) -> list[str]:
    """The recipient references a caller reads for: the organization, and its own role(s).

    An organization token sees what is addressed to the organization; a practitioner-scoped
    token also sees what is addressed to that person's PractitionerRole at the organization.
    """
    references = [f"Organization/{principal.org_id}"]
    if principal.practitioner_id:
        roles = await registry.practitioner_role_ids(
            session, principal.org_id, principal.practitioner_id
        )
        references += [f"PractitionerRole/{role}" for role in roles]
    return references


@dataclass(frozen=True)
class NotificationFilter:
    status: str | None = None  # "in-progress" (not yet acknowledged) or "completed" (対応済)
    received_missing: bool | None = None  # True: not yet read (既読 not set); False: read
    category: str | None = None
    subject: str | None = None  # Patient id
    since: datetime | None = None
    priority: str | None = None


def visible(references: list[str], org_id: str) -> Select:
    """(Notification, Event) rows addressed to ``references`` at the caller's organization."""
    return (
        select(Notification, Event)
        .join(Event, Event.id == Notification.event_id)
        .where(Notification.recipient_org_id == org_id, Notification.recipient.in_(references))
    )


def _status_clause(status: str):
    if status == "completed":
        return Notification.acknowledged_at.is_not(None)
    if status == "in-progress":
        return Notification.acknowledged_at.is_(None)
    raise FhirError(400, "value", "status must be in-progress or completed", "status")


async def search(
    session: AsyncSession,
    principal: Principal,
    filters: NotificationFilter,
    count: int,
    offset: int,
) -> tuple[list[tuple[Notification, Event]], int]:
    references = await audience(session, principal)
    query = visible(references, principal.org_id)
    if filters.status:
        query = query.where(or_(*[_status_clause(s) for s in filters.status.split(",")]))
    if filters.received_missing is not None:
        read = (
            Notification.read_at.is_(None)
            if filters.received_missing
            else Notification.read_at.is_not(None)
        )
        query = query.where(read)
    if filters.category:
        query = query.where(Notification.category.in_(filters.category.split(",")))
    if filters.priority:
        query = query.where(Notification.priority.in_(filters.priority.split(",")))
    if filters.subject:
        query = query.where(Notification.patient_id == filters.subject.removeprefix("Patient/"))
    if filters.since:
        query = query.where(Notification.sent >= filters.since)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.execute(
        query.order_by(Notification.sent.desc(), Notification.id.desc()).limit(count).offset(offset)
    )
    return [(n, e) for n, e in rows.all()], int(total or 0)


async def get(
    session: AsyncSession, principal: Principal, notification_id: str
) -> tuple[Notification, Event]:
    """One notification the caller may see; another organization's is simply not there (404)."""
    references = await audience(session, principal)
    row = (
        await session.execute(
            visible(references, principal.org_id).where(Notification.id == notification_id)
        )
    ).first()
    if row is None:
        raise FhirError(404, "not-found", "no such Communication")
    return row[0], row[1]


def _who(principal: Principal) -> str:
    if principal.practitioner_id:
        return f"Practitioner/{principal.practitioner_id}"
    return f"Organization/{principal.org_id}"


async def mark_read(session: AsyncSession, principal: Principal, notification_id: str):
    """The 既読 receipt (the caller commits it, with its audit record)."""
    notification, event = await get(session, principal, notification_id)
    if notification.read_at is None:
        notification.read_at = utcnow()
        notification.read_by = _who(principal)
    return notification, event


async def acknowledge(session: AsyncSession, principal: Principal, notification_id: str):
    """The 対応済 receipt (the caller commits it, with its audit record)."""
    notification, event = await get(session, principal, notification_id)
    if notification.acknowledged_at is None:
        now = utcnow()
        notification.read_at = notification.read_at or now
        notification.read_by = notification.read_by or _who(principal)
        notification.acknowledged_at = now
        notification.acknowledged_by = _who(principal)
        if notification.priority == STAT:
            # Someone is acting on the acute change: nobody else needs to be chased.
            await stop_escalation(session, notification.event_id, now)
    return notification, event


async def shown(session: AsyncSession, rows: list[tuple[Notification, Event]]) -> list[Shown]:
    """For each (notification, event): the patient as the registry names them, and the
    message, both decrypted; a forgotten patient shows a placeholder and no message."""
    patients = await registry.read_many(session, "Patient", (n.patient_id for n, _ in rows))
    result = []
    for notification, event in rows:
        patient = patients.get(notification.patient_id)
        if patient is None or patient.forgotten:
            result.append(Shown(FORGOTTEN_PATIENT, None))
            continue
        name = registry.patient_name(patient) or UNNAMED_PATIENT
        result.append(Shown(name, await event_bundle(session, event)))
    return result
