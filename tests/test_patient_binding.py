"""Senders are bound to their own patient ids (DESIGN.md, HTTP surface): a message's Patient is
matched only through the identifier systems its sender's Organization issues, and a birth date
contradicting the registry's keeps it unmatched, with the reason, for the region office."""

from __future__ import annotations

import copy

from sqlalchemy import func, select

from producers.models import OutboxRecord
from schemas.canonical import PATIENT_IDENTIFIER_SYSTEM_EXTENSION
from schemas.events import EventType
from services.demo_region import PATIENT_ID_SYSTEM
from services.intake.models import Event
from services.registry import service as registry
from tests.hubtools import event_id_of, headers, load_region, message

QUEUE = "/admin/unmatched-events"
REASON = "https://renkei-hub.example.jp/fhir/StructureDefinition/unmatched-reason"
NURSE = "misawa-visiting-nurse-1"
CARE_OFFICE = "misawa-care-plan-1"


def patient_of(bundle: dict) -> dict:
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )


def sent_by(bundle: dict, org_id: str) -> dict:
    bundle = copy.deepcopy(bundle)
    bundle["entry"][0]["resource"]["sender"] = {"reference": f"Organization/{org_id}"}
    return bundle


async def post(api, bundle: dict) -> tuple[str, Event]:
    sender = bundle["entry"][0]["resource"]["sender"]["reference"].removeprefix("Organization/")
    response = await api.client.post(
        "/fhir/$process-message", json=bundle, headers=headers(api.hub, sender)
    )
    assert response.status_code == 202, response.text  # accepted, never dropped
    event_id = event_id_of(response.json())
    async with api.hub.sessions() as session:
        event = await session.get(Event, event_id)
        outbox = await session.scalar(
            select(func.count()).select_from(OutboxRecord).where(OutboxRecord.event_id == event_id)
        )
    assert (outbox > 0) == (event.status == "accepted")  # only matched events are routed
    return event_id, event


async def queue_reasons(api) -> dict[str, str]:
    response = await api.client.get(
        QUEUE, headers=headers(api.hub, "region-office", "region-admin")
    )
    assert response.status_code == 200, response.text
    return {
        entry["resource"]["id"]: next(
            e["valueCode"] for e in entry["resource"]["extension"] if e["url"] == REASON
        )
        for entry in response.json()["entry"]
    }


async def test_own_system_matches_and_is_routed(api) -> None:
    await load_region(api.hub)
    _, event = await post(api, message(EventType.ADMISSION, "p02"))
    assert (event.status, event.patient_id, event.unmatched_reason) == ("accepted", "p02", None)


async def test_another_organizations_chart_number_goes_to_the_queue(api) -> None:
    await load_region(api.hub)
    # The visiting nurse quotes the hospital's chart number of p02: that is not its number.
    bundle = sent_by(message(EventType.ADMISSION, "p02"), NURSE)
    event_id, event = await post(api, bundle)
    assert (event.status, event.patient_id) == ("unmatched", None)
    assert event.unmatched_reason == "not-sender-identifier"
    assert (await queue_reasons(api))[event_id] == "not-sender-identifier"


async def test_own_system_with_an_unknown_number_is_an_unknown_patient(api) -> None:
    await load_region(api.hub)
    bundle = message(EventType.ADMISSION, "p02")
    patient_of(bundle)["identifier"][0]["value"] = "99999999"
    event_id, event = await post(api, bundle)
    assert (event.status, event.unmatched_reason) == ("unmatched", "unknown-patient")
    assert (await queue_reasons(api))[event_id] == "unknown-patient"


async def test_a_contradicting_birth_date_goes_to_the_queue(api) -> None:
    await load_region(api.hub)
    bundle = message(EventType.ADMISSION, "p02")
    patient_of(bundle)["birthDate"] = "1950-01-01"
    event_id, event = await post(api, bundle)
    assert (event.status, event.patient_id) == ("unmatched", None)
    assert (await queue_reasons(api))[event_id] == "birth-date-mismatch"


async def test_a_system_listed_in_the_organization_extension_matches(api) -> None:
    await load_region(api.hub)
    care_system = "https://care-plan.example.jp/riyousha-bangou"
    async with api.hub.sessions() as session:
        office = (await registry.read(session, "Organization", CARE_OFFICE)).body
        office["extension"] = [
            {"url": PATIENT_IDENTIFIER_SYSTEM_EXTENSION, "valueUri": "urn:other"},
            {"url": PATIENT_IDENTIFIER_SYSTEM_EXTENSION, "valueUri": care_system},
        ]
        await registry.write(session, "Organization", office, CARE_OFFICE)
        patient = (await registry.read(session, "Patient", "p03")).body
        patient["identifier"].append({"system": care_system, "value": "R-103"})
        await registry.write(session, "Patient", patient, "p03")
        await session.commit()
    bundle = sent_by(message(EventType.ADMISSION, "p03"), CARE_OFFICE)
    patient_of(bundle)["identifier"] = [{"system": care_system, "value": "R-103"}]
    _, event = await post(api, bundle)
    assert (event.status, event.patient_id) == ("accepted", "p03")
    # Without the extension the same message waits in the queue.
    bundle = sent_by(message(EventType.DISCHARGE, "p03"), "himawari-care-plan")
    patient_of(bundle)["identifier"] = [{"system": care_system, "value": "R-103"}]
    _, event = await post(api, bundle)
    assert (event.status, event.unmatched_reason) == ("unmatched", "not-sender-identifier")


async def test_the_institution_code_gives_the_jp_core_system(api) -> None:
    org = {
        "identifier": [
            {
                "system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no",
                "value": "1310000001",
            },
            {"system": "urn:other", "value": "1310000009"},
        ]
    }
    assert registry.issued_systems(org) == {f"{PATIENT_ID_SYSTEM}1310000001"}
    assert registry.issued_systems({"identifier": [{"value": "1310000001"}]}) == frozenset()
