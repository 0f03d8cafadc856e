"""The broker interface on each engine: capability detection and topic administration."""

from __future__ import annotations

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from renkei.broker import Broker
from schemas.topics import ALL_TOPICS
from services.app import create_app
from tests.conftest import ENGINE, make_settings


async def test_engine_capabilities_are_detected(broker, tmp_path, database_url) -> None:
    settings = make_settings(tmp_path, database_url, broker.bootstrap)
    hub_broker = Broker(settings, broker.bootstrap)
    info = await hub_broker.detect()
    # Apache Kafka serves InitProducerId; Tansu advertises it but cannot: detected, not set.
    assert info.idempotent_producer is (ENGINE == "kafka")
    assert info.engine == ("apache-kafka" if ENGINE == "kafka" else "tansu")
    assert info.brokers >= 1
    producer = hub_broker.producer()
    await producer.start()
    try:
        await hub_broker.ensure_topics()
        await producer.send_and_wait(settings.topic("renkei.dlq"), b"probe", key=b"k")
    finally:
        await producer.stop()


async def test_topics_are_created_and_checked(broker, tmp_path, database_url) -> None:
    settings = make_settings(tmp_path, database_url, broker.bootstrap)
    hub_broker = Broker(settings, broker.bootstrap)
    await hub_broker.start()
    assert hub_broker.topic_problems == []
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        names = set(await admin.list_topics())
        described = await admin.describe_topics([settings.topic(t) for t in ALL_TOPICS])
    finally:
        await admin.close()
    assert {settings.topic(t) for t in ALL_TOPICS} <= names
    assert {len(t["partitions"]) for t in described} == {settings.topic_partitions}


async def test_readyz_reports_topics_that_differ(broker, tmp_path, database_url) -> None:
    from renkei.hub import Hub

    settings = make_settings(tmp_path, database_url, broker.bootstrap)
    # Someone made the admission topic by hand with the wrong partition count.
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic("renkei.event.admission"), 2, 1)])
    finally:
        await admin.close()
    hub = Hub(settings)
    await hub.start(workers=False)
    try:
        wanted = settings.topic_partitions
        expected = (
            f"{settings.topic('renkei.event.admission')}: partitions 2, settings say {wanted}"
        )
        assert expected in hub.broker.topic_problems
        transport = httpx.ASGITransport(app=create_app(hub))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            response = await client.get("/readyz")
        assert response.status_code == 503
        assert expected in response.json()["checks"]["topics"]
    finally:
        await hub.stop()


async def test_readyz_is_ready_on_a_healthy_hub(hub) -> None:
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        response = await client.get("/readyz")
        health = await client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["engine"] == ("apache-kafka" if ENGINE == "kafka" else "tansu")
    assert health.json() == {"status": "ok"}


async def test_a_dead_bootstrap_host_is_not_a_dead_cluster(broker, tmp_path, database_url) -> None:
    from renkei.kafka_probe import free_port

    bootstrap = f"127.0.0.1:{free_port()},{broker.bootstrap}"
    settings = make_settings(tmp_path, database_url, bootstrap)
    hub_broker = Broker(settings, bootstrap)
    assert await hub_broker.reachable()
    info = await hub_broker.detect()
    assert info.idempotent_producer is (ENGINE == "kafka")
    assert not await Broker(settings, f"127.0.0.1:{free_port()}").reachable()
