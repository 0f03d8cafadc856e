"""``GET /metrics`` (Prometheus text format) and the intake's timing middleware."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from renkei.hub import Hub
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub
from services.errors import FhirError
from services.metrics.registry import EVENT_TYPE_KEY, observe_intake, outcome_of, render
from services.metrics.scrape import scrape_families

router = APIRouter()

INTAKE_PATH = "/fhir/$process-message"


@router.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
async def metrics(hub: Hub = Depends(get_hub), principal: Principal = Depends(caller)) -> Response:
    """The hub's metrics for the region office's monitoring (a system client's scraper)."""
    if principal.org_id != hub.settings.region_org:
        # The route rule admits the system role; only the region office's clients scrape.
        raise FhirError(403, "forbidden", "the hub's metrics are for the region office only")
    return Response(render(await scrape_families(hub)), media_type=CONTENT_TYPE_LATEST)


class IntakeTimer:
    """Times every POST /fhir/$process-message from the first byte in to the answer, refusals
    by the guard, the policy and the throttle included (pure ASGI: no extra task per request).

    The event type is what the intake view noted once it parsed the message ("unknown" when
    the request was refused before that).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INTAKE_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            observe_intake(state.get(EVENT_TYPE_KEY), outcome_of(status), elapsed)
