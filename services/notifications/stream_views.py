"""GET /notifications/stream: the caller's new notifications as Server-Sent Events."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from renkei.hub import Hub
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub
from services.errors import FhirError
from services.notifications import stream

router = APIRouter()

MAX_CURSOR = 2**63 - 1


def _cursor(value: str | None, name: str) -> int | None:
    """An event id this stream sent (``Last-Event-ID``, or ``?since=``): resume after it."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or int(value) > MAX_CURSOR:
        raise FhirError(400, "value", f"{name} must be an event id of this stream", name)
    return int(value)


@router.get(
    "/notifications/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def notification_stream(
    request: Request,
    since: str | None = Query(None, description="resume after this event id (Last-Event-ID)"),
    principal: Principal = Depends(caller),
    hub: Hub = Depends(get_hub),
) -> StreamingResponse:
    # The header is what an EventSource sends when it reconnects: it wins over the URL's.
    resume = _cursor(request.headers.get("last-event-id"), "Last-Event-ID")
    if resume is None:
        resume = _cursor(since, "since")
    cursor, references = await stream.open_stream(hub, principal, resume)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return StreamingResponse(
        stream.events(hub, principal, token, cursor, references),
        media_type="text/event-stream",
        # No proxy may hold events back (nginx buffers unless told), nor keep a copy.
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
