"""The hub's public signing keys, for anyone who verifies its tokens (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.responses import JSONResponse

router = APIRouter()


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(request: Request) -> JSONResponse:
    ring = request.app.state.hub.tokens.current_ring()
    return JSONResponse(ring.jwks(), headers={"Cache-Control": "max-age=60"})
