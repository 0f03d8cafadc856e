"""Consent, break-glass and minimum necessary through the whole hub (real broker, real DB).

Consents are changed over the registry's HTTP surface between events: routing reads them when
it routes, so the next event follows the new rule.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.communication import Communication
from sqlalchemy import select

from schemas.canonical import (
    ACT_REASON_SYSTEM,
    BREAK_GLASS_EXTENSION,
    CONTENT_LEVEL_EXTENSION,
    EVENT_SYSTEM,
)
from schemas.events import EventType
from services.app import create_app
from services.demo_region import PATIENT_ID_SYSTEM, PATIENTS, consent, patient
from services.notifications.models import Notification
from tests.hubtools import (
    accept,
    headers,
    load_region,
    message,
    notifications_of,
    suppressed_of,
    wait_routed,
)

OFFICE = "region-office"
CLINIC_DOCTOR = "PractitionerRole/dr-misawa-role"  # primary physician, at misawa-home-clinic
BACKUP = "Organization/towada-naika-clinic"
NURSE = "Organization/misawa-visiting-nurse-1"
CARE_MANAGER = "PractitionerRole/cm-sato-role"
PHARMACY = "Organization/chuo-pharmacy"
DAY_SERVICE = "Organization/sakura-day-service"
HOSPITAL = "Organization/misawa-general-hospital"
# Team A's admission recipients (the hospital sends it, so it hears nothing itself).
ADMISSION_TEAM_A = {CLINIC_DOCTOR, NURSE, CARE_MANAGER, PHARMACY, DAY_SERVICE}
REASON = "デイサービス利用中に意識レベル低下、家族と連絡つかず"


async def put(live_api, resource: dict) -> None:
    hub = live_api.hub
    response = await live_api.client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers=headers(hub, OFFICE, "region-admin"),
    )
    assert response.status_code in (200, 201), response.text


async def routed(live_api, bundle: dict) -> str:
    event_id = await accept(live_api.hub, live_api.client, bundle)
    await wait_routed(live_api.hub, [event_id])
    return event_id


def with_provision(pid: str, **provision) -> dict:
    resource = consent(pid, "permit")
    resource["provision"].update(provision)
    return resource


IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                   "code": "IRCP"}]}  # fmt: skip


def org(reference: str) -> dict:
    """A Consent actor: the information recipient ``reference``."""
    return {"role": IRCP, "reference": {"reference": reference}}


def deny(*references: str) -> dict:
    return {"type": "deny", "actor": [org(r) for r in references]}


def event_code(*events: EventType) -> list[dict]:
    return [{"coding": [{"system": EVENT_SYSTEM, "code": e.value}]} for e in events]


async def decisions(hub, event_id: str) -> dict[str, tuple[str, bool, str]]:
    """recipient -> (reason, break_glass, content) of the event's notifications."""
    async with hub.sessions() as session:
        rows = await session.execute(
            select(Notification).where(Notification.event_id == event_id)
        )
        return {n.recipient: (n.reason, n.break_glass, n.content) for (n,) in rows.all()}


async def communication(live_api, org_id: str, event_id: str, practitioner=None) -> dict:
    listing = await live_api.client.get(
        "/fhir/Communication", headers=headers(live_api.hub, org_id, "member", practitioner)
    )
    assert listing.status_code == 200, listing.text
    [found] = [
        e["resource"]
        for e in listing.json()["entry"]
        if e["resource"]["identifier"][0]["value"] == event_id
    ]
    Communication.model_validate(found)
    return found


def attachments(resource: dict) -> list[dict]:
    return [p["contentAttachment"] for p in resource["payload"] if "contentAttachment" in p]


def content_level(resource: dict) -> str:
    [level] = [e["valueCode"] for e in resource["extension"] if e["url"] == CONTENT_LEVEL_EXTENSION]
    return level


# --- consent changes, deny by event type, narrowing, periods --------------------------------


async def test_a_consent_change_applies_to_the_next_event(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    first = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert set(await notifications_of(hub, first)) == ADMISSION_TEAM_A

    await put(live_api, with_provision("p01", provision=[deny(PHARMACY)]))
    second = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert set(await notifications_of(hub, second)) == ADMISSION_TEAM_A - {PHARMACY}
    assert await suppressed_of(hub, second) == {PHARMACY: "consent-deny-organization"}

    await put(live_api, with_provision("p01"))  # the deny withdrawn
    third = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert set(await notifications_of(hub, third)) == ADMISSION_TEAM_A
    assert await suppressed_of(hub, third) == {}
    assert {r for r, _b, _c in (await decisions(hub, third)).values()} == {"consent-permit"}


async def test_deny_by_event_type_and_by_organization_for_one_event_type(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    await put(
        live_api,
        with_provision(
            "p01",
            provision=[
                {"type": "deny", "code": event_code(EventType.ADMISSION)},
                {"type": "deny", "actor": [org(PHARMACY)], "code": event_code(EventType.DISCHARGE)},
            ],
        ),
    )
    admission = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert await notifications_of(hub, admission) == {}
    assert await suppressed_of(hub, admission) == dict.fromkeys(
        ADMISSION_TEAM_A, "consent-deny-event-type"
    )
    discharge = await routed(live_api, message(EventType.DISCHARGE, "p01"))
    assert await suppressed_of(hub, discharge) == {
        PHARMACY: "consent-deny-organization-event-type"
    }
    assert set(await notifications_of(hub, discharge)) == ADMISSION_TEAM_A - {PHARMACY}


async def test_permits_naming_actors_narrow_sharing(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    # The doctor is a PractitionerRole: decided by the organization it works for.
    actors = [org("Organization/misawa-home-clinic"), org(NURSE)]
    await put(live_api, with_provision("p01", provision=[{"type": "permit", "actor": actors}]))
    event_id = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert set(await notifications_of(hub, event_id)) == {CLINIC_DOCTOR, NURSE}
    assert await suppressed_of(hub, event_id) == dict.fromkeys(
        [CARE_MANAGER, PHARMACY, DAY_SERVICE], "not-in-permitted-actors"
    )


async def test_expired_consent_shares_nothing(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    await put(live_api, with_provision("p01", period={"start": "2025-04-01", "end": "2026-03-31"}))
    event_id = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert await notifications_of(hub, event_id) == {}
    assert await suppressed_of(hub, event_id) == dict.fromkeys(ADMISSION_TEAM_A, "consent-expired")


async def test_a_consent_naming_an_unknown_event_code_is_refused(live_api) -> None:
    await load_region(live_api.hub)
    typo = with_provision(
        "p01", provision=[{"type": "deny", "code": [{"coding": [{"system": EVENT_SYSTEM,
                                                                 "code": "admision"}]}]}]
    )  # fmt: skip
    response = await live_api.client.put(
        "/fhir/Consent/consent-p01",
        json=typo,
        headers=headers(live_api.hub, OFFICE, "region-admin"),
    )
    assert response.status_code == 400, response.text
    [issue] = response.json()["issue"]
    assert issue["code"] == "code-invalid"
    assert issue["expression"] == ["Consent.provision.provision[0].code[0].coding[0].code"]


# --- break-glass ---------------------------------------------------------------------------

# The day service finds the person in an acute state: it sends with the number it gives them.
DAY_SERVICE_SYSTEM = f"{PATIENT_ID_SYSTEM}0270000101"


async def day_service_knows(live_api, pid: str) -> None:
    row = next(r for r in PATIENTS if r[0] == pid)
    resource = patient(row)
    resource["identifier"].append({"system": DAY_SERVICE_SYSTEM, "value": f"S-{pid}"})
    await put(live_api, resource)


def emergency(pid: str, reason: str | None = REASON) -> dict:
    bundle = message(EventType.ACUTE_CHANGE, pid)
    header = bundle["entry"][0]["resource"]
    header["sender"] = {"reference": DAY_SERVICE}
    if reason is not None:
        header["extension"] = [{"url": BREAK_GLASS_EXTENSION, "valueString": reason}]
    row = next(r for r in PATIENTS if r[0] == pid)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [{"system": DAY_SERVICE_SYSTEM, "value": f"S-{pid}"}]
            entry["resource"]["birthDate"] = row[5]
    return bundle


async def test_break_glass_reaches_the_emergency_roles_without_consent(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    await day_service_knows(live_api, "p03")  # p03 has no Consent on file

    plain = await routed(live_api, emergency("p03", reason=None))
    assert await notifications_of(hub, plain) == {}  # without break-glass: nobody

    event_id = await routed(live_api, emergency("p03"))
    emergency_roles = {CLINIC_DOCTOR, BACKUP, NURSE, HOSPITAL}
    assert await notifications_of(hub, event_id) == dict.fromkeys(emergency_roles, "stat")
    assert await decisions(hub, event_id) == dict.fromkeys(
        emergency_roles, ("break-glass", True, "full")
    )
    # The care manager is not an emergency role: consent (none) still decides.
    assert await suppressed_of(hub, event_id) == {CARE_MANAGER: "no-consent"}

    hospital = await communication(live_api, "misawa-general-hospital", event_id)
    assert {"system": ACT_REASON_SYSTEM, "code": "BTG", "display": "break the glass"} in hospital[
        "meta"
    ]["security"]
    assert hospital["priority"] == "stat"
    assert hospital["sender"] == {"reference": DAY_SERVICE}
    [bundle] = attachments(hospital)
    assert json.loads(base64.b64decode(bundle["data"]))["entry"][0]["resource"]["extension"][0][
        "valueString"
    ] == REASON
    doctor = await communication(live_api, "misawa-home-clinic", event_id, "dr-misawa")
    assert doctor["meta"]["security"][0]["code"] == "BTG"
    cm = await live_api.client.get(
        "/fhir/Communication", headers=headers(hub, "misawa-care-plan-1", "member", "cm-sato")
    )
    assert cm.json()["total"] == 0

    # The region office's list: sender, time, reason, recipients; then reviewed.
    office = headers(hub, OFFICE, "region-admin", "office-staff-1")
    listing = await live_api.client.get("/admin/break-glass", headers=office)
    assert listing.status_code == 200, listing.text
    [entry] = listing.json()["entry"]
    audit = entry["resource"]
    AuditEvent.model_validate(audit)
    assert audit["id"] == event_id
    assert audit["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert audit["purposeOfEvent"][0]["text"] == REASON
    assert audit["agent"][0]["who"] == {"reference": DAY_SERVICE}
    assert audit["agent"][0]["requestor"] is True
    assert {a["who"]["reference"] for a in audit["agent"][1:]} == emergency_roles
    assert {a["extension"][0]["valueCode"] for a in audit["agent"][1:]} == {"break-glass"}
    assert {"what": {"reference": "Patient/p03"}} in audit["entity"]
    assert audit["recorded"] and "extension" not in audit

    reviewed = await live_api.client.post(f"/admin/break-glass/{event_id}/$review", headers=office)
    assert reviewed.status_code == 200, reviewed.text
    [review] = reviewed.json()["extension"]
    parts = {p["url"]: p for p in review["extension"]}
    assert parts["reviewedBy"]["valueReference"] == {"reference": "Practitioner/office-staff-1"}
    # A second review keeps the first reviewer and time.
    again = await live_api.client.post(
        f"/admin/break-glass/{event_id}/$review", headers=headers(hub, OFFICE, "region-admin")
    )
    assert again.json()["extension"] == reviewed.json()["extension"]
    todo = await live_api.client.get("/admin/break-glass?reviewed=false", headers=office)
    assert todo.json()["entry"] == []
    done = await live_api.client.get("/admin/break-glass?reviewed=true", headers=office)
    assert [e["resource"]["id"] for e in done.json()["entry"]] == [event_id]


async def test_break_glass_overrides_a_deny_for_emergency_roles_only(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    await day_service_knows(live_api, "p01")
    # The care manager is a PractitionerRole: a deny of its organization withholds from it.
    await put(
        live_api,
        with_provision("p01", provision=[deny(BACKUP, "Organization/misawa-care-plan-1")]),
    )
    event_id = await routed(live_api, emergency("p01"))
    assert await decisions(hub, event_id) == {
        BACKUP: ("break-glass", True, "full"),  # over the deny: the emergency decides
        CLINIC_DOCTOR: ("consent-permit", True, "full"),  # consent allowed it anyway
        NURSE: ("consent-permit", True, "full"),
        HOSPITAL: ("consent-permit", True, "full"),
    }
    assert await suppressed_of(hub, event_id) == {CARE_MANAGER: "consent-deny-organization"}


async def test_break_glass_review_is_for_the_region_office_only(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)  # tokens name registered organizations only
    for org_id, role in (("misawa-general-hospital", "org-admin"), (OFFICE, "auditor"),
                         ("misawa-home-clinic", "member")):  # fmt: skip
        hdrs = headers(hub, org_id, role)
        listing = await live_api.client.get("/admin/break-glass", headers=hdrs)
        assert listing.status_code == 403, (org_id, role)
        assert listing.json()["resourceType"] == "OperationOutcome"
    office = headers(hub, OFFICE, "region-admin")
    missing = await live_api.client.post("/admin/break-glass/nope/$review", headers=office)
    assert missing.status_code == 404 and missing.json()["issue"][0]["code"] == "not-found"
    bad = await live_api.client.get("/admin/break-glass?reviewed=maybe", headers=office)
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["reviewed"]


async def test_break_glass_on_an_admission_answers_422(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    bundle = message(EventType.ADMISSION, "p01")
    bundle["entry"][0]["resource"]["extension"] = [
        {"url": BREAK_GLASS_EXTENSION, "valueString": REASON}
    ]
    response = await live_api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(hub, "misawa-general-hospital")
    )
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[0].resource.extension[0]"]
    assert REASON not in response.text


# --- minimum necessary ---------------------------------------------------------------------


async def test_summary_or_full_content_per_role(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    event_id = await routed(live_api, message(EventType.ADMISSION, "p01"))
    assert {r: c for r, (_reason, _bg, c) in (await decisions(hub, event_id)).items()} == {
        CLINIC_DOCTOR: "full", NURSE: "full", CARE_MANAGER: "full", PHARMACY: "full",
        DAY_SERVICE: "summary",
    }  # fmt: skip
    day_service = await communication(live_api, "sakura-day-service", event_id)
    assert attachments(day_service) == []
    assert content_level(day_service) == "summary"
    texts = [p["contentString"] for p in day_service["payload"]]
    assert any("入院" in t and "三沢 花子" in t for t in texts), texts  # event, name, what is due
    assert day_service["sender"] == {"reference": "Organization/misawa-general-hospital"}
    assert day_service["sent"]
    assert "security" not in day_service["meta"]
    nurse = await communication(live_api, "misawa-visiting-nurse-1", event_id)
    assert content_level(nurse) == "full"
    [attachment] = attachments(nurse)
    assert attachment["contentType"] == "application/fhir+json"


async def _routed_with_file(hub_factory, tmp_path: Path, table: dict) -> tuple[dict, dict]:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(table), encoding="utf-8")
    hub = await hub_factory(routing_file=path)
    await load_region(hub)
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        event_id = await accept(hub, client, message(EventType.ADMISSION, "p01"))
        await wait_routed(hub, [event_id])
    return await notifications_of(hub, event_id), await decisions(hub, event_id)


async def test_routing_file_object_form_and_string_form(hub_factory, tmp_path: Path) -> None:
    table = {
        "admission": {
            "care-service": {"priority": "urgent", "content": "full"},  # new object form
            "pharmacy": {"priority": "routine", "content": "summary"},
            "care-manager": "stat",  # the first format still works
        }
    }
    priorities, decided = await _routed_with_file(hub_factory, tmp_path, table)
    assert priorities == {DAY_SERVICE: "urgent", PHARMACY: "routine", CARE_MANAGER: "stat"}
    assert {r: c for r, (_reason, _bg, c) in decided.items()} == {
        DAY_SERVICE: "full", PHARMACY: "summary", CARE_MANAGER: "full"
    }


def test_demo_region_team_has_an_emergency_hospital() -> None:
    from services.demo_region import TEAM_A, TEAM_B

    for team in (TEAM_A, TEAM_B):
        assert team["emergency-hospital"] == HOSPITAL


async def test_opt_out_region_shares_without_consent_but_not_over_a_deny(hub_factory) -> None:
    hub = await hub_factory(consent_default="opt-out")
    await load_region(hub)
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        no_consent = await accept(hub, client, message(EventType.ADMISSION, "p03"))
        denied = await accept(hub, client, message(EventType.ADMISSION, "p02"))
        await wait_routed(hub, [no_consent, denied])
    assert {r for r, _bg, _c in (await decisions(hub, no_consent)).values()} == {"opt-out-default"}
    assert set(await notifications_of(hub, no_consent)) == ADMISSION_TEAM_A
    assert await suppressed_of(hub, denied) == {PHARMACY: "consent-deny-organization"}
