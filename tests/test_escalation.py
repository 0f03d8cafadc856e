"""Escalation of an unanswered stat acute change: 副主治医, then 急変時入院先, then the office.

The timer's clock is the test's: it is moved past the window instead of waiting ten minutes.
DB-level tests route an event with the real routing service (the router's transaction) and
fire the timers with ``Escalator``; the live tests post over HTTP through the whole hub.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from consumers.routing.service import route_events
from consumers.routing.table import DEFAULT_ROUTING
from producers.models import OutboxRecord
from renkei.crypto import keyring_of
from renkei.db import utcnow
from renkei.settings import Settings
from schemas.audit import AuditAction, AuditRecord, audit_record_aad, batch_from_bytes
from schemas.events import EventType
from schemas.notification_record import NotificationRecord
from schemas.topics import AUDIT_TOPIC, NOTIFICATION_TOPIC
from services.app import create_app
from services.auth.service import Principal, Role
from services.demo_region import region_resources
from services.escalation.models import COMPLETED, PENDING, STOPPED, EscalationTimer
from services.escalation.timer import Escalator
from services.intake.models import Event
from services.notifications import service as inbox
from services.notifications.models import Notification
from services.registry import service as registry
from tests.conftest import Api
from tests.hubtools import event_id_of, headers, load_region, message, sender_of, wait_routed

WINDOW = timedelta(minutes=10)
ZONE = ZoneInfo("Asia/Tokyo")
NURSE = "misawa-visiting-nurse-1"  # the sender of the acute change (care team A)
PRIMARY = "PractitionerRole/dr-misawa-role"
BACKUP = "Organization/towada-naika-clinic"
HOSPITAL = "Organization/misawa-general-hospital"
OFFICE = "Organization/region-office"
CHAIN = [(1, BACKUP), (2, HOSPITAL), (3, OFFICE)]


class Clock:
    """The timer's now, moved by the test."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def forward(self, delta: timedelta) -> None:
        self.now += delta


def settings(tmp_path: Path, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "var", **extra)


async def load(sessions) -> None:  # noqa: ANN001
    async with sessions() as session:
        for resource in region_resources():
            await registry.write(session, resource["resourceType"], resource, resource["id"])
        await session.commit()


async def routed_event(
    sessions,  # noqa: ANN001
    event_type: EventType = EventType.ACUTE_CHANGE,
    patient: str = "p01",
    sender: str = NURSE,
    break_glass: bool = False,
) -> str:
    """An accepted event, routed by the routing service with escalation on (one transaction)."""
    event_id = str(uuid.uuid4())
    async with sessions() as session:
        session.add(
            Event(id=event_id, sender_org_id=sender, message_id=f"m-{event_id}",
                  event_type=event_type.value, status="accepted", patient_id=patient,
                  patient_key=await registry.patient_key(session, patient),
                  accepted_at=utcnow(), bundle={}, content_sha256="0" * 64,
                  break_glass=break_glass)
        )  # fmt: skip
        await session.flush()
        event = await session.get(Event, event_id)
        await route_events(
            session, [event], DEFAULT_ROUTING, ZONE, "opt-in", escalation_window=WINDOW
        )
        await session.commit()
    return event_id


async def escalations(sessions, event_id: str) -> list[tuple[int, str]]:  # noqa: ANN001
    async with sessions() as session:
        rows = await session.execute(
            select(Notification.escalation_step, Notification.recipient)
            .where(Notification.event_id == event_id, Notification.escalation_step > 0)
            .order_by(Notification.escalation_step, Notification.recipient)
        )
        return [tuple(r) for r in rows.all()]


async def audit_records(sessions, action: AuditAction) -> list[AuditRecord]:  # noqa: ANN001
    async with sessions() as session:
        rows = (
            await session.scalars(select(OutboxRecord).where(OutboxRecord.topic == AUDIT_TOPIC))
        ).all()
        records = []
        for row in rows:
            plain = await keyring_of(session).open(session, row.value, audit_record_aad(row.key))
            records += batch_from_bytes(plain)
    return [r for r in records if r.action == action]


async def timer_of(sessions, event_id: str) -> EscalationTimer | None:  # noqa: ANN001
    async with sessions() as session:
        return await session.scalar(
            select(EscalationTimer).where(EscalationTimer.event_id == event_id)
        )


async def acknowledge(sessions, event_id: str, recipient: str, step: int = 0) -> None:  # noqa: ANN001
    """What POST /fhir/Communication/{id}/$acknowledge does for the recipient's caller."""
    async with sessions() as session:
        notification = await session.scalar(
            select(Notification).where(
                Notification.event_id == event_id,
                Notification.recipient == recipient,
                Notification.escalation_step == step,
            )
        )
        assert notification is not None
        org = notification.recipient_org_id
    if recipient.startswith("PractitionerRole/"):
        principal = Principal(org, Role.MEMBER, practitioner_id="dr-misawa")
    else:
        principal = Principal(org, Role.MEMBER)
    async with sessions() as session:
        await inbox.acknowledge(session, principal, notification.id)
        await session.commit()  # the view commits, with the audit record


async def test_acknowledged_in_time_nothing_escalates(db_sessions, tmp_path) -> None:
    await load(db_sessions)
    event_id = await routed_event(db_sessions)
    timer = await timer_of(db_sessions, event_id)
    assert timer is not None and timer.status == PENDING and timer.step == 1
    clock = Clock()
    escalator = Escalator(db_sessions, settings(tmp_path), clock=clock)
    clock.forward(timedelta(minutes=9))
    assert await escalator.fire_due() == 0  # inside the window
    await acknowledge(db_sessions, event_id, PRIMARY)
    assert (await timer_of(db_sessions, event_id)).status == STOPPED
    for _ in range(4):
        clock.forward(WINDOW)
        await escalator.fire_due()
    assert await escalations(db_sessions, event_id) == []
    assert await audit_records(db_sessions, AuditAction.ESCALATION_FIRED) == []


async def test_unanswered_goes_to_backup_hospital_then_office_once_each(
    db_sessions, tmp_path
) -> None:
    await load(db_sessions)
    event_id = await routed_event(db_sessions)
    clock = Clock()
    escalator = Escalator(db_sessions, settings(tmp_path), clock=clock)
    async with db_sessions() as session:
        original = await session.scalar(
            select(Notification.id).where(
                Notification.event_id == event_id, Notification.recipient == PRIMARY
            )
        )
    for fired, expected in enumerate(CHAIN, start=1):
        clock.forward(WINDOW + timedelta(seconds=1))
        assert await escalator.fire_due() == 1
        assert await escalator.fire_due() == 0  # the same now again: nothing twice
        assert await escalations(db_sessions, event_id) == CHAIN[:fired], expected
    clock.forward(WINDOW * 5)
    assert await escalator.fire_due() == 0
    assert (await timer_of(db_sessions, event_id)).status == COMPLETED
    async with db_sessions() as session:
        rows = (
            await session.scalars(
                select(Notification).where(
                    Notification.event_id == event_id, Notification.escalation_step > 0
                )
            )
        ).all()
    assert {n.escalation_of for n in rows} == {original}
    assert {n.priority for n in rows} == {"stat"}
    # On the live stream after the routed ones, in firing order.
    seqs = [n.stream_seq for n in sorted(rows, key=lambda n: n.escalation_step)]
    assert None not in seqs and seqs == sorted(seqs) and len(set(seqs)) == 3
    office = next(n for n in rows if n.recipient == OFFICE)
    assert (office.care_team_role, office.content) == ("region-office", "summary")
    fired = await audit_records(db_sessions, AuditAction.ESCALATION_FIRED)
    assert sorted((r.detail["step"], r.reason) for r in fired) == [
        (1, "consent-permit"), (2, "consent-permit"), (3, "consent-permit")
    ]  # fmt: skip
    assert {r.agent.client for r in fired} == {"hub:escalation"}
    assert {e.reference for r in fired for e in r.entities} >= {
        f"Communication/{n.id}" for n in rows
    }
    # Each step also went out as a notification record, marked as an escalation.
    async with db_sessions() as session:
        outbox = (
            await session.scalars(
                select(OutboxRecord).where(
                    OutboxRecord.topic == NOTIFICATION_TOPIC, OutboxRecord.event_id == event_id
                )
            )
        ).all()
        steps = []
        for row in outbox:
            plain = await keyring_of(session).open(
                session, row.value, f"kafka|notification|{event_id}"
            )
            steps.append(NotificationRecord.from_bytes(plain).escalation_step)
    assert sorted(s for s in steps if s) == [1, 2, 3]


async def test_acknowledged_at_step_two_stops_step_three(db_sessions, tmp_path) -> None:
    await load(db_sessions)
    event_id = await routed_event(db_sessions)
    clock = Clock()
    escalator = Escalator(db_sessions, settings(tmp_path), clock=clock)
    for _ in range(2):
        clock.forward(WINDOW + timedelta(seconds=1))
        await escalator.fire_due()
    assert await escalations(db_sessions, event_id) == CHAIN[:2]
    await acknowledge(db_sessions, event_id, HOSPITAL, step=2)
    for _ in range(3):
        clock.forward(WINDOW)
        await escalator.fire_due()
    assert await escalations(db_sessions, event_id) == CHAIN[:2]
    assert (await timer_of(db_sessions, event_id)).status == STOPPED


async def test_an_acknowledgement_the_timer_did_not_see_still_stops_the_step(
    db_sessions, tmp_path
) -> None:
    """Firing checks again in its own transaction: an acknowledgement written (here, straight
    to the row, as a late commit would be) after the timer was read stops the chain."""
    await load(db_sessions)
    event_id = await routed_event(db_sessions)
    async with db_sessions() as session:
        notification = await session.scalar(
            select(Notification).where(
                Notification.event_id == event_id, Notification.recipient == PRIMARY
            )
        )
        notification.acknowledged_at = utcnow()
        await session.commit()
    clock = Clock()
    clock.forward(WINDOW * 2)
    assert await Escalator(db_sessions, settings(tmp_path), clock=clock).fire_due() == 1
    assert await escalations(db_sessions, event_id) == []
    assert (await timer_of(db_sessions, event_id)).status == STOPPED


async def test_two_timer_loops_fire_each_step_once(db_sessions, tmp_path) -> None:
    await load(db_sessions)
    events = [await routed_event(db_sessions, patient=p) for p in ("p01", "p04", "p05")]
    clock = Clock()
    loops = [Escalator(db_sessions, settings(tmp_path), clock=clock) for _ in range(2)]
    for _ in range(len(CHAIN)):
        clock.forward(WINDOW + timedelta(seconds=1))
        advanced = await asyncio.gather(*(loop.fire_due() for loop in loops))
        assert sum(advanced) == len(events)
    for event_id in events:
        assert await escalations(db_sessions, event_id) == CHAIN
    fired = await audit_records(db_sessions, AuditAction.ESCALATION_FIRED)
    assert len(fired) == len(events) * len(CHAIN)


async def test_routine_and_urgent_never_escalate(db_sessions, tmp_path) -> None:
    await load(db_sessions)
    events = [
        await routed_event(db_sessions, EventType.ADMISSION, sender="misawa-general-hospital"),
        await routed_event(db_sessions, EventType.END_OF_LIFE),
        await routed_event(db_sessions, EventType.DISCHARGE, sender="misawa-general-hospital"),
    ]
    async with db_sessions() as session:
        priorities = set(
            (
                await session.scalars(
                    select(Notification.priority).where(Notification.event_id.in_(events))
                )
            ).all()
        )
    assert priorities == {"routine", "urgent"}
    clock = Clock()
    clock.forward(WINDOW * 10)
    assert await Escalator(db_sessions, settings(tmp_path), clock=clock).fire_due() == 0
    for event_id in events:
        assert await timer_of(db_sessions, event_id) is None
        assert await escalations(db_sessions, event_id) == []


async def test_a_team_without_the_role_falls_through_and_consent_still_decides(
    db_sessions, tmp_path
) -> None:
    """p02's Consent permits; its care team loses its backup physician: step 1 is skipped
    (audited) and the hospital hears at the first window. p03 has no Consent (opt-in): nobody
    was notified, so no chain; with break-glass the physicians and the hospital are told,
    and the region office (no break-glass role) is withheld by the missing Consent."""
    await load(db_sessions)
    async with db_sessions() as session:
        teams = await registry.care_teams_of(session, ["p02"])
        (team,) = teams["p02"]
        team["participant"] = [
            p
            for p in team["participant"]
            if p["role"][0]["coding"][0]["code"] != "backup-physician"
        ]
        await registry.write(session, "CareTeam", team, team["id"])
        await session.commit()
    skipped_event = await routed_event(db_sessions, patient="p02")
    assert await timer_of(db_sessions, await routed_event(db_sessions, patient="p03")) is None
    glass_event = await routed_event(db_sessions, patient="p03", break_glass=True)
    clock = Clock()
    escalator = Escalator(db_sessions, settings(tmp_path), clock=clock)
    for _ in range(3):
        clock.forward(WINDOW + timedelta(seconds=1))
        await escalator.fire_due()
    assert await escalations(db_sessions, skipped_event) == [(2, HOSPITAL), (3, OFFICE)]
    assert (await timer_of(db_sessions, skipped_event)).status == COMPLETED
    skipped = await audit_records(db_sessions, AuditAction.ESCALATION_SKIPPED)
    assert [(r.detail["step"], r.patient) for r in skipped] == [(1, "p02")]
    assert await escalations(db_sessions, glass_event) == [(1, BACKUP), (2, HOSPITAL)]
    async with db_sessions() as session:
        glass = (
            await session.scalars(
                select(Notification).where(
                    Notification.event_id == glass_event, Notification.escalation_step > 0
                )
            )
        ).all()
    assert {(n.break_glass, n.reason) for n in glass} == {(True, "break-glass")}
    withheld = await audit_records(db_sessions, AuditAction.ESCALATION_WITHHELD)
    assert [(r.detail["step"], r.patient, r.reason) for r in withheld] == [(3, "p03", "no-consent")]
    assert (await timer_of(db_sessions, glass_event)).status == COMPLETED


# -- the whole hub ------------------------------------------------------------------------------


async def post_acute_change(live_api, patient: str = "p01") -> str:  # noqa: ANN001
    bundle = message(EventType.ACUTE_CHANGE, patient)
    hub = live_api.hub
    response = await live_api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
    )
    assert response.status_code == 202, response.text
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])
    return event_id


async def test_live_unanswered_escalation_reaches_the_backup_inbox(live_api) -> None:
    """Posted over HTTP, routed by the hub's router (which starts the timer), escalated, read
    by the backup physician as a Communication marked as an escalation, and acknowledged
    there: the chain stops."""
    hub = live_api.hub
    await load_region(hub)
    event_id = await post_acute_change(live_api)
    assert (await timer_of(hub.sessions, event_id)).status == PENDING
    clock = Clock()
    clock.forward(WINDOW + timedelta(seconds=1))
    escalator = Escalator(hub.sessions, hub.settings, clock=clock)
    assert await escalator.fire_due() == 1
    assert await escalations(hub.sessions, event_id) == [(1, BACKUP)]
    backup = headers(hub, BACKUP.removeprefix("Organization/"), "member")
    response = await live_api.client.get(
        "/fhir/Communication", params={"subject": "p01"}, headers=backup
    )
    assert response.status_code == 200, response.text
    entries = [
        e["resource"]
        for e in response.json()["entry"]
        if e["resource"]["identifier"][0]["value"] == event_id
    ]
    marked = [
        r for r in entries if any(x["url"].endswith("/escalation") for x in r.get("extension", []))
    ]
    assert len(entries) == 2 and len(marked) == 1  # the routed one and the escalation
    (escalation,) = marked
    assert "エスカレーション" in escalation["payload"][0]["contentString"]
    response = await live_api.client.post(
        f"/fhir/Communication/{escalation['id']}/$acknowledge", headers=backup
    )
    assert response.status_code == 200, response.text
    assert (await timer_of(hub.sessions, event_id)).status == STOPPED
    clock.forward(WINDOW * 3)
    await escalator.fire_due()
    assert await escalations(hub.sessions, event_id) == [(1, BACKUP)]


async def test_hub_restarted_inside_a_window_still_escalates_once(hub_factory) -> None:
    first = await hub_factory()
    await load_region(first)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(first)), base_url="http://hub"
    ) as client:
        event_id = await post_acute_change(Api(first, client))
    clock = Clock()
    clock.forward(timedelta(minutes=5))  # inside the first window
    assert await Escalator(first.sessions, first.settings, clock=clock).fire_due() == 0
    await first.stop()
    second = await hub_factory()
    clock.forward(timedelta(minutes=6))
    loops = [Escalator(second.sessions, second.settings, clock=clock) for _ in range(2)]
    assert sum(await asyncio.gather(*(loop.fire_due() for loop in loops))) == 1
    assert await loops[0].fire_due() == 0
    assert await escalations(second.sessions, event_id) == [(1, BACKUP)]
