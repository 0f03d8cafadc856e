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


async def test_a_missing_database_socket_is_503_too(tmp_path: Path) -> None:
    # The Unix socket of a stopped PostgreSQL is gone: asyncpg raises FileNotFoundError.
    url = "postgresql+asyncpg://renkei@/renkei?host=/nonexistent-socket-dir"
    hub = Hub(make_settings(tmp_path, url, None))
    transport = httpx.ASGITransport(app=create_app(hub), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        response = await client.post(
            "/fhir/$process-message",
            json=message(EventType.ADMISSION, "p01"),
            headers=headers(hub, "misawa-general-hospital"),
        )
    await hub.engine.dispose()
    assert response.status_code == 503, response.text
    assert response.json()["issue"][0]["code"] == "transient"


def test_what_counts_as_the_database_away() -> None:
    from sqlalchemy import exc as sa_exc

    from services.errors import database_unavailable

    class PgError(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            self.sqlstate = sqlstate

    def dbapi(cls, sqlstate):  # noqa: ANN001, ANN202
        return cls("SELECT 1", {}, PgError(sqlstate))

    assert database_unavailable(dbapi(sa_exc.DBAPIError, "57P01"))  # admin shutdown
    assert database_unavailable(dbapi(sa_exc.DBAPIError, "57P03"))  # cannot connect now
    assert database_unavailable(dbapi(sa_exc.DBAPIError, "08006"))  # connection failure
    assert not database_unavailable(dbapi(sa_exc.IntegrityError, "23505"))  # a bug: 500
    assert not database_unavailable(dbapi(sa_exc.ProgrammingError, "42P01"))
    assert not database_unavailable(FileNotFoundError("keys/signing.json"))  # not the driver
