"""FastAPI dependencies: who is calling, and may they."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request

from services.audit.context import signin_failed
from services.auth.service import InvalidToken, Principal, Role
from services.errors import FhirError


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise FhirError(
            401, "login", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        return await request.app.state.hub.tokens.verify(token.strip())
    except InvalidToken as error:
        # The check that failed (its class or the verifier's words), never the token itself.
        await signin_failed(request, str(error) or type(error).__name__)
        raise FhirError(
            401, "login", "the bearer token is not valid", headers={"WWW-Authenticate": "Bearer"}
        ) from None


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    def check(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role not in roles:
            allowed = ", ".join(role.value for role in roles)
            raise FhirError(403, "forbidden", f"this needs the role {allowed}")
        return principal

    return check
