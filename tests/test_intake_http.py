"""POST /fhir/$process-message over HTTP: every refusal is an OperationOutcome that says what
and where, never echoing personal data; and the unmatched-patient queue (相談窓口).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from producers.models import OutboxRecord
from schemas.events import EventType
from schemas.topics import AUDIT_TOPIC
from services.intake.models import Event
from services.notifications.models import Notification
from services.registry import service as registry
from tests.hubtools import (
    HOSPITAL,
    event_id_of,
    headers,
    load_region,
    message,
    notifications_of,
    wait_routed,
)

PROCESS = "/fhir/$process-message"


@pytest.fixture
async def api(api):
    """Tokens name registered organizations only (issue 12), so the hospital that posts the
    refused messages below is in the registry even where the test loads nothing else."""
    async with api.hub.sessions() as session:
        body = {"resourceType": "Organization", "id": HOSPITAL, "name": "三沢総合病院"}
        await registry.write(session, "Organization", body, HOSPITAL)
        await session.commit()
    return api

# The sample patient (p01) as the contract's sample messages carry her.
PERSONAL_DATA = ("三沢", "花子", "ミサワ", "1936-05-12", "00012345", "中央町")
# Care team A's admission recipients (the hospital sends, so it is not among them).
P01_ADMISSION = {
    "PractitionerRole/dr-misawa-role": "routine",
    "Organization/misawa-visiting-nurse-1": "routine",
    "PractitionerRole/cm-sato-role": "urgent",
    "Organization/chuo-pharmacy": "routine",
    "Organization/sakura-day-service": "routine",
}


def assert_outcome(
    response,
    status: int,
    code: str,
    word: str,
    where: str | None = None,
) -> dict:
    """``status`` and an OperationOutcome whose first issue says ``code`` at ``where``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert issue["code"] == code, issue
    assert word.lower() in issue["diagnostics"].lower(), issue
    if where is not None:
        assert issue["expression"] == [where], issue
        assert issue["location"] == [where], issue
    for value in PERSONAL_DATA:
        assert value not in response.text, value
    return outcome


async def post_raw(api, content, org: str = HOSPITAL, role: str = "system", **extra):
    return await api.client.post(
        PROCESS, content=content, headers={**headers(api.hub, org, role), **extra}
    )


def dumps(bundle: dict) -> bytes:
    return json.dumps(bundle, ensure_ascii=False).encode()


def admission() -> dict:
    return message(EventType.ADMISSION)


# --- structure (400) --------------------------------------------------------------------------


async def test_not_json_is_400_structure(api) -> None:
    body = b'{"resourceType": "Bundle", "type": "message", 00012345 \xe4\xb8\x89\xe6\xb2\xa2'
    outcome = assert_outcome(await post_raw(api, body), 400, "structure", "JSON")
    assert "expression" not in outcome["issue"][0]


async def test_empty_body_is_400_required(api) -> None:
    assert_outcome(await post_raw(api, b""), 400, "required", "empty")
    assert_outcome(await post_raw(api, b"  \n "), 400, "required", "empty")


async def test_not_a_bundle_is_400(api) -> None:
    patient = admission()["entry"][1]["resource"]
    assert_outcome(await post_raw(api, dumps(patient)), 400, "structure", "Bundle", "resourceType")


async def test_json_array_is_400(api) -> None:
    assert_outcome(await post_raw(api, dumps([admission()])), 400, "structure", "object")


async def test_bundle_type_other_than_message_is_400(api) -> None:
    bundle = admission()
    bundle["type"] = "collection"
    assert_outcome(await post_raw(api, dumps(bundle)), 400, "value", "message", "Bundle.type")


async def test_message_header_not_first_is_400(api) -> None:
    bundle = admission()
    bundle["entry"].reverse()
    assert_outcome(
        await post_raw(api, dumps(bundle)),
        400,
        "structure",
        "MessageHeader",
        "Bundle.entry[0].resource.resourceType",
    )


async def test_no_message_header_at_all_is_400(api) -> None:
    bundle = admission()
    del bundle["entry"][0]
    assert_outcome(
        await post_raw(api, dumps(bundle)),
        400,
        "structure",
        "MessageHeader",
        "Bundle.entry[0].resource.resourceType",
    )


async def test_invalid_fhir_datatype_is_400_at_its_element(api) -> None:
    bundle = admission()
    assert bundle["entry"][1]["resource"]["resourceType"] == "Patient"
    bundle["entry"][1]["resource"]["birthDate"] = "1931-13-45"
    response = await post_raw(api, dumps(bundle))
    outcome = assert_outcome(response, 400, "value", "date", "Bundle.entry[1].resource.birthDate")
    assert "1931-13-45" not in response.text
    # Only the broken element is reported.
    assert [i["expression"] for i in outcome["issue"]] == [["Bundle.entry[1].resource.birthDate"]]


# --- the hub's rules (422) --------------------------------------------------------------------


async def test_unknown_event_code_is_422(api) -> None:
    bundle = admission()
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "transfer"
    outcome = assert_outcome(
        await post_raw(api, dumps(bundle)),
        422,
        "code-invalid",
        "event code",
        "Bundle.entry[0].resource.eventCoding.code",
    )
    assert "admission" in outcome["issue"][0]["diagnostics"]  # it lists the known codes


async def test_focus_not_in_bundle_is_422(api) -> None:
    bundle = admission()
    bundle["entry"][0]["resource"]["focus"] = [{"reference": "urn:uuid:not-in-this-bundle"}]
    assert_outcome(
        await post_raw(api, dumps(bundle)),
        422,
        "not-found",
        "focus reference",
        "Bundle.entry[0].resource.focus[0].reference",
    )


async def test_wrong_focus_type_for_the_event_is_422(api) -> None:
    bundle = admission()
    # Point the admission's focus at the Patient instead of the Encounter.
    bundle["entry"][0]["resource"]["focus"] = [{"reference": bundle["entry"][1]["fullUrl"]}]
    outcome = assert_outcome(
        await post_raw(api, dumps(bundle)),
        422,
        "invalid",
        "Encounter",
        "Bundle.entry[1].resource.resourceType",
    )
    assert "focus" in outcome["issue"][0]["diagnostics"]


async def test_sender_other_than_the_callers_organization_is_403(api) -> None:
    await load_region(api.hub)
    response = await post_raw(api, dumps(admission()), org="misawa-home-clinic")
    assert_outcome(response, 403, "forbidden", "sender", "Bundle.entry[0].resource.sender")
    assert await _events(api) == 0


async def test_sender_unknown_to_the_registry_is_refused(api) -> None:
    # Its token is refused first (401): a token must name a registered organization.
    await load_region(api.hub)
    bundle = admission()
    bundle["entry"][0]["resource"]["sender"] = {"reference": "Organization/nowhere-hospital"}
    response = await post_raw(api, dumps(bundle), org="nowhere-hospital")
    assert_outcome(response, 401, "login", "token")
    assert await _events(api) == 0


async def test_valid_message_from_a_known_sender_is_accepted(api) -> None:
    # The positive control for the refusals above: the same path answers 202, then 200.
    await load_region(api.hub)
    bundle = admission()
    first = await post_raw(api, dumps(bundle))
    assert first.status_code == 202, first.text
    event_id = event_id_of(first.json())
    second = await post_raw(api, dumps(bundle))
    assert second.status_code == 200, second.text
    assert event_id_of(second.json()) == event_id
    assert await _events(api) == 1


# --- size (413) -------------------------------------------------------------------------------


def oversized(limit: int) -> bytes:
    bundle = admission()
    bundle["entry"][2]["resource"]["reasonCode"] = [{"text": "x" * (2 * limit)}]
    body = dumps(bundle)
    assert len(body) > limit
    return body


async def test_too_large_with_content_length_is_413(api) -> None:
    await load_region(api.hub)
    body = oversized(api.hub.settings.max_message_bytes)
    response = await post_raw(api, body)
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert_outcome(response, 413, "too-costly", "larger")
    assert await _events(api) == 0


async def test_too_large_chunked_without_content_length_is_413(api) -> None:
    await load_region(api.hub)
    body = oversized(api.hub.settings.max_message_bytes)
    sent = 0

    async def chunks():
        nonlocal sent
        for start in range(0, len(body), 64 * 1024):
            sent += 1
            yield body[start : start + 64 * 1024]

    response = await post_raw(api, chunks())
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_outcome(response, 413, "too-costly", "larger")
    # Refused once past the limit, not after reading the whole (twice as large) body.
    assert sent < (len(body) + 64 * 1024 - 1) // (64 * 1024)
    assert await _events(api) == 0


async def test_just_under_the_limit_is_not_refused_for_size(api) -> None:
    await load_region(api.hub)
    limit = api.hub.settings.max_message_bytes
    bundle = admission()
    bundle["entry"][2]["resource"]["reasonCode"] = [{"text": ""}]
    padding = limit - len(dumps(bundle)) - 16
    bundle["entry"][2]["resource"]["reasonCode"] = [{"text": "x" * padding}]
    assert len(dumps(bundle)) <= limit
    response = await post_raw(api, dumps(bundle))
    assert response.status_code == 202, response.text[:300]


# --- who may post (401 / 403) -----------------------------------------------------------------


async def test_no_token_is_401(api) -> None:
    response = await api.client.post(
        PROCESS, content=dumps(admission()), headers={"Content-Type": "application/fhir+json"}
    )
    assert_outcome(response, 401, "login", "token")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_garbage_token_is_401(api) -> None:
    for value in ("Bearer not-a-jwt", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer a.b.c"):
        response = await api.client.post(
            PROCESS, content=dumps(admission()), headers={"Authorization": value}
        )
        assert_outcome(response, 401, "login", "token")


async def test_token_signed_by_another_key_is_401(api) -> None:
    await load_region(api.hub)
    now = int(time.time())
    claims = {
        "iss": "renkei-hub",
        "aud": "renkei-hub",
        "sub": f"Organization/{HOSPITAL}",
        "org": HOSPITAL,
        "role": "org-admin",
        "iat": now,
        "exp": now + 600,
        "jti": "forged",
    }
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    response = await api.client.post(
        PROCESS, content=dumps(admission()), headers={"Authorization": f"Bearer {forged}"}
    )
    assert_outcome(response, 401, "login", "not valid")
    # The same claims signed with the hub's own key are accepted: only the key was wrong.
    genuine = headers(api.hub, HOSPITAL, "org-admin")
    response = await api.client.post(PROCESS, content=dumps(admission()), headers=genuine)
    assert response.status_code == 202, response.text
    assert await _events(api) == 1


async def test_auditor_cannot_post(api) -> None:
    await load_region(api.hub)
    response = await post_raw(api, dumps(admission()), role="auditor")
    assert_outcome(response, 403, "forbidden", "role")
    assert await _events(api) == 0


async def _events(api) -> int:
    async with api.hub.sessions() as session:
        return await session.scalar(select(func.count()).select_from(Event))


# --- the unmatched-patient queue (相談窓口) ---------------------------------------------------

QUEUE = "/admin/unmatched-events"


def unknown_patient_message(value: str = "99999999") -> dict:
    bundle = admission()
    bundle["entry"][1]["resource"]["identifier"][0]["value"] = value
    return bundle


async def post_unmatched(api, bundle: dict | None = None) -> str:
    response = await post_raw(api, dumps(bundle or unknown_patient_message()))
    assert response.status_code == 202, response.text
    outcome = response.json()
    assert "queued" in outcome["issue"][0]["diagnostics"]
    return event_id_of(outcome)


async def link(api, event_id: str, body) -> object:
    return await api.client.post(
        f"{QUEUE}/{event_id}/$link",
        content=json.dumps(body),
        headers=headers(api.hub, "region-office", "region-admin"),
    )


async def queue_ids(api) -> list[str]:
    response = await api.client.get(
        QUEUE, headers=headers(api.hub, "region-office", "region-admin")
    )
    assert response.status_code == 200, response.text
    return [entry["resource"]["id"] for entry in response.json()["entry"]]


async def test_unmatched_patient_is_accepted_and_queued(api) -> None:
    await load_region(api.hub)
    event_id = await post_unmatched(api)
    admin = headers(api.hub, "region-office", "region-admin")
    response = await api.client.get(QUEUE, headers=admin)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    [entry] = bundle["entry"]
    basic = entry["resource"]
    assert basic["id"] == event_id
    assert basic["author"] == {"reference": f"Organization/{HOSPITAL}"}
    # FHIR extension URLs are absolute: the hub's canonical base.
    base = "https://renkei-hub.example.jp/fhir/StructureDefinition/unmatched"
    extensions = {e["url"]: e for e in basic["extension"]}
    assert extensions[f"{base}-event-type"]["valueCode"] == "admission"
    assert extensions[f"{base}-patient-identifier"]["valueIdentifier"]["value"] == "99999999"
    # Nothing is in the outbox yet: an unmatched event is not routed.
    async with api.hub.sessions() as session:
        assert (
            await session.scalar(
                select(func.count())
                .select_from(OutboxRecord)
                .where(OutboxRecord.topic != AUDIT_TOPIC)
            )
            == 0
        )
        event = await session.get(Event, event_id)
        assert (event.status, event.patient_id) == ("unmatched", None)


async def test_the_queue_is_for_admins_only(api) -> None:
    await load_region(api.hub)
    await post_unmatched(api)
    for role in ("member", "system", "auditor"):
        response = await api.client.get(
            QUEUE, headers=headers(api.hub, "region-office", role)
        )
        assert_outcome(response, 403, "forbidden", "region-admin")
    response = await api.client.get(QUEUE)
    assert_outcome(response, 401, "login", "token")


async def test_link_then_link_again_then_unknown_patient(api) -> None:
    await load_region(api.hub)
    event_id = await post_unmatched(api)
    other_id = await post_unmatched(api, unknown_patient_message("88888888"))
    assert set(await queue_ids(api)) == {event_id, other_id}

    member = await api.client.post(
        f"{QUEUE}/{event_id}/$link",
        json={"patient": "Patient/p01"},
        headers=headers(api.hub, HOSPITAL, "member"),
    )
    assert_outcome(member, 403, "forbidden", "region-admin")

    first = await link(api, event_id, {"patient": "Patient/p01"})
    assert first.status_code == 200, first.text
    assert event_id_of(first.json()) == event_id
    assert await queue_ids(api) == [other_id]

    again = await link(api, event_id, {"patient": "Patient/p01"})
    assert_outcome(again, 409, "conflict", "not waiting")
    unknown = await link(api, other_id, {"patient": "Patient/p99"})
    assert_outcome(unknown, 422, "not-found", "Patient", "patient")
    assert await queue_ids(api) == [other_id]  # a refused link leaves it queued
    missing = await link(api, "no-such-event", {"patient": "Patient/p01"})
    assert_outcome(missing, 404, "not-found", "event")
    bad = await link(api, other_id, {"patient": "p01"})
    assert_outcome(bad, 400, "required", "Patient/", "patient")

    async with api.hub.sessions() as session:
        event = await session.get(Event, event_id)
        assert (event.status, event.patient_id) == ("accepted", "p01")
        assert event.patient_key
        outbox = (
            await session.scalars(
                select(OutboxRecord.event_id).where(OutboxRecord.topic != AUDIT_TOPIC)
            )
        ).all()
        assert outbox == [event_id]


async def test_link_accepts_a_parameters_body(api) -> None:
    await load_region(api.hub)
    event_id = await post_unmatched(api)
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/p04"}}],
    }
    response = await link(api, event_id, body)
    assert response.status_code == 200, response.text
    async with api.hub.sessions() as session:
        assert (await session.get(Event, event_id)).patient_id == "p04"


async def test_linked_event_is_routed_once_and_its_repeat_routes_nothing(live_api) -> None:
    hub = live_api.hub
    await load_region(hub)
    bundle = unknown_patient_message()
    event_id = await post_unmatched(live_api, copy.deepcopy(bundle))
    # Unmatched: the router has nothing to do with it.
    await asyncio.sleep(0.5)
    assert await notifications_of(hub, event_id) == {}

    response = await link(live_api, event_id, {"patient": "Patient/p01"})
    assert response.status_code == 200, response.text
    await wait_routed(hub, [event_id])
    assert await notifications_of(hub, event_id) == P01_ADMISSION

    repeat = await post_raw(live_api, dumps(bundle))
    assert repeat.status_code == 200, repeat.text
    assert event_id_of(repeat.json()) == event_id
    relinked = await link(live_api, event_id, {"patient": "Patient/p01"})
    assert relinked.status_code == 409
    # Give a stray second routing time to show up, then count everything.
    await asyncio.sleep(1.0)
    async with hub.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 1
        # One event record, and one notification record per recipient (renkei.notification).
        topics = (
            await session.scalars(
                select(OutboxRecord.topic).where(OutboxRecord.topic != AUDIT_TOPIC)
            )
        ).all()
        assert sorted(topics) == sorted(
            ["renkei.event.admission"] + ["renkei.notification"] * len(P01_ADMISSION)
        )
        assert await session.scalar(select(func.count()).select_from(Notification)) == len(
            P01_ADMISSION
        )
    assert await notifications_of(hub, event_id) == P01_ADMISSION


@pytest.mark.parametrize("event", list(EventType))
async def test_rule_refusals_name_the_place_not_the_person(api, event: EventType) -> None:
    """Each sample with its focus broken: the outcome names the element, not the person."""
    bundle = message(event)
    header = bundle["entry"][0]["resource"]
    header["focus"] = [{"reference": "Patient/nobody"}]
    sender = header["sender"]["reference"].removeprefix("Organization/")
    async with api.hub.sessions() as session:  # tokens name registered organizations only
        body = {"resourceType": "Organization", "id": sender, "name": "送信元"}
        await registry.write(session, "Organization", body, sender)
        await session.commit()
    response = await post_raw(api, dumps(bundle), org=sender)
    assert_outcome(
        response, 422, "not-found", "focus", "Bundle.entry[0].resource.focus[0].reference"
    )
