"""The database away answers 503 with an OperationOutcome and Retry-After, never a 500.

Nothing was stored, so the sender's retry is safe (its MessageHeader.id makes a repeat
harmless). Both engines: PostgreSQL refusing connections, SQLite unable to open its file.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from renkei.hub import Hub
from schemas.events import EventType
from services.app import create_app
from tests.conftest import make_settings
from tests.hubtools import headers, message

UNREACHABLE = {
    "postgresql": "postgresql+asyncpg://renkei@127.0.0.1:9/renkei",  # nothing listens on 9
    "sqlite": "sqlite+aiosqlite:////nonexistent-dir/renkei.sqlite3",
}


@pytest.mark.parametrize("engine", sorted(UNREACHABLE))
async def test_intake_answers_503_while_the_database_is_away(tmp_path: Path, engine: str) -> None:
    hub = Hub(make_settings(tmp_path, UNREACHABLE[engine], None))
    app = create_app(hub)
    bundle = message(EventType.ADMISSION, "p01")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        response = await client.post(
            "/fhir/$process-message", json=bundle, headers=headers(hub, "misawa-general-hospital")
        )
    await hub.engine.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert "renkei" not in response.text and "nonexistent" not in response.text
