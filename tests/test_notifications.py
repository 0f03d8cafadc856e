"""Notifications as FHIR Communication: search, read, 既読 / 対応済, and who may see what.

Every test drives the whole hub (broker, relay, router): events are posted over HTTP and read
back once routed.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from fhir.resources.R4B.communication import Communication

from schemas.events import EventType
from tests.hubtools import (
    HOSPITAL,
    event_id_of,
    headers,
    load_region,
    message,
    sender_of,
    wait_routed,
)

LIST = "/fhir/Communication"
EVENT_SYSTEM = "https://renkei-hub.example.jp/fhir/CodeSystem/event"
# Care team A (p01-p05): the visiting-nurse station receives as an organization; the care
# manager is addressed as a person (PractitionerRole/cm-sato-role).
NURSE = "misawa-visiting-nurse-1"
CARE_PLAN = "misawa-care-plan-1"
TOKYO = ZoneInfo("Asia/Tokyo")


async def post_routed(live_api, event: EventType, patient: str = "p01") -> tuple[str, dict]:
    """Post one event and wait until the router has written its notifications."""
    bundle = message(event, patient)
    hub = live_api.hub
    response = await live_api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
    )
    assert response.status_code == 202, response.text
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])
    return event_id, bundle


def reader(live_api, org: str = NURSE, practitioner: str | None = None) -> dict:
    return headers(live_api.hub, org, "member", practitioner)


async def search(live_api, hdrs: dict, **params) -> dict:
    response = await live_api.client.get(LIST, params=params, headers=hdrs)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    return bundle


def event_ids(bundle: dict) -> list[str]:
    return [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]]


def instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def assert_outcome(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code


async def test_searchset_newest_first_with_total(live_api) -> None:
    await load_region(live_api.hub)
    first, _ = await post_routed(live_api, EventType.ADMISSION)
    second, _ = await post_routed(live_api, EventType.DISCHARGE)
    bundle = await search(live_api, reader(live_api))
    assert bundle["total"] == 2
    assert event_ids(bundle) == [second, first]
    sent = [instant(e["resource"]["sent"]) for e in bundle["entry"]]
    assert sent[0] > sent[1]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["search"] == {"mode": "match"}
        assert entry["fullUrl"].endswith(f"/fhir/Communication/{resource['id']}")
        assert resource["recipient"] == [{"reference": f"Organization/{NURSE}"}]
    # The sender hears nothing of its own events.
    assert (await search(live_api, reader(live_api, HOSPITAL)))["total"] == 0


async def test_communication_shape(live_api) -> None:
    await load_region(live_api.hub)
    event_id, posted = await post_routed(live_api, EventType.ADMISSION)
    [entry] = (await search(live_api, reader(live_api)))["entry"]
    communication = entry["resource"]
    assert communication["resourceType"] == "Communication"
    assert communication["status"] == "in-progress"
    assert communication["priority"] == "routine"  # admission -> visiting nurse: routine
    [category] = communication["category"]
    assert category["coding"][0]["system"] == EVENT_SYSTEM
    assert category["coding"][0]["code"] == "admission"
    assert communication["subject"] == {"reference": "Patient/p01"}
    assert communication["recipient"] == [{"reference": f"Organization/{NURSE}"}]
    assert communication["sender"] == {"reference": f"Organization/{HOSPITAL}"}
    assert communication["identifier"][0]["value"] == event_id
    sent = instant(communication["sent"])
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=2)
    assert "received" not in communication

    texts = [p["contentString"] for p in communication["payload"] if "contentString" in p]
    assert any("入院" in text and "三沢 花子" in text for text in texts), texts
    [attachment] = [
        p["contentAttachment"] for p in communication["payload"] if "contentAttachment" in p
    ]
    assert attachment["contentType"] == "application/fhir+json"
    assert json.loads(base64.b64decode(attachment["data"])) == posted

    model = Communication.model_validate(communication)
    assert model.status == "in-progress"
    assert model.subject.reference == "Patient/p01"

    read = await live_api.client.get(f"{LIST}/{communication['id']}", headers=reader(live_api))
    assert read.status_code == 200
    assert read.json() == communication


async def test_filters(live_api) -> None:
    await load_region(live_api.hub)
    admission_p01, _ = await post_routed(live_api, EventType.ADMISSION, "p01")
    discharge_p01, _ = await post_routed(live_api, EventType.DISCHARGE, "p01")
    admission_p04, _ = await post_routed(live_api, EventType.ADMISSION, "p04")
    nurse = reader(live_api)

    async def ids(**params) -> list[str]:
        bundle = await search(live_api, nurse, **params)
        assert bundle["total"] == len(bundle["entry"])
        return event_ids(bundle)

    assert await ids() == [admission_p04, discharge_p01, admission_p01]
    assert await ids(category="admission") == [admission_p04, admission_p01]
    assert await ids(category="discharge") == [discharge_p01]
    system_and_code = "https://renkei-hub.example.jp/fhir/CodeSystem/event|discharge"
    assert await ids(category=system_and_code) == [discharge_p01]
    assert await ids(category="acute-change") == []
    assert await ids(subject="Patient/p01") == [discharge_p01, admission_p01]
    assert await ids(subject="Patient/p04") == [admission_p04]
    assert await ids(subject="Patient/p02") == []
    # discharge -> visiting nurse is urgent (first visit on the discharge day), admission routine.
    assert await ids(priority="urgent") == [discharge_p01]
    assert await ids(priority="routine") == [admission_p04, admission_p01]
    assert await ids(priority="stat") == []
    assert await ids(category="admission", subject="Patient/p01") == [admission_p01]

    listing = await search(live_api, nurse)
    everything = {e["resource"]["identifier"][0]["value"]: e["resource"] for e in listing["entry"]}
    # _since: a future instant gives none; the second notification's own sent gives it and later.
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(_since=future) == []
    assert await ids(_since=everything[discharge_p01]["sent"]) == [admission_p04, discharge_p01]
    assert await ids(_since="2000-01-01T00:00:00Z") == [admission_p04, discharge_p01, admission_p01]
    # A "+09:00" offset sent unencoded (as curl users write it) arrives as a space.
    tokyo = instant(everything[discharge_p01]["sent"]).astimezone(TOKYO)
    raw = await live_api.client.get(f"{LIST}?_since={tokyo.isoformat()}", headers=nurse)
    assert raw.status_code == 200, raw.text
    assert event_ids(raw.json()) == [admission_p04, discharge_p01]
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-20T10:00:00"):
        response = await live_api.client.get(LIST, params={"_since": bad}, headers=nurse)
        assert_outcome(response, 400, "value")
        assert response.json()["issue"][0]["expression"] == ["_since"]

    # status is FHIR EventStatus: in-progress until $acknowledge (対応済) makes it completed;
    # $read (既読) sets `received`, searched with the standard `received:missing` modifier.
    assert await ids(status="in-progress") == [admission_p04, discharge_p01, admission_p01]
    assert await ids(**{"received:missing": "false"}) == []
    read = await live_api.client.post(
        f"{LIST}/{everything[admission_p01]['id']}/$read", headers=nurse
    )
    assert read.status_code == 200
    ack = await live_api.client.post(
        f"{LIST}/{everything[discharge_p01]['id']}/$acknowledge", headers=nurse
    )
    assert ack.status_code == 200
    assert await ids(status="in-progress") == [admission_p04, admission_p01]
    assert await ids(status="completed") == [discharge_p01]
    assert await ids(status="in-progress,completed") == [
        admission_p04,
        discharge_p01,
        admission_p01,
    ]
    assert await ids(**{"received:missing": "false"}) == [discharge_p01, admission_p01]
    assert await ids(**{"received:missing": "true"}) == [admission_p04]
    assert await ids(status="in-progress", **{"received:missing": "false"}) == [admission_p01]
    for bad in ({"status": "done"}, {"status": "received"}, {"received:missing": "maybe"}):
        response = await live_api.client.get(LIST, params=bad, headers=nurse)
        assert_outcome(response, 400, "value")


async def test_paging_with_count_offset_and_next_link(live_api) -> None:
    await load_region(live_api.hub)
    posted = [
        (await post_routed(live_api, event, patient))[0]
        for event, patient in [
            (EventType.ADMISSION, "p01"),
            (EventType.DISCHARGE, "p01"),
            (EventType.ADMISSION, "p04"),
        ]
    ]
    nurse = reader(live_api)
    page1 = await search(live_api, nurse, _count=2, category="admission,discharge")
    assert page1["total"] == 3
    assert event_ids(page1) == [posted[2], posted[1]]
    links = {link["relation"]: link["url"] for link in page1["link"]}
    assert "previous" not in links
    query = parse_qs(urlsplit(links["next"]).query)
    assert query["_offset"] == ["2"]
    assert query["_count"] == ["2"]
    assert query["category"] == ["admission,discharge"]  # the filters carry over

    response = await live_api.client.get(links["next"], headers=nurse)
    assert response.status_code == 200, response.text
    page2 = response.json()
    assert page2["total"] == 3
    assert event_ids(page2) == [posted[0]]
    links2 = {link["relation"]: link["url"] for link in page2["link"]}
    assert "next" not in links2
    assert parse_qs(urlsplit(links2["previous"]).query)["_offset"] == ["0"]

    beyond = await search(live_api, nurse, _count=2, _offset=10)
    assert (beyond["total"], beyond["entry"]) == (3, [])
    assert_outcome(
        await live_api.client.get(LIST, params={"_count": 0}, headers=nurse), 400, "invalid"
    )
    assert_outcome(
        await live_api.client.get(LIST, params={"_offset": -1}, headers=nurse), 400, "invalid"
    )


async def test_read_and_acknowledge_are_idempotent(live_api) -> None:
    await load_region(live_api.hub)
    await post_routed(live_api, EventType.ADMISSION)
    await post_routed(live_api, EventType.DISCHARGE)
    nurse = reader(live_api)
    discharge, admission = [e["resource"] for e in (await search(live_api, nurse))["entry"]]

    first = await live_api.client.post(f"{LIST}/{admission['id']}/$read", headers=nurse)
    assert first.status_code == 200, first.text
    read = first.json()
    assert read["status"] == "in-progress"
    received = instant(read["received"])
    assert received >= instant(read["sent"])
    again = (await live_api.client.post(f"{LIST}/{admission['id']}/$read", headers=nurse)).json()
    assert again["received"] == read["received"]
    assert again["meta"]["lastUpdated"] == read["meta"]["lastUpdated"]
    assert again["status"] == "in-progress"

    ack = (
        await live_api.client.post(f"{LIST}/{admission['id']}/$acknowledge", headers=nurse)
    ).json()
    assert ack["status"] == "completed"
    assert ack["received"] == read["received"]  # 既読 stays when it was read
    acknowledged = _acknowledged_at(ack)
    assert acknowledged >= received
    ack2 = (
        await live_api.client.post(f"{LIST}/{admission['id']}/$acknowledge", headers=nurse)
    ).json()
    assert _acknowledged_at(ack2) == acknowledged
    assert ack2["received"] == read["received"]
    # A later $read does not reopen it.
    after = (await live_api.client.post(f"{LIST}/{admission['id']}/$read", headers=nurse)).json()
    assert after["status"] == "completed"
    assert after["received"] == read["received"]

    # $acknowledge without $read first also records 既読.
    direct = (
        await live_api.client.post(f"{LIST}/{discharge['id']}/$acknowledge", headers=nurse)
    ).json()
    assert direct["status"] == "completed"
    assert direct["received"]
    stored = (await live_api.client.get(f"{LIST}/{discharge['id']}", headers=nurse)).json()
    assert stored["status"] == "completed"
    assert Communication.model_validate(stored).status == "completed"


def _acknowledged_at(communication: dict) -> datetime:
    values = [
        e["valueDateTime"]
        for e in communication.get("extension", [])
        if e["url"].endswith("/acknowledged")
    ]
    assert len(values) == 1, communication
    return instant(values[0])


async def test_practitioner_token_sees_what_is_addressed_to_the_person(live_api) -> None:
    await load_region(live_api.hub)
    event_id, _ = await post_routed(live_api, EventType.ADMISSION)
    sato = reader(live_api, CARE_PLAN, "cm-sato")
    bundle = await search(live_api, sato)
    assert event_ids(bundle) == [event_id]
    [communication] = [e["resource"] for e in bundle["entry"]]
    assert communication["recipient"] == [{"reference": "PractitionerRole/cm-sato-role"}]
    assert communication["priority"] == "urgent"  # 入院時情報提供
    cid = communication["id"]
    assert (await live_api.client.get(f"{LIST}/{cid}", headers=sato)).status_code == 200

    # The same organization without a practitioner: only what is addressed to the organization.
    office = reader(live_api, CARE_PLAN)
    assert (await search(live_api, office))["total"] == 0
    for method, path in [("GET", ""), ("POST", "/$read"), ("POST", "/$acknowledge")]:
        response = await live_api.client.request(method, f"{LIST}/{cid}{path}", headers=office)
        assert_outcome(response, 404, "not-found")
    # The same person named at another organization sees nothing either.
    elsewhere = reader(live_api, "himawari-care-plan", "cm-sato")
    assert (await search(live_api, elsewhere))["total"] == 0
    # The office's failed attempts left it unread.
    assert (await live_api.client.get(f"{LIST}/{cid}", headers=sato)).json()[
        "status"
    ] == "in-progress"


async def test_another_organizations_notification_is_404(live_api) -> None:
    await load_region(live_api.hub)
    await post_routed(live_api, EventType.ADMISSION)
    [entry] = (await search(live_api, reader(live_api)))["entry"]
    cid = entry["resource"]["id"]
    # The pharmacy got its own notification of the same event, but not the nurse's.
    pharmacy = reader(live_api, "chuo-pharmacy")
    assert (await search(live_api, pharmacy))["total"] == 1
    for hdrs in (pharmacy, headers(live_api.hub, "chuo-pharmacy", "org-admin")):
        for method, path in [("GET", ""), ("POST", "/$read"), ("POST", "/$acknowledge")]:
            response = await live_api.client.request(method, f"{LIST}/{cid}{path}", headers=hdrs)
            assert_outcome(response, 404, "not-found")
            assert "三沢" not in response.text
    unknown = await live_api.client.get(f"{LIST}/no-such-id", headers=reader(live_api))
    assert_outcome(unknown, 404, "not-found")
    still = await live_api.client.get(f"{LIST}/{cid}", headers=reader(live_api))
    assert still.json()["status"] == "in-progress"


async def test_no_token_is_401(live_api) -> None:
    await load_region(live_api.hub)
    await post_routed(live_api, EventType.ADMISSION)
    [entry] = (await search(live_api, reader(live_api)))["entry"]
    cid = entry["resource"]["id"]
    for method, path in [
        ("GET", LIST),
        ("GET", f"{LIST}/{cid}"),
        ("POST", f"{LIST}/{cid}/$read"),
        ("POST", f"{LIST}/{cid}/$acknowledge"),
    ]:
        for hdrs in ({}, {"Authorization": "Bearer garbage"}):
            response = await live_api.client.request(method, path, headers=hdrs)
            assert_outcome(response, 401, "login")
            assert "三沢" not in response.text
    assert (await live_api.client.get(f"{LIST}/{cid}", headers=reader(live_api))).json()[
        "status"
    ] == "in-progress"
