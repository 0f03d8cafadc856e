"""SMART Backend Services: discovery and the token endpoint (no bearer token: the client
assertion is the credential). Errors are OAuth JSON (RFC 6749 section 5.2), not FHIR."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from schemas.audit import AuditAction, AuditAgent, AuditEntity, AuditOutcome
from services.audit.context import UNKNOWN, client_address
from services.audit.emit import emit
from services.auth.service import Role
from services.clients import scopes
from services.clients.models import Client
from services.clients.service import (
    ALGORITHMS,
    ASSERTION_TYPE,
    OAuthError,
    TokenGrant,
    grant_token,
    verify_assertion,
)
from services.dependencies import get_hub, get_session
from services.responses import JSONResponse

router = APIRouter()
TOKEN_PATH = "/oauth/token"
MAX_FORM_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_endpoint(hub: Hub) -> str:
    return hub.settings.resolved_public_base_url + TOKEN_PATH


@router.get("/.well-known/smart-configuration", tags=["auth"])
async def smart_configuration(hub: Hub = Depends(get_hub)) -> JSONResponse:
    return JSONResponse(
        {
            "jwks_uri": hub.settings.resolved_public_base_url + "/.well-known/jwks.json",
            "token_endpoint": token_endpoint(hub),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": sorted(ALGORITHMS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": scopes.SCOPES_SUPPORTED,
            "capabilities": ["client-confidential-asymmetric"],
        }
    )


def _oauth_error(error: OAuthError) -> JSONResponse:
    return JSONResponse(
        {"error": error.error, "error_description": error.description},
        status_code=error.status,
        headers=NO_STORE,
    )


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != (
        "application/x-www-form-urlencoded"
    ):
        raise OAuthError("invalid_request", "send the request as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError(
                "invalid_request", f"the request is larger than {MAX_FORM_BYTES} bytes"
            )
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the form is not valid") from None
    form = {}
    for name, values in fields.items():
        if len(values) != 1:
            raise OAuthError("invalid_request", f"{name} must be given once")
        form[name] = values[0]
    return form


@router.post(TOKEN_PATH, tags=["auth"])
async def token(
    request: Request,
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    client = None
    try:
        form = await _form(request)
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion is required")
        if not form.get("scope"):
            raise OAuthError("invalid_scope", "scope is required")
        client = await verify_assertion(session, assertion, token_endpoint(hub))
        # The assertion's jti stays used even when the grant fails below (it was presented).
        await session.commit()
        if not await hub.tokens.org_exists(client.org_id):
            raise OAuthError("invalid_client", "the client's organization is not registered", 401)
        grant = grant_token(
            client,
            form["scope"],
            hub.tokens.current_ring(),
            hub.settings.client_token_ttl_seconds,
            region_office=client.org_id == hub.settings.region_org,
        )
    except OAuthError as error:
        await session.rollback()
        await _audit_token(session, request, client, None, error)
        return _oauth_error(error)
    await _audit_token(session, request, client, grant, None)
    return JSONResponse(
        {
            "access_token": grant.access_token,
            "token_type": "bearer",
            "expires_in": grant.expires_in,
            "scope": grant.scope,
        },
        headers=NO_STORE,
    )


async def _audit_token(
    session: AsyncSession,
    request: Request,
    client: Client | None,
    grant: TokenGrant | None,
    error: OAuthError | None,
) -> None:
    """token.issued (the client, the new token's jti) or token.refused (the OAuth error code
    as reason; the client only once its assertion verified, else an unknown agent)."""
    agent = AuditAgent(
        org=client.org_id if client else UNKNOWN,
        role=Role.SYSTEM.value if client else UNKNOWN,
        client=client.id if client else None,
        token=grant.token_id if grant else None,
        network=client_address(request),
    )
    entities = [AuditEntity(f"Client/{client.id}", role="4")] if client else []
    if grant is not None:
        await emit(
            session, agent, AuditAction.TOKEN_ISSUED, entities=entities,
            detail={"scope": grant.scope, "expires_in": grant.expires_in},
        )  # fmt: skip
    else:
        assert error is not None
        await emit(
            session, agent, AuditAction.TOKEN_REFUSED, outcome=AuditOutcome.MINOR_FAILURE,
            entities=entities, reason=error.error, detail={"description": error.description},
        )  # fmt: skip
    await session.commit()
