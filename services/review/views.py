"""Break-glass review routes for the region office (region-admin only).

``GET /admin/break-glass`` lists the events senders marked as emergencies as AuditEvents
(sender, time, reason, recipients and why each received it, review state);
``POST /admin/break-glass/{event id}/$review`` marks one reviewed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.audit import AuditAction, AuditEntity
from schemas.canonical import (
    ACT_REASON_SYSTEM,
    BREAK_THE_GLASS,
    CANONICAL_BASE,
    EVENT_ID_SYSTEM,
    EVENT_SYSTEM,
)
from schemas.message import break_glass_reason
from services.audit.context import audit_request, query_names, request_record
from services.audit.fhir import DICOM, HUB_OBSERVER, PARTICIPATION
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_session
from services.errors import FHIR_JSON, FhirError
from services.intake.service import event_bundle
from services.responses import JSONResponse
from services.review import service
from services.review.service import BreakGlassEntry

router = APIRouter(prefix="/admin/break-glass")

REVIEW_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/break-glass-review"
DECISION_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/routing-decision"


def _reviewed(value: str | None) -> bool | None:
    if value is None:
        return None
    if value not in ("true", "false"):
        raise FhirError(400, "value", "reviewed must be true or false", "reviewed")
    return value == "true"


@router.get("")
async def list_break_glass(
    request: Request,
    reviewed: str | None = None,
    count: int = Query(50, alias="_count", ge=1, le=500),
    offset: int = Query(0, alias="_offset", ge=0, le=1_000_000),
    office: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
) -> JSONResponse:
    entries = await service.search(session, _reviewed(reviewed), count, offset)
    reasons = [await _reason(session, e) for e in entries]
    # The list shows the events' reasons and recipients: one patient.query for the page.
    patients = sorted({e.event.patient_id for e in entries if e.event.patient_id})
    await audit_request(
        session, request, office, AuditAction.PATIENT_QUERY,
        patient=patients[0] if len(patients) == 1 else None,
        entities=[
            AuditEntity("AuditEvent", role="24", query=query_names(request)),
            *(AuditEntity(f"Bundle/{e.event.id}", role="3") for e in entries),
            *(AuditEntity(f"Patient/{p}", role="1") for p in patients),
        ],
        detail={"list": "break-glass"},
    )  # fmt: skip
    await session.commit()
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": as_audit_event(e, reason), "search": {"mode": "match"}}
            for e, reason in zip(entries, reasons, strict=True)
        ],
    }
    return JSONResponse(bundle, media_type=FHIR_JSON)


@router.post("/{event_id}/$review")
async def review(
    event_id: str,
    request: Request,
    office: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
) -> JSONResponse:
    entry = await service.mark_reviewed(
        session, office, event_id,
        audit=request_record(request, office, AuditAction.BREAK_GLASS_REVIEWED),
    )  # fmt: skip
    return JSONResponse(as_audit_event(entry, await _reason(session, entry)), media_type=FHIR_JSON)


async def _reason(session: AsyncSession, entry: BreakGlassEntry) -> str:
    """The sender's stated emergency, from the message (sealed; empty once forgotten)."""
    bundle = await event_bundle(session, entry.event)
    return (break_glass_reason(bundle) if bundle is not None else None) or ""


def as_audit_event(entry: BreakGlassEntry, reason: str) -> dict[str, Any]:
    """One break-glass use as an R4 AuditEvent: the disclosure (DICOM Export), purpose BTG."""
    event = entry.event
    recipients = [
        {
            "who": {"reference": n.recipient},
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
            "requestor": False,
            # Why this recipient received it: "break-glass" (the emergency alone) or the
            # consent's own permit (consumers/routing/rules.py).
            "extension": [{"url": DECISION_EXTENSION, "valueCode": n.reason or "unknown"}],
        }
        for n in entry.notifications
    ]  # fmt: skip
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event.id,
        "type": {"system": DICOM, "code": "110106", "display": "Export"},
        "subtype": [{"system": EVENT_SYSTEM, "code": event.event_type}],
        "action": "C",
        "recorded": event.accepted_at.isoformat(),
        "outcome": "0",
        "purposeOfEvent": [
            {
                "coding": [
                    {
                        "system": ACT_REASON_SYSTEM,
                        "code": BREAK_THE_GLASS,
                        "display": "break the glass",
                    }
                ],
                "text": reason,
            }
        ],  # fmt: skip
        "agent": [
            {
                "who": {"reference": f"Organization/{event.sender_org_id}"},
                "type": {"coding": [{"system": PARTICIPATION, "code": "AUT"}]},
                "requestor": True,
            },
            *recipients,
        ],
        "source": {"observer": HUB_OBSERVER},
        "entity": [
            {"what": {"identifier": {"system": EVENT_ID_SYSTEM, "value": event.id}}},
            {"what": {"reference": f"Patient/{event.patient_id}"}} if event.patient_id else None,
        ],
    }
    resource["entity"] = [e for e in resource["entity"] if e is not None]
    if event.occurred_at is not None:
        resource["period"] = {"start": event.occurred_at.isoformat()}
    if (review := entry.review) is not None:
        resource["extension"] = [
            {
                "url": REVIEW_EXTENSION,
                "extension": [
                    {"url": "reviewedAt", "valueDateTime": review.reviewed_at.isoformat()},
                    {"url": "reviewedBy", "valueReference": {"reference": review.reviewed_by}},
                ],
            }
        ]
    return resource
