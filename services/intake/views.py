"""Intake routes: ``POST /fhir/$process-message`` and the unmatched-patient queue."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.canonical import CANONICAL_BASE
from schemas.message import parse_message
from schemas.outcome import accepted_outcome
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.intake import service
from services.intake.models import Event

router = APIRouter()

# Extensions on the unmatched-event summaries (FHIR extension URLs must be absolute).
UNMATCHED = f"{CANONICAL_BASE}/StructureDefinition/unmatched"


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (not after reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError(413, "too-costly", f"the message is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FhirError(413, "too-costly", f"the message is larger than {limit} bytes")
    return bytes(body)


@router.post("/fhir/$process-message")
async def process_message(
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    raw = await read_limited(request, hub.settings.max_message_bytes)
    message = parse_message(raw)
    result = await service.accept(session, message, principal.org_id)
    if result.created:
        hub.outbox_written.set()
    if not result.created:
        text = "この連携メッセージは受付済みです / this message was already accepted"
    elif result.status in ("unmatched", "forgotten"):
        text = (
            "受付しました。患者は登録簿で未照合のため相談窓口で照合後に配信します / accepted; "
            "the patient is not yet matched in the registry and is queued for linking"
        )
    else:
        text = "受付しました / accepted"
    return JSONResponse(
        accepted_outcome(result.event_id, text),
        status_code=202 if result.created else 200,
        media_type=FHIR_JSON,
    )


@router.get("/admin/unmatched-events")
async def list_unmatched(
    _admin: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    _count: int = 50,
    _offset: int = 0,
) -> JSONResponse:
    """The coordinator's queue: accepted events whose patient the registry did not know."""
    events = await service.unmatched(session, min(max(_count, 1), 500), max(_offset, 0))
    entries = [
        {"resource": _as_message_summary(event, await service.event_bundle(session, event))}
        for event in events
    ]
    return JSONResponse(
        {"resourceType": "Bundle", "type": "collection", "entry": entries},
        media_type=FHIR_JSON,
    )


def _as_message_summary(event: Event, bundle: dict | None) -> dict:
    """The event as a Basic resource: who sent what, why it waits, the identifiers to match on."""
    patient = next(
        (
            entry.get("resource", {})
            for entry in (bundle or {}).get("entry", [])
            if entry.get("resource", {}).get("resourceType") == "Patient"
        ),
        {},
    )
    return {
        "resourceType": "Basic",
        "id": event.id,
        "code": {"text": f"unmatched {event.event_type} event"},
        "author": {"reference": f"Organization/{event.sender_org_id}"},
        "created": event.accepted_at.date().isoformat(),
        "extension": [
            {"url": f"{UNMATCHED}-event-type", "valueCode": event.event_type},
            {"url": f"{UNMATCHED}-accepted-at", "valueDateTime": event.accepted_at.isoformat()},
            {"url": f"{UNMATCHED}-reason", "valueCode": event.unmatched_reason or "unknown"},
            *(
                {"url": f"{UNMATCHED}-patient-identifier", "valueIdentifier": identifier}
                for identifier in patient.get("identifier", [])
            ),
        ],
    }


@router.post("/admin/unmatched-events/{event_id}/$link")
async def link_unmatched(
    event_id: str,
    request: Request,
    hub: Hub = Depends(get_hub),
    _admin: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
) -> JSONResponse:
    """Body: ``{"patient": "Patient/<id>"}`` (a FHIR Parameters with ``patient`` works too)."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FhirError(400, "structure", "the body is not JSON") from None
    reference = _patient_reference(body)
    if not reference.startswith("Patient/"):
        raise FhirError(400, "required", "give the registry Patient as Patient/<id>", "patient")
    event = await service.link_patient(session, event_id, reference.removeprefix("Patient/"))
    hub.outbox_written.set()
    return JSONResponse(
        accepted_outcome(
            event.id, "患者を照合し配信します / patient linked; the event will be routed"
        ),
        media_type=FHIR_JSON,
    )


def _patient_reference(body: object) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter", []):
            if parameter.get("name") == "patient":
                value = parameter.get("valueReference", {}).get("reference")
                return value if isinstance(value, str) else ""
        return ""
    if isinstance(body, dict) and isinstance(body.get("patient"), str):
        return body["patient"]
    return ""
