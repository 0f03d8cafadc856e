"""Route events: care team x routing table x consent -> notifications, a batch per transaction.

Idempotent by construction: notifications are unique per (event, recipient) and written with
INSERT ... ON CONFLICT DO NOTHING, so a redelivered record creates nothing new.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, insert, literal, update
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.routing.models import SuppressedDelivery
from consumers.routing.rules import (
    BREAK_GLASS,
    BREAK_GLASS_PRIORITY,
    PRIORITY_RANK,
    ConsentDecision,
    break_glass_applies,
    care_team_members,
    consent_decision,
    due_for,
    sharing_decision,
)
from consumers.routing.table import Route, RoutingTable, content_for
from producers.models import OutboxRecord, encode_headers
from renkei.crypto import DataKeyRef, keyring_of
from renkei.db import UTCDateTime, insert_ignore_many, utcnow
from schemas.audit import AuditAction, AuditAgent, AuditEntity, AuditOutcome, AuditRecord
from schemas.envelope import notification_record_aad
from schemas.events import CareTeamRole, EventType
from schemas.notification_record import NotificationRecord
from schemas.topics import NOTIFICATION_TOPIC, lane_of
from services.audit.emit import HUB_ROUTER, emit_records, hub_agent, new_record
from services.escalation.service import start_escalations
from services.intake.models import Event
from services.notifications.models import Notification
from services.notifications.stream import stamp_stream_order
from services.registry import service as registry

log = logging.getLogger(__name__)
# The router's organization when no region office was given (tools and tests calling it bare).
UNKNOWN_ORG = "unknown"


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


@dataclass
class RoutingLookups:
    """What routing reads from the registry, loaded once for a whole batch of events.

    A batch is one transaction of a few hundred milliseconds at most, so what it reads is as
    current as reading it event by event: a Consent changed before the batch already applies.
    """

    care_teams: dict[str, list[dict]] = field(default_factory=dict)  # patient id -> CareTeams
    consents: dict[str, list[dict]] = field(default_factory=dict)  # patient id -> Consents
    organizations: dict[str, str | None] = field(default_factory=dict)  # PractitionerRole id

    async def load(self, session: AsyncSession, patient_ids: Iterable[str]) -> None:
        """Care teams, consents and the teams' PractitionerRoles of these patients: 3 queries."""
        wanted = set(patient_ids)
        missing = sorted(wanted - set(self.care_teams))
        if missing:
            self.care_teams.update(await registry.care_teams_of(session, missing))
            self.consents.update(await registry.consents_of(session, missing))
        roles = {
            reference.removeprefix("PractitionerRole/")
            for patient in wanted
            for team in self.care_teams.get(patient, [])
            for participant in team.get("participant", [])
            if (reference := (participant.get("member") or {}).get("reference", "")).startswith(
                "PractitionerRole/"
            )
        } - set(self.organizations)
        if roles:
            found = await registry.read_many(session, "PractitionerRole", roles)
            for role_id in roles:
                self.organizations[role_id] = _organization_of_role(found.get(role_id))

    def organization_of(self, reference: str) -> str | None:
        kind, _, ident = reference.partition("/")
        if kind == "Organization":
            return ident
        return self.organizations.get(ident)


def _organization_of_role(role: registry.StoredResource | None) -> str | None:
    if role is None:
        log.warning("care team names an unknown PractitionerRole; skipped")
        return None
    org = ((role.body or {}).get("organization") or {}).get("reference", "")
    return org.removeprefix("Organization/") if org.startswith("Organization/") else None


def recipients(
    event: Event, table: RoutingTable, at: datetime, zone: ZoneInfo, lookups: RoutingLookups
) -> list[Recipient]:
    """Who should hear of the event, before consent: one entry per recipient, highest priority."""
    event_type = EventType(event.event_type)
    row = table.get(event_type, {})
    teams = lookups.care_teams.get(event.patient_id or "", [])
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
        org_id = lookups.organization_of(member.reference)
        if org_id is None or org_id == event.sender_org_id:
            continue  # the sender never receives its own event
        current = chosen.get(member.reference)
        if current is None or PRIORITY_RANK[route.priority] > PRIORITY_RANK[current.priority]:
            chosen[member.reference] = Recipient(
                member.reference, org_id, member.role, route.priority, route.content, emergency
            )
    return sorted(chosen.values(), key=lambda r: r.reference)


async def route_event(
    session: AsyncSession,
    event: Event,
    table: RoutingTable,
    zone: ZoneInfo,
    consent_default: str,
    region_org: str | None = None,
) -> RoutingOutcome:
    """Route one event (caller commits); see ``route_events``."""
    return (
        await route_events(session, [event], table, zone, consent_default, region_org=region_org)
    )[0]


async def route_events(
    session: AsyncSession,
    events: list[Event],
    table: RoutingTable,
    zone: ZoneInfo,
    consent_default: str,
    lookups: RoutingLookups | None = None,
    escalation_window: timedelta | None = None,
    region_org: str | None = None,
) -> list[RoutingOutcome]:
    """Write the events' notifications and suppressions and mark them routed (caller commits).

    One outcome per event, in order. The events are marked routed first, in one UPDATE that
    takes their rows: when two routers get the same event at once (a rebalance, a redelivery)
    the second finds it routed and writes nothing. ``routed_at`` grows strictly in the order
    given, so it still witnesses the order of one patient's events within a batch.

    ``escalation_window``: each acute change given a stat notification gets its escalation
    timer in this same transaction (services/escalation), due after the window; None: none.

    Each recipient decision (delivered, withheld, break-glass) is one audit record, the router
    (``region_org``'s hub:router) as agent, all added in this transaction at once: an event
    routed again writes nothing, so its decisions are not recorded twice.
    """
    if not events:
        return []
    lookups = lookups or RoutingLookups()
    await lookups.load(session, [e.patient_id or "" for e in events])
    routed_at = _routing_times(len(events))
    claimed = await _mark_routed(session, events, routed_at)
    outcomes: list[RoutingOutcome] = []
    notifications: list[dict] = []
    suppressed: list[dict] = []
    audits: list[AuditRecord] = []
    agent = hub_agent(region_org or UNKNOWN_ORG, HUB_ROUTER)
    for event, now in zip(events, routed_at, strict=True):
        if event.id not in claimed:
            outcomes.append(RoutingOutcome(0, 0, already_routed=True))
            continue
        # Once per event even when the batch holds it twice (a record the broker delivered
        # twice lands next to itself): the second is already routed, by this transaction.
        claimed.discard(event.id)
        mine, withheld = _decide(event, table, zone, consent_default, lookups, now, agent, audits)
        notifications += mine
        suppressed += withheld
        outcomes.append(
            RoutingOutcome(
                len(mine),
                len(withheld),
                already_routed=False,
                priorities=tuple(n["priority"] for n in mine),
            )
        )
    if notifications:
        # The live stream's order, under a lock held to the commit.
        await stamp_stream_order(session, notifications)
        await session.execute(
            insert_ignore_many(
                session, Notification.__table__, ["event_id", "recipient", "escalation_step"]
            ),
            notifications,
        )
    if suppressed:
        await session.execute(
            insert_ignore_many(session, SuppressedDelivery.__table__, ["event_id", "recipient"]),
            suppressed,
        )
    by_event: dict[str, list[dict]] = {}
    for n in notifications:
        by_event.setdefault(n["event_id"], []).append(n)
    records: list[dict] = []
    keyring = keyring_of(session)
    for event in {e.id: e for e in events}.values():
        if event.id in by_event:
            key = await keyring.patient_dek(session, event.patient_id or "")
            records += _notification_records(session, event, by_event[event.id], key)
    if records:
        await session.execute(insert(OutboxRecord.__table__), records)  # Core executemany
    await emit_records(session, audits)
    if escalation_window is not None:
        await start_escalations(session, notifications, escalation_window)
    return outcomes


def _routing_times(count: int) -> list[datetime]:
    """``count`` instants from now, each after the one before (order within a batch)."""
    now = utcnow()
    return [now + timedelta(microseconds=i) for i in range(count)]


async def _mark_routed(
    session: AsyncSession, events: list[Event], routed_at: list[datetime]
) -> set[str]:
    """Mark the events routed where nobody has yet; the ids this transaction marked."""
    if len(events) == 1:
        marked = await session.execute(
            update(Event)
            .where(Event.id == events[0].id, Event.routed_at.is_(None))
            .values(routed_at=routed_at[0])
        )
        return {events[0].id} if marked.rowcount else set()
    times = {
        event.id: literal(at, UTCDateTime()) for event, at in zip(events, routed_at, strict=True)
    }
    result = await session.execute(
        update(Event)
        .where(Event.id.in_(list(times)), Event.routed_at.is_(None))
        .values(routed_at=case(times, value=Event.id))
        .returning(Event.id)
        .execution_options(synchronize_session=False)
    )
    return set(result.scalars().all())


def _decide(
    event: Event,
    table: RoutingTable,
    zone: ZoneInfo,
    consent_default: str,
    lookups: RoutingLookups,
    now: datetime,
    agent: AuditAgent,
    audits: list[AuditRecord],
) -> tuple[list[dict], list[dict]]:
    """The event's notifications and suppressed deliveries (rows to insert), no I/O; one
    audit record per recipient decision appended to ``audits``."""
    at = event.occurred_at or event.accepted_at
    event_type = EventType(event.event_type)
    # Consent is read at routing time: a Consent changed after the event was accepted but
    # before it is routed already applies to it.
    consents = lookups.consents.get(event.patient_id or "", [])
    notifications, suppressed = [], []
    for recipient in recipients(event, table, at, zone, lookups):
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
            audits.append(_decision_record(agent, event, recipient, decision, None))
            continue
        due = due_for(event_type, recipient.role, recipient.priority, at, zone)
        notification_id = str(uuid.uuid4())
        audits.append(_decision_record(agent, event, recipient, decision, notification_id))
        notifications.append(
            {
                "id": notification_id,
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
    return notifications, suppressed


def _decision_record(
    agent: AuditAgent,
    event: Event,
    recipient: Recipient,
    decision: ConsentDecision,
    notification_id: str | None,
) -> AuditRecord:
    """One recipient decision as an audit record (IHE AuthZ-Consent: the Consent that decided
    is an entity). ``notification_id`` None: withheld."""
    if notification_id is None:
        action, outcome = AuditAction.ROUTING_WITHHELD, AuditOutcome.MINOR_FAILURE
    elif decision.reason == BREAK_GLASS:
        action, outcome = AuditAction.ROUTING_BREAK_GLASS, AuditOutcome.SUCCESS
    else:
        action, outcome = AuditAction.ROUTING_DELIVERED, AuditOutcome.SUCCESS
    entities = [AuditEntity(f"Bundle/{event.id}", role="3")]
    if event.patient_id:
        entities.append(AuditEntity(f"Patient/{event.patient_id}", role="1"))
    if notification_id is not None:
        entities.append(AuditEntity(f"Communication/{notification_id}", role="4"))
    if decision.consent_id:
        entities.append(AuditEntity(f"Consent/{decision.consent_id}", role="4"))
    return new_record(
        agent,
        action,
        outcome=outcome,
        patient=event.patient_id,
        source_org=event.sender_org_id,
        entities=entities,
        # The rule that decided (consent-deny, no-consent, break-glass, consent-permit ...).
        reason=decision.reason,
        detail={
            "recipient": recipient.reference,
            "recipient_org": recipient.org_id,
            "care_team_role": recipient.role.value,
            "event_type": event.event_type,
        },
    )


def _notification_records(
    session: AsyncSession, event: Event, notifications: list[dict], key: DataKeyRef
) -> list[dict]:
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
            sent=n["sent"].isoformat(),
            due_at=n["due_at"].isoformat() if n["due_at"] else None,
            content=n["content"],
            break_glass=n["break_glass"],
            escalation_step=n.get("escalation_step", 0),
            escalation_of=n.get("escalation_of"),
        )
        rows.append(
            {
                "event_id": event.id,
                "topic": NOTIFICATION_TOPIC,
                "key": record.patient_key,
                "value": keyring.seal(key, record.to_bytes(), notification_record_aad(event.id)),
                "headers": encode_headers(record.headers(key.key_id)),
                "created_at": n["sent"],
                "attempts": 0,
                # A stat notification goes out in the urgent relay lane, before any bulk.
                "lane": lane_of(NOTIFICATION_TOPIC, n["priority"]),
            }
        )
    return rows
