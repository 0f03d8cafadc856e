"""Fixtures: real brokers and real databases, chosen per leg (see tests/legs.py).

A leg is one engine (RENKEI_TEST_ENGINE: tansu | kafka) and one database
(RENKEI_TEST_DATABASE: sqlite | postgresql). Tests that use neither run in the first leg only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from renkei.crypto import Keyring
from renkei.db import create_engine, migrate, session_factory
from renkei.hub import Hub
from renkei.settings import Settings
from services.app import create_app
from services.auth.service import Role, issue_token
from tests.databases import fresh_database_url, stop_embedded_postgres
from tests.engines import start_broker

ENGINE = os.environ.get("RENKEI_TEST_ENGINE", "tansu")
DATABASE = os.environ.get("RENKEI_TEST_DATABASE", "sqlite")
# Pure tests (no broker, no database) run once, in the leg that says so.
RUN_PURE = os.environ.get("RENKEI_TEST_PURE", "1") == "1"
LEG_FIXTURES = {"database_url", "db_sessions", "hub", "api", "broker", "hub_factory"}
# Apache Kafka legs rerun only what touches a broker: database-only tests (the HTTP surface
# over a database, fuzzing included) already ran on both databases in the Tansu legs.
BROKER_ONLY = os.environ.get("RENKEI_TEST_BROKER_ONLY", "0") == "1"
BROKER_FIXTURES = {"broker", "hub", "hub_factory", "live_api"}


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"renkei leg: engine={ENGINE} database={DATABASE} pure-tests={'yes' if RUN_PURE else 'no'}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN_PURE:
        return
    wanted = BROKER_FIXTURES if BROKER_ONLY else LEG_FIXTURES
    selected, deselected = [], []
    for item in items:
        uses_leg = wanted & set(getattr(item, "fixturenames", ()))
        (selected if uses_leg else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("renkei")


@pytest.fixture(scope="session")
def broker(work_dir: Path):
    """One broker (or cluster) per session; each test gets its own topics via a prefix."""
    running = start_broker(ENGINE, work_dir)
    yield running
    running.stop()


@pytest.fixture(scope="session", autouse=True)
def _embedded_postgres_cleanup():
    yield
    stop_embedded_postgres()


@pytest.fixture
async def database_url(work_dir: Path) -> str:
    return await fresh_database_url(DATABASE, work_dir)


@pytest.fixture
async def db_sessions(database_url: str, tmp_path: Path):
    engine = create_engine(database_url)
    await migrate(engine)
    yield session_factory(engine, Keyring.local(tmp_path / "keys"))
    await engine.dispose()


def make_settings(tmp_path: Path, database_url: str, bootstrap: str | None, **extra) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        topic_partitions=3,
        relay_poll_seconds=0.05,
        relay_redeliver_after_seconds=extra.pop("relay_redeliver_after_seconds", 10.0),
        router_group_id=f"router-{uuid.uuid4().hex[:8]}",
        audit_group_id=f"audit-{uuid.uuid4().hex[:8]}",
        consumer_session_timeout_ms=2000 if ENGINE == "tansu" else 6000,
        **extra,
    )


@dataclass
class Api:
    hub: Hub
    client: httpx.AsyncClient

    def headers(self, org_id: str, role: str = "member", practitioner: str | None = None) -> dict:
        token = issue_token(self.hub.settings.keys_dir, org_id, Role(role), practitioner)
        return {"Authorization": f"Bearer {token}"}


async def _api(hub: Hub) -> AsyncIterator[Api]:
    app = create_app(hub)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield Api(hub, client)


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    """The HTTP surface over a database only (no broker): registry, auth, validation."""
    hub = Hub(make_settings(tmp_path, database_url, None))
    await hub.start(broker=False, workers=False)
    try:
        async for value in _api(hub):
            yield value
    finally:
        await hub.stop()


@pytest.fixture
async def hub_factory(tmp_path: Path, database_url: str, broker):
    """Start hubs sharing one database, broker and topic prefix (several routers, restarts)."""
    hubs: list[Hub] = []
    base = make_settings(tmp_path, database_url, broker.bootstrap)

    async def start(workers: bool = True, **overrides) -> Hub:
        settings = base.model_copy(update=overrides)
        hub = Hub(settings)
        await hub.start(workers=workers)
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        await hub.stop()


@pytest.fixture
async def hub(hub_factory) -> Hub:
    return await hub_factory()


@pytest.fixture
async def live_api(hub: Hub) -> AsyncIterator[Api]:
    """The whole hub: broker, relay, router and the HTTP surface."""
    async for value in _api(hub):
        yield value
