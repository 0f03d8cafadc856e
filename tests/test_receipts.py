"""Read receipts for the sender (GET /fhir/MessageHeader/{event id}/$status): per recipient
delivered -> read -> acknowledged, when and by whom; withheld by consent shown as such; 404 for
anyone but the sender and the region office. The whole hub (broker, relay, router) behind it."""

from __future__ import annotations

from schemas.events import EventType
from tests.hubtools import HOSPITAL, accept, headers, load_region, message, wait_routed
from tests.test_consent_end_to_end import PHARMACY, deny, put, with_provision

NURSE = "misawa-visiting-nurse-1"
CARE_PLAN = "misawa-care-plan-1"
SATO_ROLE = "PractitionerRole/cm-sato-role"
OFFICE = "region-office"


async def routed(live_api, event: EventType = EventType.ADMISSION, patient: str = "p01") -> str:
    event_id = await accept(live_api.hub, live_api.client, message(event, patient))
    await wait_routed(live_api.hub, [event_id])
    return event_id


async def receipts(live_api, event_id: str, org: str = HOSPITAL, role: str = "member") -> dict:
    response = await live_api.client.get(
        f"/fhir/MessageHeader/{event_id}/$status", headers=headers(live_api.hub, org, role)
    )
    assert response.status_code == 200, response.text
    parameters = response.json()
    assert parameters["resourceType"] == "Parameters"
    return parameters


def parts(parameter: dict) -> dict:
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameter["part"]
    }


def by_recipient(parameters: dict) -> dict[str, dict]:
    found = {}
    for parameter in parameters["parameter"]:
        if parameter["name"] == "recipient":
            values = parts(parameter)
            found[values["recipient"]["reference"]] = values
    return found


def summary(parameters: dict) -> dict[str, int]:
    [found] = [p for p in parameters["parameter"] if p["name"] == "summary"]
    return parts(found)


async def test_the_sender_sees_delivered_then_read_then_acknowledged(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    event_id = await routed(live_api)
    first = by_recipient(await receipts(live_api, event_id))
    assert f"Organization/{NURSE}" in first and SATO_ROLE in first
    assert {r["status"] for r in first.values()} == {"delivered"}
    assert all("read" not in r and "acknowledged" not in r for r in first.values())
    assert {r["escalation"] for r in first.values()} == {False}

    sato = headers(hub, CARE_PLAN, "member", "cm-sato")
    communication = first[SATO_ROLE]["communication"]["reference"]
    response = await live_api.client.post(f"/fhir/{communication}/$read", headers=sato)
    assert response.status_code == 200, response.text
    nurse_communication = first[f"Organization/{NURSE}"]["communication"]["reference"]
    nurse = headers(hub, NURSE, "member")
    response = await live_api.client.post(
        f"/fhir/{nurse_communication}/$acknowledge", headers=nurse
    )
    assert response.status_code == 200, response.text

    later = await receipts(live_api, event_id)
    states = by_recipient(later)
    assert states[SATO_ROLE]["status"] == "read"
    assert states[SATO_ROLE]["readBy"] == {"reference": SATO_ROLE}  # the person, at that org
    assert "acknowledged" not in states[SATO_ROLE]
    assert states[f"Organization/{NURSE}"]["status"] == "acknowledged"
    assert states[f"Organization/{NURSE}"]["acknowledgedBy"] == {
        "reference": f"Organization/{NURSE}"
    }
    assert (
        states[f"Organization/{NURSE}"]["acknowledged"]
        >= states[f"Organization/{NURSE}"]["delivered"]
    )
    counts = summary(later)
    assert counts["read"] == 1 and counts["acknowledged"] == 1
    assert counts["delivered"] == len(states) - 2

    response = await live_api.client.post(f"/fhir/{communication}/$acknowledge", headers=sato)
    assert by_recipient(await receipts(live_api, event_id))[SATO_ROLE]["status"] == "acknowledged"
    # The recipient's own resource says the same.
    own = (await live_api.client.get(f"/fhir/{communication}", headers=sato)).json()
    extensions = {e["url"].rsplit("/", 1)[1]: e for e in own["extension"]}
    assert extensions["receipt-status"]["valueCode"] == "acknowledged"
    assert "acknowledged-by" in extensions and "read-by" in extensions


async def test_anyone_but_the_sender_and_the_office_gets_404(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    event_id = await routed(live_api)
    recipient = await live_api.client.get(
        f"/fhir/MessageHeader/{event_id}/$status", headers=headers(hub, NURSE, "member")
    )
    unknown = await live_api.client.get(
        "/fhir/MessageHeader/no-such-event/$status", headers=headers(hub, NURSE, "member")
    )
    for response in (recipient, unknown):
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["code"] == "not-found"
    # The same words either way: nothing tells that one of them exists.
    assert recipient.json()["issue"][0]["diagnostics"] == unknown.json()["issue"][0]["diagnostics"]
    office = by_recipient(await receipts(live_api, event_id, OFFICE, "region-admin"))
    assert f"Organization/{NURSE}" in office


async def test_withheld_by_consent_is_shown_without_who_to_the_sender(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    await put(live_api, with_provision("p01", provision=[deny(PHARMACY)]))
    event_id = await routed(live_api)
    sender = await receipts(live_api, event_id)
    withheld = [p for p in sender["parameter"] if p["name"] == "withheld"]
    assert [parts(p) for p in withheld] == [{"status": "withheld"}]
    assert summary(sender)["withheld"] == 1
    assert PHARMACY not in str(sender)
    office = await receipts(live_api, event_id, OFFICE, "region-admin")
    [shown] = [parts(p) for p in office["parameter"] if p["name"] == "withheld"]
    assert shown["recipient"] == {"reference": PHARMACY}
    assert shown["reason"] == "consent-deny-organization"
