"""Intake routes: ``POST /fhir/$process-message`` and the unmatched-patient queue."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.audit import AuditAction, AuditEntity, AuditOutcome
from schemas.canonical import CANONICAL_BASE
from schemas.events import EventType
from schemas.json_safety import UnsafeJson, load_json
from schemas.message import parse_message
from schemas.outcome import InvalidMessage, Issue, accepted_outcome
from services import offload
from services.audit.context import (
    audit_request,
    emit_alone,
    query_names,
    request_agent,
    request_record,
    session_detail,
)
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.intake import service
from services.intake.models import Event
from services.metrics import note_event_type
from services.openapi import link_body, message_body
from services.paging import MAX_OFFSET, paging_int
from services.responses import JSONResponse
from services.throttle import message_slot

router = APIRouter()

ACUTE_CHANGE_CODE = f'"{EventType.ACUTE_CHANGE.value}"'.encode()

# Extensions on the unmatched-event summaries (FHIR extension URLs must be absolute).
UNMATCHED = f"{CANONICAL_BASE}/StructureDefinition/unmatched"


@router.post("/fhir/$process-message", openapi_extra=message_body())
async def process_message(
    request: Request,
    principal: Principal = Depends(caller),
    hub: Hub = Depends(get_hub),
    _slot: None = Depends(message_slot),
) -> JSONResponse:
    try:
        # The size limit is the guard's (services/guard.py); parsing and FHIR validation are
        # CPU work, done in a worker thread so the event loop keeps answering everyone else.
        raw = await request.body()
        # Scheduling only (the validated event type decides everything else): a body that
        # names the acute-change event is validated ahead of the queue.
        message = await offload.run_cpu(parse_message, raw, urgent=ACUTE_CHANGE_CODE in raw)
        note_event_type(request, message.event_type)
        # Stored with the other messages arriving now, in one transaction (services/intake/
        # queue), with its message.accepted audit record.
        result = await request.app.state.intake.accept(
            message, principal.org_id, request_agent(request, principal), session_detail(principal)
        )
    except (FhirError, InvalidMessage) as error:
        await _refused(request, hub, principal, error.status, error.issues)
        raise
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


async def _refused(
    request: Request, hub: Hub, principal: Principal, status: int, issues: list[Issue]
) -> None:
    """The message.refused record, in its own small transaction (nothing else was written).

    The reason is what the OperationOutcome told the sender (diagnostics and expression: the
    hub's words, never the message's content)."""
    reason = "; ".join(
        f"{issue.diagnostics} ({issue.expression})" if issue.expression else issue.diagnostics
        for issue in issues
    )
    record = request_record(
        request,
        principal,
        AuditAction.MESSAGE_REFUSED,
        outcome=AuditOutcome.MINOR_FAILURE if status < 500 else AuditOutcome.SERIOUS_FAILURE,
        source_org=principal.org_id,
        reason=reason,
        detail={"status": status},
    )
    await emit_alone(hub.sessions, record)


@router.get("/admin/unmatched-events")
async def list_unmatched(
    request: Request,
    admin: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    count: str | None = Query(None, alias="_count", description="page size, 1-500 (default 50)"),
    offset: str | None = Query(None, alias="_offset", description="rows to skip"),
) -> JSONResponse:
    """The coordinator's queue: accepted events whose patient the registry did not know."""
    limit = min(max(paging_int(count, "_count", 50, 10**12), 1), 500)
    events = await service.unmatched(session, limit, paging_int(offset, "_offset", 0, MAX_OFFSET))
    entries = [
        {"resource": _as_message_summary(event, await service.event_bundle(session, event))}
        for event in events
    ]
    # The queue shows patients' identifiers: one patient.query record for the page, naming
    # the events shown (their patients are not known yet: that is why they wait).
    await audit_request(
        session,
        request,
        admin,
        AuditAction.PATIENT_QUERY,
        entities=[
            AuditEntity("Basic", role="24", query=query_names(request)),
            *(AuditEntity(f"Bundle/{event.id}", role="3") for event in events),
        ],
    )
    await session.commit()
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


@router.post("/admin/unmatched-events/{event_id}/$link", openapi_extra=link_body())
async def link_unmatched(
    event_id: str,
    request: Request,
    hub: Hub = Depends(get_hub),
    admin: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
) -> JSONResponse:
    """Body: ``{"patient": "Patient/<id>"}`` (a FHIR Parameters with ``patient`` works too)."""
    try:
        body = load_json(await request.body())
    except UnsafeJson as error:
        raise FhirError(400, error.code, error.reason) from None
    reference = _patient_reference(body)
    if not reference.startswith("Patient/"):
        raise FhirError(400, "required", "give the registry Patient as Patient/<id>", "patient")
    event = await service.link_patient(
        session,
        event_id,
        reference.removeprefix("Patient/"),
        request_record(request, admin, AuditAction.EVENT_LINKED),
    )
    hub.outbox_written.set()
    return JSONResponse(
        accepted_outcome(
            event.id, "患者を照合し配信します / patient linked; the event will be routed"
        ),
        media_type=FHIR_JSON,
    )


def _patient_reference(body: object) -> str:
    """The reference in either body shape; "" for anything else (any JSON may arrive here)."""
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") == "Parameters":
        parameters = body.get("parameter")
        for parameter in parameters if isinstance(parameters, list) else []:
            if isinstance(parameter, dict) and parameter.get("name") == "patient":
                value = parameter.get("valueReference")
                reference = value.get("reference") if isinstance(value, dict) else None
                return reference if isinstance(reference, str) else ""
        return ""
    patient = body.get("patient")
    return patient if isinstance(patient, str) else ""
