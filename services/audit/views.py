"""Audit review routes: ``GET /fhir/AuditEvent`` (search) and ``GET /fhir/AuditEvent/{id}``.

Auditors only (services/auth/policy.py decides, and which records each one sees). Every query
is itself audited: one ``audit.queried`` record, naming the parameters given, never their
values ("who looked at the trail, when, by which criteria").
"""

from __future__ import annotations

from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.audit import AuditAction, AuditEntity, AuditRecord
from services.audit import service
from services.audit.emit import emit, principal_agent
from services.audit.fhir import to_audit_event
from services.audit.service import AuditQuery
from services.auth.policy import audit_scope, caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.responses import JSONResponse

router = APIRouter(prefix="/fhir/AuditEvent")

# Read from the raw query string by the view (``date`` may repeat); listed for the OpenAPI.
_PARAMETERS = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in service.SEARCH_PARAMETERS
    ]
}


async def _audited(
    session: AsyncSession, request: Request, principal: Principal, entity: AuditEntity
) -> None:
    network = request.client.host if request.client else None
    await emit(session, principal_agent(principal, network), AuditAction.AUDIT_QUERIED,
               entities=[entity])  # fmt: skip
    await session.commit()


@router.get("", openapi_extra=_PARAMETERS)
async def search(
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    pairs = request.query_params.multi_items()
    query = service.parse_query(pairs, ZoneInfo(hub.settings.timezone))
    rows, total = await service.search(session, query, audit_scope(principal, hub.settings))
    events = [to_audit_event(AuditRecord.from_bytes(row.document)) for row in rows]
    searched = AuditEntity("AuditEvent", role="24", query=",".join(query.names))
    await _audited(session, request, principal, searched)
    base = f"{hub.settings.resolved_public_base_url}/fhir/AuditEvent"
    return JSONResponse(_searchset(base, pairs, query, events, total), media_type=FHIR_JSON)


def _searchset(
    base: str, pairs: list[tuple[str, str]], query: AuditQuery, events: list[dict], total: int
) -> dict:
    # Links from the configured address, never the Host header (RENKEI_PUBLIC_BASE_URL).
    kept = [(k, v) for k, v in pairs if k not in ("_count", "_offset")]

    def page(at: int) -> str:
        return f"{base}?{urlencode([*kept, ('_count', query.count), ('_offset', at)])}"

    links = [{"relation": "self", "url": page(query.offset)}]
    if query.offset + query.count < total:
        links.append({"relation": "next", "url": page(query.offset + query.count)})
    if query.offset > 0:
        links.append({"relation": "previous", "url": page(max(query.offset - query.count, 0))})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base}/{e['id']}", "resource": e, "search": {"mode": "match"}}
            for e in events
        ],
    }


@router.get("/{record_id}")
async def read(
    record_id: str,
    request: Request,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    if not service.valid_id(record_id):
        raise FhirError(400, "value", "not a valid AuditEvent id", "id")
    row = await service.get(session, record_id, audit_scope(principal, hub.settings))
    await _audited(session, request, principal, AuditEntity(f"AuditEvent/{record_id}"))
    if row is None:
        raise FhirError(404, "not-found", "no such AuditEvent")
    return JSONResponse(to_audit_event(AuditRecord.from_bytes(row.document)), media_type=FHIR_JSON)
