"""Registry FHIR REST: read, search, create and update-as-create for the six registry types.

Routes are registered per type with literal paths (``/fhir/Patient/{id}``, ...) rather than one
``/fhir/{type}`` pattern, so they can never shadow ``/fhir/metadata``, ``/fhir/Communication`` or
``/fhir/$process-message`` whatever the order routers are included in; an unknown type falls
through to the app's 404 OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.audit import AuditAction, AuditEntity, AuditOutcome
from schemas.json_safety import UnsafeJson, load_json
from schemas.outcome import InvalidMessage, Issue
from services.audit.context import audit_request, query_names
from services.auth import policy
from services.auth.service import FHIR_ID, Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON, FhirError
from services.openapi import resource_body, search_parameters
from services.paging import MAX_OFFSET, paging_int
from services.registry import service
from services.registry.models import REGISTRY_TYPES
from services.registry.service import StoredResource
from services.responses import JSONResponse

router = APIRouter(prefix="/fhir")

# Dependencies as types (not call defaults). Who may call which route, and which resources
# they see or write, is decided in services/auth/policy.py.
Caller = Annotated[Principal, Depends(policy.caller)]
Session = Annotated[AsyncSession, Depends(get_session)]
HubDep = Annotated[Hub, Depends(get_hub)]

DEFAULT_COUNT = 50
MAX_COUNT = 500


# --------------------------------------------------------------------------------------------
# Handlers, one set per resource type


def _read_handler(resource_type: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def read(
        resource_id: str,
        request: Request,
        principal: Caller,
        session: Session,
        hub: HubDep,
    ) -> JSONResponse:
        row = await service.read(session, resource_type, resource_id)
        visible = row is not None and (
            resource_type in policy.DIRECTORY_TYPES
            or policy.may_read(
                await policy.patient_scope(session, principal, hub.settings),
                resource_type,
                row.body,
            )
        )
        patient_data = resource_type not in policy.DIRECTORY_TYPES
        if row is None or not visible:
            if patient_data:
                # Asked for patient data it may not see (or that is not there): recorded, as
                # the same 404 the caller gets (the id is the caller's, not a hub fact).
                await _audit_read(
                    session, request, principal, resource_type, resource_id, None,
                    AuditOutcome.MINOR_FAILURE, "not found or not visible to the caller",
                )  # fmt: skip
            # Not visible and not there answer alike: a 403 would confirm the person exists.
            raise FhirError(404, "not-found", f"{resource_type} not found", f"{resource_type}.id")
        if row.forgotten:
            if patient_data:
                await _audit_read(
                    session, request, principal, resource_type, resource_id, None,
                    AuditOutcome.MINOR_FAILURE, "forgotten",
                )  # fmt: skip
            # Crypto-shredded (renkei patient forget): it existed, and is gone for good.
            raise FhirError(
                410, "deleted", f"{resource_type} was erased (forgotten)", f"{resource_type}.id"
            )
        if patient_data:
            await _audit_read(
                session, request, principal, resource_type, row.id,
                policy.patient_of(resource_type, row.body), AuditOutcome.SUCCESS, None,
            )  # fmt: skip
        return _resource_response(row, 200, location=False)

    return read


def _search_handler(resource_type: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def search(
        request: Request,
        principal: Caller,
        session: Session,
        hub: HubDep,
    ) -> JSONResponse:
        params = dict(request.query_params)  # repeated names were refused (services/guard.py)
        count = paging_int(params.pop("_count", None), "_count", DEFAULT_COUNT, 10**12)
        count = min(count, MAX_COUNT)  # FHIR lets a server cap _count rather than refuse
        offset = paging_int(params.pop("_offset", None), "_offset", 0, MAX_OFFSET)
        patients = None
        if resource_type not in policy.DIRECTORY_TYPES:
            scope = await policy.patient_scope(session, principal, hub.settings)
            patients = policy.patient_filter(scope, resource_type)
        total = await service.search_total(session, resource_type, params, patients)
        rows = await service.search(
            session, resource_type, params, offset=offset, limit=count, patients=patients
        )
        if resource_type not in policy.DIRECTORY_TYPES:
            await _audit_search(session, request, principal, resource_type, rows)
        base = hub.settings.resolved_public_base_url
        return JSONResponse(
            _searchset(base, resource_type, params, rows, total, count, offset),
            media_type=FHIR_JSON,
        )

    return search


def _create_handler(resource_type: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def create(
        request: Request,
        principal: Caller,
        session: Session,
    ) -> JSONResponse:
        body = await _resource_body(request, resource_type)
        body_id = body.get("id") if isinstance(body.get("id"), str) else None
        await _checked_write(session, request, principal, resource_type, body_id, body)
        row, created = await service.write(session, resource_type, body)
        await _audit_write(session, request, principal, resource_type, row, body, created)
        await session.commit()
        return _resource_response(row, 201, location=True)

    return create


def _update_handler(resource_type: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def update(
        resource_id: str,
        request: Request,
        principal: Caller,
        session: Session,
    ) -> JSONResponse:
        body = await _resource_body(request, resource_type)
        await _checked_write(session, request, principal, resource_type, resource_id, body)
        row, created = await service.write(session, resource_type, body, resource_id)
        await _audit_write(session, request, principal, resource_type, row, body, created)
        await session.commit()
        return _resource_response(row, 201 if created else 200, location=True)

    return update


for _type in REGISTRY_TYPES:
    router.add_api_route(
        f"/{_type}/{{resource_id}}", _read_handler(_type), methods=["GET"], name=f"read-{_type}"
    )
    router.add_api_route(
        f"/{_type}",
        _search_handler(_type),
        methods=["GET"],
        name=f"search-{_type}",
        openapi_extra=search_parameters(sorted(service.SEARCH_PARAMETERS[_type])),
    )
    router.add_api_route(
        f"/{_type}",
        _create_handler(_type),
        methods=["POST"],
        name=f"create-{_type}",
        openapi_extra=resource_body(_type),
    )
    router.add_api_route(
        f"/{_type}/{{resource_id}}",
        _update_handler(_type),
        methods=["PUT"],
        name=f"update-{_type}",
        openapi_extra=resource_body(_type),
    )


# --------------------------------------------------------------------------------------------
# Audit records: every read and search of patient data, every write with its author


def _entity(resource_type: str, resource_id: str) -> AuditEntity:
    role = "1" if resource_type == "Patient" else "4"
    return AuditEntity(f"{resource_type}/{resource_id}", role=role)


async def _audit_read(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    patient: str | None,
    outcome: AuditOutcome,
    reason: str | None,
) -> None:
    """patient.read of one resource, in its own small transaction (a read wrote nothing)."""
    await audit_request(
        session, request, principal, AuditAction.PATIENT_READ,
        outcome=outcome, patient=patient, reason=reason,
        # A refused id is the caller's text: named only when it is a FHIR id at all.
        entities=[_entity(resource_type, resource_id)] if FHIR_ID.fullmatch(resource_id) else [],
    )  # fmt: skip
    await session.commit()


async def _audit_search(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    resource_type: str,
    rows: list[StoredResource],
) -> None:
    """One patient.query per search: the parameter names (never values), the page's hits."""
    patients = sorted(
        {p for row in rows if (p := policy.patient_of(resource_type, row.body)) is not None}
    )
    entities = [AuditEntity(resource_type, role="24", query=query_names(request))]
    entities += [_entity(resource_type, row.id) for row in rows]
    if resource_type != "Patient":
        entities += [_entity("Patient", p) for p in patients]
    await audit_request(
        session, request, principal, AuditAction.PATIENT_QUERY,
        patient=patients[0] if len(patients) == 1 else None, entities=entities,
    )  # fmt: skip
    await session.commit()


async def _checked_write(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    resource_type: str,
    resource_id: str | None,
    body: dict[str, Any],
) -> None:
    """The policy's write check; a refusal is recorded (alone) before it is answered."""
    try:
        await policy.check_write(session, principal, resource_type, resource_id, body)
    except FhirError as error:
        await session.rollback()
        action = AuditAction.RESOURCE_UPDATED if resource_id else AuditAction.RESOURCE_CREATED
        await audit_request(
            session, request, principal, action,
            outcome=AuditOutcome.MINOR_FAILURE,
            reason=error.issues[0].diagnostics,
            entities=[_entity(resource_type, resource_id)] if resource_id else [],
        )  # fmt: skip
        await session.commit()
        raise


async def _audit_write(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    resource_type: str,
    row: Any,
    body: dict[str, Any],
    created: bool,
) -> None:
    """resource.created / resource.updated with its author, in the write's transaction."""
    patient = row.id if resource_type == "Patient" else policy.patient_of(resource_type, body)
    await audit_request(
        session, request, principal,
        AuditAction.RESOURCE_CREATED if created else AuditAction.RESOURCE_UPDATED,
        patient=patient if resource_type in policy.PATIENT_DATA_TYPES else None,
        entities=[_entity(resource_type, row.id)],
        detail={"version": row.version_id},
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Request bodies


async def _resource_body(request: Request, resource_type: str) -> dict[str, Any]:
    """The JSON object of a create/update, checked far enough to hand to the service.

    The size limit is the guard's (services/guard.py); the JSON is read by the same safe
    loader as messages (depth, NUL, number size, duplicate keys).
    """
    raw = await request.body()
    if not raw.strip():
        raise _invalid("required", "the body is empty", None)
    try:
        body = load_json(raw)
    except UnsafeJson as error:
        raise _invalid(error.code, error.reason, None) from None
    if not isinstance(body, dict):
        raise _invalid("structure", "the body must be a JSON object (a FHIR resource)", None)
    if body.get("resourceType") != resource_type:
        raise _invalid(
            "invalid", f"resourceType must be {resource_type} at this URL", "resourceType"
        )
    return body


def _invalid(code: str, diagnostics: str, expression: str | None) -> InvalidMessage:
    return InvalidMessage([Issue("error", code, diagnostics, expression)])


# --------------------------------------------------------------------------------------------
# Responses


def _resource_response(row: StoredResource, status: int, *, location: bool) -> JSONResponse:
    headers = {
        "ETag": f'W/"{row.version_id}"',
        "Last-Modified": format_datetime(row.last_updated, usegmt=True),
    }
    if location:
        headers["Location"] = f"/fhir/{row.resource_type}/{row.id}/_history/{row.version_id}"
    return JSONResponse(row.body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _searchset(
    public_base: str,
    resource_type: str,
    params: dict[str, str],
    rows: list[StoredResource],
    total: int,
    count: int,
    offset: int,
) -> dict[str, Any]:
    base = f"{public_base}/fhir/{resource_type}"

    def page(at: int) -> str:
        return f"{base}?{urlencode({**params, '_count': count, '_offset': at})}"

    links = [{"relation": "self", "url": page(offset)}]
    if count and offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(offset - count, 0))})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{public_base}/fhir/{row.resource_type}/{row.id}",
                "resource": row.body,
                "search": {"mode": "match"},
            }
            for row in rows
        ],
    }
