"""Read receipts for the sender: per recipient of one message, delivered / read (既読) /
acknowledged (対応済), when and by whom; deliveries withheld by consent shown as such.

Answered as a FHIR Parameters resource (GET /fhir/MessageHeader/{event id}/$status), one
``recipient`` parameter per notification, one ``withheld`` per withheld delivery.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.routing.models import SuppressedDelivery
from renkei.settings import Settings
from schemas.audit import AuditAction, AuditEntity
from schemas.canonical import EVENT_ID_SYSTEM
from schemas.events import CARE_TEAM_ROLE_SYSTEM, EVENT_SYSTEM
from services.audit.emit import emit, principal_agent
from services.auth import policy
from services.auth.service import Principal
from services.errors import FhirError
from services.intake.models import Event
from services.notifications.communication import receipt_status
from services.notifications.models import Notification
from services.registry import service as registry

DELIVERED, READ, ACKNOWLEDGED, WITHHELD = "delivered", "read", "acknowledged", "withheld"


receipt_state = receipt_status  # one definition: the Communication shows the same


async def _event_for(
    session: AsyncSession, principal: Principal, event_id: str, settings: Settings
) -> Event:
    """The message, if the caller sent it (or is the region office); otherwise 404 whether or
    not it exists, so that nobody learns of another organization's messages."""
    event = await session.get(Event, event_id) if len(event_id) <= 64 else None
    if event is None or not policy.may_see_receipts(principal, event.sender_org_id, settings):
        raise FhirError(404, "not-found", "no such MessageHeader")
    return event


async def _by_whom(session: AsyncSession, who: str | None, org_id: str) -> dict[str, Any] | None:
    """The person as their PractitionerRole at the recipient organization (the token named
    the Practitioner or the role), or the organization when nobody in particular."""
    if who is None:
        return None
    kind, _, identifier = who.partition("/")
    if kind == "Practitioner":
        roles = await registry.practitioner_role_ids(session, org_id, identifier)
        if roles:
            return {"reference": f"PractitionerRole/{sorted(roles)[0]}"}
    return {"reference": who}


def _escalation_parts(notification: Notification) -> list[dict[str, Any]]:
    """Filled once notifications can be escalations (issue 15, escalation): a notification
    with ``escalation_of`` (the Communication it escalates) and ``escalation_step``."""
    of = getattr(notification, "escalation_of", None)
    parts: list[dict[str, Any]] = [{"name": "escalation", "valueBoolean": of is not None}]
    if of is not None:
        parts.append(
            {"name": "escalationOf", "valueReference": {"reference": f"Communication/{of}"}}
        )
        step = getattr(notification, "escalation_step", None)
        if step is not None:
            parts.append({"name": "escalationStep", "valueInteger": int(step)})
    return parts


async def _recipient(session: AsyncSession, notification: Notification) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "recipient", "valueReference": {"reference": notification.recipient}},
        {
            "name": "communication",
            "valueReference": {"reference": f"Communication/{notification.id}"},
        },
        {"name": "status", "valueCode": receipt_state(notification)},
        {
            "name": "careTeamRole",
            "valueCoding": {
                "system": CARE_TEAM_ROLE_SYSTEM,
                "code": notification.care_team_role,
            },
        },
        {"name": "priority", "valueCode": notification.priority},
        {"name": "delivered", "valueInstant": notification.sent.isoformat()},
    ]
    org = notification.recipient_org_id
    if notification.read_at is not None:
        parts.append({"name": "read", "valueInstant": notification.read_at.isoformat()})
        by = await _by_whom(session, notification.read_by, org)
        if by is not None:
            parts.append({"name": "readBy", "valueReference": by})
    if notification.acknowledged_at is not None:
        parts.append(
            {"name": "acknowledged", "valueInstant": notification.acknowledged_at.isoformat()}
        )
        by = await _by_whom(session, notification.acknowledged_by, org)
        if by is not None:
            parts.append({"name": "acknowledgedBy", "valueReference": by})
    parts += _escalation_parts(notification)
    return {"name": "recipient", "part": parts}


def _withheld(delivery: SuppressedDelivery, detailed: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "status", "valueCode": WITHHELD}]
    if detailed:
        parts += [
            {"name": "recipient", "valueReference": {"reference": delivery.recipient}},
            {"name": "reason", "valueCode": delivery.reason},
            {"name": "decided", "valueInstant": delivery.decided_at.isoformat()},
        ]
    return {"name": "withheld", "part": parts}


async def receipts(
    session: AsyncSession, principal: Principal, event_id: str, settings: Settings
) -> dict[str, Any]:
    """The Parameters resource for one message; audited as ``receipts.read`` (caller commits)."""
    event = await _event_for(session, principal, event_id, settings)
    notifications = list(
        await session.scalars(
            select(Notification)
            .where(Notification.event_id == event.id)
            .order_by(Notification.sent, Notification.recipient)
        )
    )
    withheld = list(
        await session.scalars(
            select(SuppressedDelivery)
            .where(SuppressedDelivery.event_id == event.id)
            .order_by(SuppressedDelivery.recipient)
        )
    )
    detailed = policy.sees_withheld_recipients(principal, settings)
    states = [receipt_state(n) for n in notifications]
    summary = [
        {"name": state, "valueInteger": states.count(state)}
        for state in (DELIVERED, READ, ACKNOWLEDGED)
    ] + [{"name": WITHHELD, "valueInteger": len(withheld)}]
    parameters: list[dict[str, Any]] = [
        {"name": "event", "valueIdentifier": {"system": EVENT_ID_SYSTEM, "value": event.id}},
        {"name": "eventType", "valueCoding": {"system": EVENT_SYSTEM, "code": event.event_type}},
        {"name": "sender", "valueReference": {"reference": f"Organization/{event.sender_org_id}"}},
        {"name": "accepted", "valueInstant": event.accepted_at.isoformat()},
        {"name": "routed", "valueBoolean": event.routed_at is not None},
        {"name": "summary", "part": summary},
    ]
    parameters += [await _recipient(session, n) for n in notifications]
    parameters += [_withheld(w, detailed) for w in withheld]
    await emit(
        session,
        principal_agent(principal),
        AuditAction.RECEIPTS_READ,
        patient=event.patient_id,
        source_org=event.sender_org_id,
        entities=[AuditEntity(f"Bundle/{event.id}")],
    )
    return {"resourceType": "Parameters", "parameter": parameters}
