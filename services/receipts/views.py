"""GET /fhir/MessageHeader/{event id}/$status: the sender's read receipts."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.hub import Hub
from services.auth.policy import caller
from services.auth.service import Principal
from services.dependencies import get_hub, get_session
from services.errors import FHIR_JSON
from services.receipts import service
from services.responses import JSONResponse

router = APIRouter(prefix="/fhir/MessageHeader")


@router.get("/{event_id}/$status")
async def status(
    event_id: str,
    principal: Principal = Depends(caller),
    session: AsyncSession = Depends(get_session),
    hub: Hub = Depends(get_hub),
) -> JSONResponse:
    parameters = await service.receipts(session, principal, event_id, hub.settings)
    await session.commit()  # the audit record
    hub.outbox_written.set()
    return JSONResponse(parameters, media_type=FHIR_JSON)
