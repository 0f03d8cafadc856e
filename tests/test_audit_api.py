"""GET /fhir/AuditEvent: BALP-shaped AuditEvents, every search parameter, each auditor's scope,
auditors only, strict parameters, and every query itself audited once."""

from __future__ import annotations

import base64

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from schemas.audit import AuditAction
from services.audit.fhir import ACTION_SYSTEM, BALP, JTI_PREFIX
from tests.audit_samples import CLINIC, HOSPITAL, OTHER, REGION, emitted, store_trail

URL = "/fhir/AuditEvent"


@pytest.fixture
async def trail(api):
    return await store_trail(api.hub)


def auditor(api, org: str = REGION) -> dict:
    return api.headers(org, "auditor")


async def search(api, query: str, org: str = REGION) -> dict:
    response = await api.client.get(f"{URL}?{query}", headers=auditor(api, org))
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    return bundle


def ids(bundle: dict) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle["entry"]]


def names(trail, bundle: dict) -> set[str]:
    by_id = {record.id: name for name, record in trail.items()}
    return {by_id[i] for i in ids(bundle)}


def coding(element: dict) -> tuple[str, str]:
    return element["system"], element["code"]


# --------------------------------------------------------------------------------------------
# BALP shape


async def get_event(api, trail, name: str) -> dict:
    response = await api.client.get(f"{URL}/{trail[name].id}", headers=auditor(api))
    assert response.status_code == 200, response.text
    event = response.json()
    AuditEvent.model_validate(event)  # R4(B) AuditEvent: cardinalities, datatypes
    return event


def agent_by(event: dict, reference: str) -> dict:
    (agent,) = [a for a in event["agent"] if a["who"].get("reference") == reference]
    return agent


def entity_refs(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]


async def test_a_patient_read_is_balp_patient_read_with_user_org_token_and_network(
    api, trail
) -> None:
    event = await get_event(api, trail, "read")
    assert event["meta"]["profile"] == [f"{BALP}.PatientRead"]
    assert coding(event["type"])[1] == "rest"
    assert [s["code"] for s in event["subtype"]] == ["read", "patient.read"]
    assert (event["action"], event["outcome"]) == ("R", "0")
    assert event["recorded"].startswith("2026-11-02T10:00:00+09:00")
    user = agent_by(event, "PractitionerRole/pr-a1")
    assert user["requestor"] is True
    assert user["policy"] == [f"{JTI_PREFIX}jti-a1"]
    assert user["network"] == {"address": "10.0.0.7", "type": "2"}
    assert user["type"]["coding"][0]["code"] == "UserOauthAgent"
    organization = agent_by(event, f"Organization/{CLINIC}")
    assert organization["requestor"] is False
    assert event["source"]["observer"]["display"] == "Renkei Hub"
    (patient,) = event["entity"]
    assert patient["what"]["reference"] == "Patient/p1"
    assert coding(patient["role"])[1] == "1" and coding(patient["type"])[1] == "1"


async def test_a_patient_search_names_the_parameters_base64_never_values(api, trail) -> None:
    event = await get_event(api, trail, "query")
    assert event["meta"]["profile"] == [f"{BALP}.Query"]  # no single patient: the basic Query
    assert (event["action"], [s["code"] for s in event["subtype"]]) == (
        "E", ["search-type", "patient.query"],
    )  # fmt: skip
    (query,) = event["entity"]
    assert coding(query["role"])[1] == "24" and coding(query["type"])[1] == "2"
    assert base64.b64decode(query["query"]).decode() == "identifier,birthdate"


async def test_routing_decisions_are_authz_consent_events_with_the_consent(api, trail) -> None:
    delivered = await get_event(api, trail, "delivered")
    assert delivered["meta"]["profile"] == [f"{BALP}.AuthZconsent"]
    assert coding(delivered["type"]) == ("http://dicom.nema.org/resources/ontology/DCM", "110113")
    assert delivered["subtype"][0]["code"] == "AuthZ-Consent"
    assert delivered["action"] == "E" and delivered["outcomeDesc"] == "consent: permit"
    assert entity_refs(delivered) == ["Patient/p1", "Bundle/e1", "Communication/n1", "Consent/c1"]
    consent = [e for e in delivered["entity"] if e["what"]["reference"] == "Consent/c1"][0]
    assert coding(consent["type"])[1] == "Consent"
    bundle = [e for e in delivered["entity"] if e["what"]["reference"] == "Bundle/e1"][0]
    assert bundle["what"]["identifier"]["value"] == "e1"  # the event id, as break-glass shows
    (source,) = delivered["extension"]
    assert source["valueReference"]["reference"] == f"Organization/{HOSPITAL}"
    # The router acted: the hub's worker is the requesting application.
    (router,) = [a for a in delivered["agent"] if "identifier" in a["who"]]
    assert router["who"]["identifier"]["value"] == "hub:router" and router["requestor"] is True

    withheld = await get_event(api, trail, "withheld")
    assert withheld["outcome"] == "4"
    assert withheld["outcomeDesc"] == "consent: deny for this organization"
    assert "Consent/c2" in entity_refs(withheld)

    break_glass = await get_event(api, trail, "break_glass")
    assert break_glass["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert break_glass["subtype"][1] == {"system": ACTION_SYSTEM, "code": "routing.break-glass"}


async def test_notification_read_consent_change_and_message_shapes(api, trail) -> None:
    read = await get_event(api, trail, "notification_read")
    assert (read["action"], read["meta"]["profile"]) == ("R", [f"{BALP}.PatientRead"])
    assert entity_refs(read) == ["Patient/p1", "Communication/n1"]
    change = await get_event(api, trail, "consent_change")
    assert (change["action"], change["subtype"][0]["code"]) == ("U", "update")
    assert change["meta"]["profile"] == [f"{BALP}.PatientUpdate"]
    assert agent_by(change, "PractitionerRole/pr-office")["requestor"] is True
    message = await get_event(api, trail, "message")
    assert (message["action"], message["subtype"][0]["code"]) == ("C", "operation")
    # A system client with no person: the client is the requestor and carries the token.
    (client,) = [a for a in message["agent"] if "identifier" in a["who"]]
    assert client["requestor"] is True and client["policy"] == [f"{JTI_PREFIX}jti-h"]
    assert client["who"]["identifier"]["value"] == "client-h"
    assert agent_by(message, f"Organization/{HOSPITAL}")["requestor"] is False


async def test_tokens_and_sign_in_are_login_events(api, trail) -> None:
    token = await get_event(api, trail, "token")
    assert coding(token["type"])[1] == "110114"
    assert [s["code"] for s in token["subtype"]] == ["110122", "token.issued"]
    (detail,) = token["extension"]
    assert detail["extension"] == [{"url": "lifetime_seconds", "valueString": "300"}]
    failed = await get_event(api, trail, "signin_failed")
    assert (failed["outcome"], failed["subtype"][1]["code"]) == ("4", "signin.failed")
    # Nobody known but the organization: it is the requestor, with the address.
    (organization,) = failed["agent"]
    assert organization["requestor"] is True
    assert organization["network"]["address"] == "192.0.2.9"


async def test_every_action_kind_validates_as_an_r4_audit_event(api) -> None:
    from services.audit.emit import hub_agent, new_record
    from services.audit.fhir import to_audit_event

    for action in AuditAction:
        AuditEvent.model_validate(to_audit_event(new_record(hub_agent(REGION, "hub:cli"), action)))


# --------------------------------------------------------------------------------------------
# Search parameters

SEARCHES = [
    ("patient=Patient/p1", {"read", "delivered", "notification_read", "consent_change", "message"}),
    ("patient=p1", {"read", "delivered", "notification_read", "consent_change", "message"}),
    ("patient=p2,p3", {"withheld", "break_glass"}),
    ("agent=Organization/clinic-a", {"read", "query", "notification_read"}),
    ("agent=PractitionerRole/pr-a1", {"read", "query", "notification_read"}),
    ("agent=client-h", {"token", "message"}),
    ("agent=Device/hub:router", {"delivered", "withheld", "break_glass"}),
    ("agent=Organization/org-c,PractitionerRole/pr-office",
     {"signin_failed", "other", "consent_change"}),
    ("entity=Consent/c1", {"delivered", "consent_change"}),
    ("entity=Bundle/e1", {"delivered", "message"}),
    ("entity=Communication/n1,Communication/n3", {"delivered", "break_glass", "notification_read"}),
    ("entity-type=Consent", {"delivered", "withheld", "consent_change"}),
    ("date=2026-11-05", {"withheld"}),
    ("date=ge2026-11-05&date=lt2026-11-07", {"withheld", "break_glass"}),
    ("date=gt2026-11-09", {"signin_failed", "message", "other"}),
    ("date=le2026-11-02", {"read"}),
    ("date=lt2026-11-03", {"read"}),
    ("date=2026-12", {"message", "other"}),
    ("date=2025", set()),
    ("date=eq2026-11-02T10:00:00%2B09:00", {"read"}),
    ("date=2026-11-02T01:00:00Z", {"read"}),
    ("date=ge2026-11-02T10:00:00 09:00&date=le2026-11-02T10:00:01%2B09:00", {"read"}),
    ("date=ge2026-11-02T10:00:00.000001%2B09:00", {
        "query", "delivered", "withheld", "break_glass", "notification_read", "consent_change",
        "token", "signin_failed", "message", "other"}),
    ("type=110114", {"token", "signin_failed"}),
    ("type=http://dicom.nema.org/resources/ontology/DCM|110113",
     {"delivered", "withheld", "break_glass"}),
    ("subtype=read", {"read", "notification_read", "other"}),
    ("subtype=routing.break-glass", {"break_glass"}),
    ("subtype=AuthZ-Consent", {"delivered", "withheld", "break_glass"}),
    ("subtype=110122", {"token", "signin_failed"}),
    ("subtype=search-type", {"query"}),
    ("outcome=4", {"withheld", "signin_failed"}),
    ("action=R", {"read", "notification_read", "other"}),
    ("action=C,U", {"consent_change", "message"}),
    ("patient=p1&type=rest&date=ge2026-11-03", {"notification_read", "consent_change", "message"}),
]  # fmt: skip


@pytest.mark.parametrize(("query", "expected"), SEARCHES, ids=[q for q, _ in SEARCHES])
async def test_search_parameter(api, trail, query: str, expected: set[str]) -> None:
    bundle = await search(api, f"{query}&_count=500")
    assert names(trail, bundle) == expected
    assert bundle["total"] == len(expected)


async def test_who_saw_patient_x_is_one_query(api, trail) -> None:
    bundle = await search(api, "patient=Patient/p1&action=R")
    assert names(trail, bundle) == {"read", "notification_read"}
    people = {
        a["who"]["reference"]
        for e in bundle["entry"]
        for a in e["resource"]["agent"]
        if a["requestor"]
    }
    assert people == {"PractitionerRole/pr-a1"}


async def test_sort_by_date_both_ways_newest_first_by_default(api, trail) -> None:
    by_time = [r.id for r in sorted(trail.values(), key=lambda r: r.recorded)]
    assert ids(await search(api, "_count=500")) == by_time[::-1]
    assert ids(await search(api, "_sort=-date&_count=500")) == by_time[::-1]
    assert ids(await search(api, "_sort=date&_count=500")) == by_time


async def test_paging_follows_next_and_previous_links(api, trail) -> None:
    first = await search(api, "_sort=date&_count=4&outcome=0")
    assert first["total"] == 9 and len(first["entry"]) == 4
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links
    seen = ids(first)
    page = first
    while "next" in (links := {link["relation"]: link["url"] for link in page["link"]}):
        url = links["next"]
        assert url.startswith(api.hub.settings.resolved_public_base_url + URL)
        assert "outcome=0" in url and "_sort=date" in url
        page = await search(api, url.split("?", 1)[1])
        assert "previous" in {link["relation"] for link in page["link"]}
        seen += ids(page)
    expected = [r.id for r in sorted(trail.values(), key=lambda r: r.recorded) if r.outcome == "0"]
    assert seen == expected
    last_previous = {link["relation"]: link["url"] for link in page["link"]}["previous"]
    assert "_offset=4" in last_previous


MALFORMED = [
    ("name=x", "name"),
    ("patient=", "patient"),
    ("patient=Organization/x", "patient"),
    ("patient=p 1", "patient"),
    ("agent=Location/x", "agent"),
    ("entity=c1", "entity"),
    ("entity-type=consent", "entity-type"),
    ("date=2026-13-01", "date"),
    ("date=2026-02-30", "date"),
    ("date=ge2026-11-01T10:00", "date"),
    ("date=yesterday", "date"),
    ("date=ne2026-11-01", "date"),
    ("type=nope", "type"),
    ("subtype=nope", "subtype"),
    ("action=X", "action"),
    ("outcome=3", "outcome"),
    ("_sort=status", "_sort"),
    ("_count=0", "_count"),
    ("_count=abc", "_count"),
    ("_count=501", "_count"),
    ("_offset=-1", "_offset"),
    ("patient=p1&patient=p2", "patient"),
    ("outcome=0,", "outcome"),
]


@pytest.mark.parametrize(("query", "parameter"), MALFORMED, ids=[q for q, _ in MALFORMED])
async def test_a_malformed_parameter_is_a_400_naming_it(
    api, trail, query: str, parameter: str
) -> None:
    before = len(await emitted(api.hub, AuditAction.AUDIT_QUERIED))
    response = await api.client.get(f"{URL}?{query}", headers=auditor(api))
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [parameter]
    assert "p 1" not in response.text and "yesterday" not in response.text  # no values echoed
    # A refused query read nothing: no audit.queried record for it.
    assert len(await emitted(api.hub, AuditAction.AUDIT_QUERIED)) == before


async def test_a_malformed_or_unknown_id(api, trail) -> None:
    response = await api.client.get(f"{URL}/not%20an%20id", headers=auditor(api))
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    response = await api.client.get(f"{URL}/00000000-0000-4000-8000-000000000000",
                                    headers=auditor(api))  # fmt: skip
    assert response.status_code == 404


# --------------------------------------------------------------------------------------------
# Who sees what


async def test_the_region_auditor_sees_the_whole_region(api, trail) -> None:
    assert names(trail, await search(api, "_count=500")) == set(trail)


async def test_an_organization_auditor_sees_its_own_agents_and_its_own_data(api, trail) -> None:
    clinic = await search(api, "_count=500", org=CLINIC)
    assert names(trail, clinic) == {"read", "query", "notification_read"}
    hospital = await search(api, "_count=500", org=HOSPITAL)
    # What its own client did, and who accessed what it sent (routing, the clinic's read).
    assert names(trail, hospital) == {
        "token", "message", "delivered", "withheld", "break_glass", "notification_read",
    }  # fmt: skip
    # Parameters narrow within the scope, never widen it.
    assert names(trail, await search(api, "patient=p9", org=HOSPITAL)) == set()
    other = await search(api, "patient=p9", org=OTHER)
    assert names(trail, other) == {"other"}
    # A record out of scope reads as absent.
    response = await api.client.get(f"{URL}/{trail['other'].id}", headers=auditor(api, CLINIC))
    assert response.status_code == 404
    response = await api.client.get(
        f"{URL}/{trail['notification_read'].id}", headers=auditor(api, HOSPITAL)
    )
    assert response.status_code == 200


@pytest.mark.parametrize("role", ["member", "org-admin", "region-admin", "system"])
async def test_only_auditors_review_the_trail(api, trail, role: str) -> None:
    org = REGION if role == "region-admin" else CLINIC
    for url in (URL, f"{URL}/{trail['read'].id}"):
        response = await api.client.get(url, headers=api.headers(org, role))
        assert response.status_code == 403, (role, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert await emitted(api.hub, AuditAction.AUDIT_QUERIED) == []


async def test_no_token_is_401(api, trail) -> None:
    for url in (URL, f"{URL}/{trail['read'].id}"):
        assert (await api.client.get(url)).status_code == 401


# --------------------------------------------------------------------------------------------
# Reviewing is audited


async def test_each_query_emits_one_audit_queried_record_with_names_only(api, trail) -> None:
    await search(api, "patient=Patient/p1&date=ge2026-11-01&date=lt2026-12-01", org=HOSPITAL)
    (searched,) = await emitted(api.hub, AuditAction.AUDIT_QUERIED)
    assert (searched.agent.org, searched.agent.role) == (HOSPITAL, "auditor")
    assert searched.agent.token is not None and searched.agent.network is not None
    (entity,) = searched.entities
    assert (entity.reference, entity.role, entity.query) == ("AuditEvent", "24", "date,patient")
    assert b"p1" not in searched.to_bytes() and b"2026-11-01" not in searched.to_bytes()

    await api.client.get(f"{URL}/{trail['read'].id}", headers=auditor(api))
    await search(api, "_count=2")
    queried = await emitted(api.hub, AuditAction.AUDIT_QUERIED)
    assert len(queried) == 3
    assert queried[1].entities[0].reference == f"AuditEvent/{trail['read'].id}"
    assert queried[1].agent.org == REGION
    assert queried[2].entities[0].query == "_count"
