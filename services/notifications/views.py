"""Notification routes: the caller's Communications, and 既読 / 対応済 receipts."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.audit import AuditAction, AuditEntity
from services.audit.context import audit_request, query_names
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.intake.models import Event
from services.notifications import service
from services.notifications.communication import to_communication
from services.notifications.models import Notification
from services.paging import MAX_OFFSET, paging_int
from services.responses import JSONResponse

router = APIRouter(prefix="/fhir/Communication")

MAX_COUNT = 200


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    # An unencoded "+09:00" in a query string arrives as " 09:00" (form decoding); an instant
    # never contains a space, so read it back as the offset sign rather than refusing it.
    value = value.replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "value", "_since must be a FHIR instant", "_since") from None
    if parsed.tzinfo is None:
        raise FhirError(400, "value", "_since needs a time zone", "_since")
    return parsed


def _boolean(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    if value not in ("true", "false"):
        raise FhirError(400, "value", f"{name} must be true or false", name)
    return value == "true"


def _codes(value: str | None) -> str | None:
    """Token search values may carry a system (``system|code``); the code is what we store."""
    if value is None:
        return None
    return ",".join(item.rpartition("|")[2] for item in value.split(","))


@router.get("")
async def search(
    request: Request,
    status: str | None = None,
    category: str | None = None,
    subject: str | None = None,
    priority: str | None = None,
    since: str | None = Query(None, alias="_since"),
    received_missing: str | None = Query(None, alias="received:missing"),
    count_text: str | None = Query(None, alias="_count", description="page size, 1-200 (20)"),
    offset_text: str | None = Query(None, alias="_offset", description="rows to skip"),
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    count = paging_int(count_text, "_count", 20, MAX_COUNT)
    if count < 1:
        raise FhirError(400, "invalid", "_count must be at least 1", "_count")
    offset = paging_int(offset_text, "_offset", 0, MAX_OFFSET)
    filters = service.NotificationFilter(
        status=status,
        category=_codes(category),
        subject=subject,
        since=_since(since),
        priority=priority,
        received_missing=_boolean(received_missing, "received:missing"),
    )
    rows, total = await service.search(session, principal, filters, count, offset)
    zone = ZoneInfo(hub.settings.timezone)
    shown = await service.shown(session, rows)
    await _audit_listed(session, request, principal, rows)
    # Links from the configured address, never the Host header (RENKEI_PUBLIC_BASE_URL).
    base = f"{hub.settings.resolved_public_base_url}/fhir/Communication"
    params = {k: v for k, v in request.query_params.items() if k not in ("_offset",)}
    links = [{"relation": "self", "url": _url(base, params, offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": _url(base, params, offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": _url(base, params, max(offset - count, 0))})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{n.id}",
                "resource": to_communication(n, e, zone, what),
                "search": {"mode": "match"},
            }
            for (n, e), what in zip(rows, shown, strict=True)
        ],
    }
    return JSONResponse(bundle, media_type=FHIR_JSON)


async def _audit_listed(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    rows: list[tuple[Notification, Event]],
) -> None:
    """One notification.listed record per list request (IHE PatientQuery-like): the
    Communications shown and their patients as entities. ``patient`` and ``source_org`` are
    set when the page is about one patient / from one sender; every sender is in ``detail``."""
    patients = sorted({n.patient_id for n, _e in rows if n.patient_id})
    senders = sorted({e.sender_org_id for _n, e in rows})
    await audit_request(
        session,
        request,
        principal,
        AuditAction.NOTIFICATION_LISTED,
        patient=patients[0] if len(patients) == 1 else None,
        source_org=senders[0] if len(senders) == 1 else None,
        entities=[
            AuditEntity("Communication", role="24", query=query_names(request)),
            *(AuditEntity(f"Communication/{n.id}", role="4") for n, _e in rows),
            *(AuditEntity(f"Patient/{p}", role="1") for p in patients),
        ],
        detail={"source_orgs": senders} if len(senders) > 1 else None,
    )
    await session.commit()


async def _audit_one(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    action: AuditAction,
    notification: Notification,
    event: Event,
    detail: dict | None = None,
) -> None:
    """The record of one Communication read or marked (committed with the receipt, if any)."""
    entities = [AuditEntity(f"Communication/{notification.id}", role="4")]
    if notification.patient_id:
        entities.append(AuditEntity(f"Patient/{notification.patient_id}", role="1"))
    await audit_request(
        session,
        request,
        principal,
        action,
        patient=notification.patient_id,
        source_org=event.sender_org_id,
        entities=entities,
        detail=detail,
    )
    await session.commit()


def _url(base: str, params: dict[str, str], offset: int) -> str:
    return f"{base}?{urlencode({**params, '_offset': str(offset)})}"


@router.get("/{notification_id}", name="read_communication")
async def read(
    notification_id: str,
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    notification, event = await service.get(session, principal, notification_id)
    response = await _communication(session, hub, notification, event)
    await _audit_one(
        session, request, principal, AuditAction.NOTIFICATION_READ, notification, event
    )
    return response


@router.post("/{notification_id}/$read")
async def mark_read(
    notification_id: str,
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    # The receipt and its audit record commit together (in _audit_one).
    notification, event = await service.mark_read(session, principal, notification_id)
    response = await _communication(session, hub, notification, event)
    await _audit_one(
        session, request, principal, AuditAction.NOTIFICATION_READ, notification, event,
        {"receipt": "read"},
    )  # fmt: skip
    return response


@router.post("/{notification_id}/$acknowledge")
async def acknowledge(
    notification_id: str,
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    notification, event = await service.acknowledge(session, principal, notification_id)
    response = await _communication(session, hub, notification, event)
    await _audit_one(
        session, request, principal, AuditAction.NOTIFICATION_ACKNOWLEDGED, notification, event
    )
    return response


async def _communication(
    session: AsyncSession, hub: Hub, notification: Notification, event: Event
) -> JSONResponse:
    (shown,) = await service.shown(session, [(notification, event)])
    return JSONResponse(
        to_communication(notification, event, ZoneInfo(hub.settings.timezone), shown),
        media_type=FHIR_JSON,
    )
