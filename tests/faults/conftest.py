"""Fixtures for the failover scenarios: one 3-broker Apache Kafka cluster for the module, and a
fresh hub (its own PostgreSQL database and topic prefix) per scenario.

The cluster is shared by the scenarios to save its start (~10 s); each scenario first waits
until all three brokers are back and every partition it uses has its full ISR.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from deploy.kafka.cluster import KafkaCluster, java_available
from renkei.hub import Hub
from tests.conftest import make_settings
from tests.databases import fresh_database_url
from tests.faults import report
from tests.hubtools import load_region

log = logging.getLogger(__name__)

# PostgreSQL unless asked otherwise: SQLite's single writer serialises the relay, the router
# and the intake, which would measure SQLite rather than failover.
FAULTS_DATABASE = os.environ.get("RENKEI_FAULTS_DATABASE", "postgresql")

# Tuned for failover: re-drive after 20 s (not 60), Kafka's minimum session timeout, short
# back-off so the relay and router notice a healed cluster quickly.
HUB_TUNING = {
    "relay_redeliver_after_seconds": 20.0,
    "relay_backoff_max_seconds": 2.0,
    "consumer_session_timeout_ms": 6000,
}


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three combined broker+controller KRaft nodes (RF 3, min ISR 2, no unclean election)."""
    if not java_available():
        # Not skipped: a failover run that cannot run has failed, and says why.
        pytest.fail("the failover scenarios need java and mvn on PATH (Apache Kafka from Maven)")
    cluster = KafkaCluster(tmp_path_factory.mktemp("faults-kafka"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def failover_results() -> Iterator[list[report.ScenarioResult]]:
    """Scenario rows; the report file is rewritten after each scenario and printed at the end."""
    results: list[report.ScenarioResult] = []
    yield results
    if results:
        print("\n\nFailover report (" + str(report.REPORT_PATH) + ")\n")
        print(report.table(results))


@pytest.fixture
async def failover_hub(
    tmp_path: Path, work_dir: Path, kafka3: KafkaCluster
) -> AsyncIterator[Callable[[], Awaitable[Hub]]]:
    """Starts a whole hub (relay, router) on the cluster with its own database and topics,
    region loaded. A factory, so the scenario can first wait for a healthy cluster (the
    topics are created with RF 3, which needs all three brokers registered)."""
    hubs: list[Hub] = []

    async def start() -> Hub:
        database_url = await fresh_database_url(FAULTS_DATABASE, work_dir)
        settings = make_settings(tmp_path, database_url, kafka3.bootstrap).model_copy(
            update=HUB_TUNING
        )
        hub = Hub(settings)
        hubs.append(hub)
        await hub.start()
        await load_region(hub)
        return hub

    yield start
    for hub in hubs:
        # Bounded: a client stuck on a dead broker must not hang the suite's teardown.
        try:
            await asyncio.wait_for(hub.stop(), 60)
        except TimeoutError:
            log.error("hub did not stop within 60 s")
