"""One event's whole path through the real parts: POST -> outbox -> Kafka -> router -> list."""

from __future__ import annotations

import pytest

from schemas.events import EventType
from tests.hubtools import (
    event_id_of,
    headers,
    load_region,
    message,
    notifications_of,
    sender_of,
    suppressed_of,
    wait_routed,
)

# Care team A (patients p01-p05): who hears of what, by DESIGN.md's routing table.
EXPECTED = {
    EventType.ADMISSION: {
        "PractitionerRole/dr-misawa-role": "routine",
        "Organization/misawa-visiting-nurse-1": "routine",
        "PractitionerRole/cm-sato-role": "urgent",
        "Organization/chuo-pharmacy": "routine",
        "Organization/sakura-day-service": "routine",
    },
    EventType.DISCHARGE: {
        "PractitionerRole/dr-misawa-role": "routine",
        "Organization/misawa-visiting-nurse-1": "urgent",
        "PractitionerRole/cm-sato-role": "urgent",
        "Organization/chuo-pharmacy": "routine",
        "Organization/sakura-day-service": "routine",
    },
    # Sent by the visiting-nurse station itself: it is not told of its own event.
    EventType.ACUTE_CHANGE: {
        "PractitionerRole/dr-misawa-role": "stat",
        "Organization/towada-naika-clinic": "stat",
        "PractitionerRole/cm-sato-role": "urgent",
    },
    # Sent by the home clinic: its doctor (the primary physician) is the sender's.
    EventType.END_OF_LIFE: {
        "Organization/towada-naika-clinic": "urgent",
        "Organization/misawa-visiting-nurse-1": "urgent",
        "PractitionerRole/cm-sato-role": "urgent",
        "Organization/chuo-pharmacy": "routine",
        "Organization/sakura-day-service": "routine",
        "Organization/misawa-community-support": "routine",
    },
}
# Who reads a recipient's list: (organization, practitioner) of the token.
READER = {
    "PractitionerRole/dr-misawa-role": ("misawa-home-clinic", "dr-misawa"),
    "PractitionerRole/cm-sato-role": ("misawa-care-plan-1", "cm-sato"),
}


async def post(live_api, bundle: dict):
    hub = live_api.hub
    return await live_api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
    )


@pytest.mark.parametrize("event", list(EventType))
async def test_event_reaches_each_recipient_list(live_api, event: EventType) -> None:
    hub = live_api.hub
    await load_region(hub)
    bundle = message(event)
    response = await post(live_api, bundle)
    assert response.status_code == 202, response.text
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])

    assert await notifications_of(hub, event_id) == EXPECTED[event]
    for recipient, priority in EXPECTED[event].items():
        kind, _, ident = recipient.partition("/")
        org, practitioner = READER.get(recipient, (ident, None))
        listing = await live_api.client.get(
            "/fhir/Communication", headers=headers(hub, org, "member", practitioner)
        )
        assert listing.status_code == 200
        entries = [e["resource"] for e in listing.json()["entry"]]
        mine = [c for c in entries if c["identifier"][0]["value"] == event_id]
        assert len(mine) == 1, recipient
        assert mine[0]["priority"] == priority
        assert mine[0]["category"][0]["coding"][0]["code"] == event.value
        assert mine[0]["subject"] == {"reference": "Patient/p01"}
        assert mine[0]["status"] == "in-progress"
    # The sender's own list stays empty.
    sender_list = await live_api.client.get(
        "/fhir/Communication", headers=headers(hub, sender_of(bundle), "member")
    )
    assert sender_list.json()["total"] == 0


async def test_consent_deny_withholds_from_that_organization(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    # p02's consent denies the pharmacy.
    response = await post(live_api, message(EventType.ADMISSION, "p02"))
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])
    delivered = await notifications_of(hub, event_id)
    assert "Organization/chuo-pharmacy" not in delivered
    assert "PractitionerRole/cm-sato-role" in delivered
    withheld = await suppressed_of(hub, event_id)
    assert withheld == {"Organization/chuo-pharmacy": "consent-deny-organization"}


async def test_no_consent_shares_with_nobody(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    # p03 has no Consent on file: opt-in, so nothing is shared, and each withholding is kept.
    response = await post(live_api, message(EventType.ADMISSION, "p03"))
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])
    assert await notifications_of(hub, event_id) == {}
    withheld = await suppressed_of(hub, event_id)
    assert set(withheld) == set(EXPECTED[EventType.ADMISSION])
    assert set(withheld.values()) == {"no-consent"}


async def test_repeat_message_is_routed_once(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    bundle = message(EventType.DISCHARGE)
    first = await post(live_api, bundle)
    second = await post(live_api, bundle)
    assert (first.status_code, second.status_code) == (202, 200)
    event_id = event_id_of(first.json())
    assert event_id_of(second.json()) == event_id
    await wait_routed(hub, [event_id])
    third = await post(live_api, bundle)
    assert third.status_code == 200 and event_id_of(third.json()) == event_id
    assert len(await notifications_of(hub, event_id)) == len(EXPECTED[EventType.DISCHARGE])


async def test_reused_message_id_with_other_content_is_a_conflict(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    bundle = message(EventType.ADMISSION)
    first = await post(live_api, bundle)
    assert first.status_code == 202
    # A retry may carry a new Bundle.timestamp: still the same message.
    retry = {**bundle, "timestamp": "2026-11-20T10:05:00+09:00"}
    assert (await post(live_api, retry)).status_code == 200
    # Other content under the same MessageHeader id is refused, not silently dropped.
    changed = message(EventType.ADMISSION, "p04", message_id=bundle["entry"][0]["resource"]["id"])
    response = await post(live_api, changed)
    assert response.status_code == 409
    issue = response.json()["issue"][0]
    assert issue["code"] == "conflict"
    assert issue["expression"] == ["Bundle.entry[0].resource.id"]


async def test_each_notification_is_also_a_record_on_the_notification_topic(live_api) -> None:
    import asyncio
    import uuid

    from schemas.envelope import notification_record_aad
    from schemas.notification_record import NotificationRecord
    from schemas.topics import NOTIFICATION_TOPIC

    hub = live_api.hub
    await load_region(hub)
    response = await post(live_api, message(EventType.ACUTE_CHANGE))
    event_id = event_id_of(response.json())
    await wait_routed(hub, [event_id])

    consumer = hub.broker.consumer(
        hub.settings.topic(NOTIFICATION_TOPIC), group_id=f"partner-{uuid.uuid4().hex[:6]}"
    )
    await consumer.start()
    records = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < len(EXPECTED[EventType.ACUTE_CHANGE]):
            assert asyncio.get_running_loop().time() < deadline, records
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    # Values are sealed under the patient's data key (AAD: the event id in the header).
    async with hub.sessions() as session:
        decoded = [
            NotificationRecord.from_bytes(
                await hub.keyring.open(session, r.value, notification_record_aad(event_id))
            )
            for r in records
        ]
    assert {d.recipient: d.priority for d in decoded} == EXPECTED[EventType.ACUTE_CHANGE]
    assert {d.event_id for d in decoded} == {event_id}
    patient_key = decoded[0].patient_key
    assert all(r.key == patient_key.encode() for r in records)
    for record in records:
        raw = record.value + b"".join(value for _name, value in record.headers)
        for personal in ("三沢", "花子", "00012345", "1936-05-12"):
            assert personal.encode() not in raw
