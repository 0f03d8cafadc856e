"""Route one event: care team x routing table x consent -> notifications, in one transaction.

Idempotent by construction: notifications are unique per (event, recipient) and written with
INSERT ... ON CONFLICT DO NOTHING, so a redelivered record creates nothing new.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.routing.models import SuppressedDelivery
from consumers.routing.rules import (
    BREAK_GLASS_PRIORITY,
    PRIORITY_RANK,
    break_glass_applies,
    care_team_members,
    consent_decision,
    due_for,
    sharing_decision,
)
from consumers.routing.table import Route, RoutingTable, content_for
from producers.models import OutboxRecord, encode_headers
from renkei.crypto import DataKeyRef, keyring_of
from renkei.db import insert_ignore, utcnow
from schemas.envelope import notification_record_aad
from schemas.events import CareTeamRole, EventType
from schemas.notification_record import NotificationRecord
from schemas.topics import NOTIFICATION_TOPIC
from services.intake.models import Event
from services.notifications.models import Notification
from services.registry import service as registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipient:
    reference: str
    org_id: str
    role: CareTeamRole
    priority: str
    content: str  # full | summary (minimum necessary, per role)
    break_glass: bool = False  # an emergency role of a break-glass acute change


@dataclass(frozen=True)
class RoutingOutcome:
    notified: int
    suppressed: int
    already_routed: bool
    # One entry per notification written (for the metrics: notifications per priority).
    priorities: tuple[str, ...] = ()


async def recipients(
    session: AsyncSession, event: Event, table: RoutingTable, at: datetime, zone: ZoneInfo
) -> list[Recipient]:
    """Who should hear of the event, before consent: one entry per recipient, highest priority."""
    event_type = EventType(event.event_type)
    row = table.get(event_type, {})
    teams = await registry.care_teams(session, event.patient_id or "")
    chosen: dict[str, Recipient] = {}
    for member in care_team_members(teams, at, zone):
        route = row.get(member.role)
        emergency = break_glass_applies(event_type, event.break_glass, member.role)
        if emergency:
            # Break-glass roles hear of the emergency at once, in the routing table or not
            # (the emergency hospital is not in the acute-change row by default).
            route = Route(BREAK_GLASS_PRIORITY, content_for(table, event_type, member.role))
        if route is None:
            continue
        org_id = await _organization_of(session, member.reference)
        if org_id is None or org_id == event.sender_org_id:
            continue  # the sender never receives its own event
        current = chosen.get(member.reference)
        if current is None or PRIORITY_RANK[route.priority] > PRIORITY_RANK[current.priority]:
            chosen[member.reference] = Recipient(
                member.reference, org_id, member.role, route.priority, route.content, emergency
            )
    return sorted(chosen.values(), key=lambda r: r.reference)


async def _organization_of(session: AsyncSession, reference: str) -> str | None:
    kind, _, ident = reference.partition("/")
    if kind == "Organization":
        return ident
    role = await registry.read(session, "PractitionerRole", ident)
    if role is None:
        log.warning("care team names an unknown PractitionerRole; skipped")
        return None
    org = ((role.body or {}).get("organization") or {}).get("reference", "")
    return org.removeprefix("Organization/") if org.startswith("Organization/") else None


async def route_event(
    session: AsyncSession,
    event: Event,
    table: RoutingTable,
    zone: ZoneInfo,
    consent_default: str,
) -> RoutingOutcome:
    """Write the event's notifications and suppressions and mark it routed (caller commits).

    The event is marked routed first: that UPDATE takes the row, so when two routers get the
    same event at once (a rebalance, a redelivery) the second finds it routed and writes nothing.
    """
    now = utcnow()
    marked = await session.execute(
        update(Event).where(Event.id == event.id, Event.routed_at.is_(None)).values(routed_at=now)
    )
    if marked.rowcount == 0:
        return RoutingOutcome(0, 0, already_routed=True)
    at = event.occurred_at or event.accepted_at
    event_type = EventType(event.event_type)
    # Consent is read now, at routing time: a Consent changed after the event was accepted
    # but before it is routed already applies to it.
    consents = await registry.consents(session, event.patient_id or "")
    notifications, suppressed = [], []
    for recipient in await recipients(session, event, table, at, zone):
        decision = sharing_decision(
            consent_decision(
                consents, recipient.org_id, now, zone, consent_default, event_type,
                recipient.reference,
            ),
            event_type,
            event.break_glass,
            recipient.role,
        )  # fmt: skip
        if not decision.permitted:
            suppressed.append(
                {
                    "event_id": event.id,
                    "recipient": recipient.reference,
                    "reason": decision.reason,
                    "decided_at": now,
                }
            )
            continue
        due = due_for(EventType(event.event_type), recipient.role, recipient.priority, at, zone)
        notifications.append(
            {
                "id": str(uuid.uuid4()),
                "event_id": event.id,
                "recipient": recipient.reference,
                "recipient_org_id": recipient.org_id,
                "care_team_role": recipient.role.value,
                "category": event.event_type,
                "priority": recipient.priority,
                "patient_id": event.patient_id,
                "sent": now,
                "due_at": due.at,
                "content": recipient.content,
                "break_glass": recipient.break_glass,
                "reason": decision.reason,
            }
        )
    if notifications:
        await session.execute(
            insert_ignore(session, Notification.__table__, notifications, ["event_id", "recipient"])
        )
        key = await keyring_of(session).patient_dek(session, event.patient_id or "")
        session.add_all(_notification_records(session, event, notifications, now, key))
    if suppressed:
        await session.execute(
            insert_ignore(
                session, SuppressedDelivery.__table__, suppressed, ["event_id", "recipient"]
            )
        )
    return RoutingOutcome(
        len(notifications),
        len(suppressed),
        already_routed=False,
        priorities=tuple(n["priority"] for n in notifications),
    )


def _notification_records(
    session: AsyncSession,
    event: Event,
    notifications: list[dict],
    now: datetime,
    key: DataKeyRef,
) -> list[OutboxRecord]:
    """One ``renkei.notification`` record per recipient, through the outbox like the events,
    sealed under the patient's data key."""
    keyring = keyring_of(session)
    rows = []
    for n in notifications:
        record = NotificationRecord(
            notification_id=n["id"],
            event_id=event.id,
            event_type=event.event_type,
            patient_key=event.patient_key or "",
            recipient=n["recipient"],
            care_team_role=n["care_team_role"],
            priority=n["priority"],
            sent=now.isoformat(),
            due_at=n["due_at"].isoformat() if n["due_at"] else None,
            content=n["content"],
            break_glass=n["break_glass"],
        )
        rows.append(
            OutboxRecord(
                event_id=event.id,
                topic=NOTIFICATION_TOPIC,
                key=record.patient_key,
                value=keyring.seal(key, record.to_bytes(), notification_record_aad(event.id)),
                headers=encode_headers(record.headers(key.key_id)),
                created_at=now,
            )
        )
    return rows
