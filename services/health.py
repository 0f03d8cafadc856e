"""Health checks and the CapabilityStatement: the only routes without authentication."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import text

from renkei.hub import Hub
from schemas.canonical import BREAK_GLASS_EXTENSION
from schemas.events import EVENT_SYSTEM, EventType
from services.dependencies import get_hub
from services.errors import FHIR_JSON
from services.registry.models import REGISTRY_TYPES
from services.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(hub: Hub = Depends(get_hub)) -> JSONResponse:
    checks: dict[str, object] = {}
    try:
        async with hub.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - readiness reports, it does not raise
        checks["database"] = f"unreachable ({type(error).__name__})"
    if hub.broker is None:
        checks["broker"] = "not started"
    elif await hub.broker.reachable():
        checks["broker"] = "ok"
        checks["engine"] = hub.broker.info.engine
        try:
            problems = await hub.broker.check_topics()
        except Exception as error:  # noqa: BLE001
            problems = [f"topics could not be described ({type(error).__name__})"]
        checks["topics"] = problems or "ok"
    else:
        checks["broker"] = "unreachable"
    ready = all(checks.get(k) == "ok" for k in ("database", "broker", "topics"))
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/fhir/metadata")
async def metadata() -> JSONResponse:
    resources = [
        {
            "type": name,
            "interaction": [{"code": c} for c in ("read", "search-type", "create", "update")],
            "searchParam": [
                {"name": "identifier", "type": "token"},
                {"name": "patient", "type": "reference"},
            ],
        }
        for name in REGISTRY_TYPES
    ]
    resources.append(
        {
            "type": "Communication",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": n, "type": t}
                for n, t in (
                    ("status", "token"),
                    ("category", "token"),
                    ("subject", "reference"),
                    ("_since", "date"),
                )
            ],
            "operation": [
                {"name": "read", "definition": "OperationDefinition/Communication-read"},
                {
                    "name": "acknowledge",
                    "definition": "OperationDefinition/Communication-acknowledge",
                },
            ],
        }
    )
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "Renkei Hub 連携ハブ", "version": "0.1.0"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "Bearer JWT (Authorization: Bearer <token>); "
                    "`renkei token issue` prints one for development",
                },
                "resource": resources,
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "OperationDefinition/MessageHeader-process-message",
                    }
                ],
            }
        ],
        "messaging": [
            {
                "supportedMessage": [
                    {"mode": "receiver", "definition": f"{EVENT_SYSTEM}#{code}"}
                    for code in EventType
                ],
                "documentation": (
                    f"An acute-change MessageHeader may carry the extension "
                    f"{BREAK_GLASS_EXTENSION} (valueString: the reason) to mark an emergency "
                    "(break-glass): see the README, Consent."
                ),
            }
        ],
    }
    return JSONResponse(statement, media_type=FHIR_JSON)
