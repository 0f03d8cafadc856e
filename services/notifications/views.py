"""Notification routes: the caller's Communications, and 既読 / 対応済 receipts."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.intake.models import Event
from services.notifications import service
from services.notifications.communication import to_communication
from services.notifications.models import Notification

router = APIRouter(prefix="/fhir/Communication")


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
    count: int = Query(20, alias="_count", ge=1, le=200),
    offset: int = Query(0, alias="_offset", ge=0),
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
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
    params = {k: v for k, v in request.query_params.items() if k not in ("_offset",)}
    links = [{"relation": "self", "url": _url(request, params, offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": _url(request, params, offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": _url(request, params, max(offset - count, 0))})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": str(request.url_for("read_communication", notification_id=n.id)),
                "resource": to_communication(n, e, zone, what),
                "search": {"mode": "match"},
            }
            for (n, e), what in zip(rows, shown, strict=True)
        ],
    }
    return JSONResponse(bundle, media_type=FHIR_JSON)


def _url(request: Request, params: dict[str, str], offset: int) -> str:
    query = urlencode({**params, "_offset": str(offset)})
    return f"{request.url.remove_query_params(list(request.query_params.keys()))}?{query}"


@router.get("/{notification_id}", name="read_communication")
async def read(
    notification_id: str,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    notification, event = await service.get(session, principal, notification_id)
    return await _communication(session, hub, notification, event)


@router.post("/{notification_id}/$read")
async def mark_read(
    notification_id: str,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    notification, event = await service.mark_read(session, principal, notification_id)
    return await _communication(session, hub, notification, event)


@router.post("/{notification_id}/$acknowledge")
async def acknowledge(
    notification_id: str,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    notification, event = await service.acknowledge(session, principal, notification_id)
    return await _communication(session, hub, notification, event)


async def _communication(
    session: AsyncSession, hub: Hub, notification: Notification, event: Event
) -> JSONResponse:
    (shown,) = await service.shown(session, [(notification, event)])
    return JSONResponse(
        to_communication(notification, event, ZoneInfo(hub.settings.timezone), shown),
        media_type=FHIR_JSON,
    )
