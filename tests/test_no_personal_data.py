"""Nothing personal in clear: the whole flow of `make run` (embedded Tansu, SQLite in the data
dir) with a known name, identifier and diagnosis, then every log record, every record of every
topic (key, value, headers) and every byte of every file under the data dir searched for them.
Also: every file the hub wrote there is 0600 and every directory 0700."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from pathlib import Path

import httpx

from renkei.hub import Hub
from renkei.settings import Settings
from schemas.events import EventType
from schemas.topics import ALL_TOPICS, DLQ_TOPIC, EVENT_TOPICS, NOTIFICATION_TOPIC
from services.app import create_app
from services.demo_region import PATIENT_ID_SYSTEM, region_resources
from tests.hubtools import event_id_of, headers, message, wait_routed

FAMILY, GIVEN = "鷺ノ宮", "秘子"
NAME = f"{FAMILY} {GIVEN}"
CHART_NUMBER = "CHART-5550123"
DIAGNOSIS = "極秘診断ZQX7781"
SECRETS = (NAME, FAMILY, CHART_NUMBER, DIAGNOSIS)
HOSPITAL_SYSTEM = f"{PATIENT_ID_SYSTEM}1310000001"


def known_region() -> list[dict]:
    resources = region_resources()
    for resource in resources:
        if resource["resourceType"] == "Patient" and resource["id"] == "p01":
            resource["name"] = [
                {"use": "official", "text": NAME, "family": FAMILY, "given": [GIVEN]}
            ]
            resource["identifier"] = [{"system": HOSPITAL_SYSTEM, "value": CHART_NUMBER}]
    return resources


def known_admission() -> dict:
    bundle = message(EventType.ADMISSION, "p01")
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["name"] = [{"text": NAME, "family": FAMILY, "given": [GIVEN]}]
            resource["identifier"] = [{"system": HOSPITAL_SYSTEM, "value": CHART_NUMBER}]
        if resource["resourceType"] == "Encounter":
            resource["reasonCode"] = [{"text": DIAGNOSIS}]
    return bundle


def assert_clean(where: str, data: bytes) -> None:
    for secret in SECRETS:
        assert secret.encode("utf-8") not in data, f"{secret!r} in {where}"


async def read_every_topic(hub: Hub, at_least: dict[str, int]) -> list:
    consumer = hub.broker.consumer(
        *(hub.settings.topic(t) for t in ALL_TOPICS), group_id=f"scan-{uuid.uuid4().hex[:6]}"
    )
    await consumer.start()
    records = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
            seen = {t: sum(r.topic == hub.settings.topic(t) for r in records) for t in at_least}
            if all(seen[t] >= n for t, n in at_least.items()) and not batches:
                return records
            assert asyncio.get_running_loop().time() < deadline, seen
    finally:
        await consumer.stop()


async def test_no_personal_data_in_logs_topics_or_files(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    leftover = data_dir / "left-by-an-older-hub.txt"
    leftover.write_text("x")
    os.chmod(leftover, 0o644)
    settings = Settings(
        data_dir=data_dir, kafka_bootstrap=None, database_url=None, topic_partitions=2,
        consumer_session_timeout_ms=2000, relay_poll_seconds=0.05,
    )  # fmt: skip
    hub = Hub(settings)
    # A failing statement's log line must not carry bound values (sealed or not).
    assert hub.engine.sync_engine.hide_parameters
    await hub.start()
    try:
        transport = httpx.ASGITransport(app=create_app(hub))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            admin = headers(hub, "region-office", "region-admin")
            for resource in known_region():
                path = f"/fhir/{resource['resourceType']}/{resource['id']}"
                response = await client.put(path, json=resource, headers=admin)
                assert response.status_code in (200, 201), response.text
            response = await client.post(
                "/fhir/$process-message",
                json=known_admission(),
                headers=headers(hub, "misawa-general-hospital"),
            )
            assert response.status_code == 202, response.text
            event_id = event_id_of(response.json())
            await wait_routed(hub, [event_id])
            nurse = headers(hub, "misawa-visiting-nurse-1", "member")
            listing = (await client.get("/fhir/Communication", headers=nurse)).json()
            assert NAME in listing["entry"][0]["resource"]["payload"][0]["contentString"]
            patient = await client.get("/fhir/Patient/p01", headers=admin)
            assert patient.json()["identifier"][0]["value"] == CHART_NUMBER  # decrypted on read

        records = await read_every_topic(
            hub, {EVENT_TOPICS[0]: 1, NOTIFICATION_TOPIC: 5}
        )  # admission: 5 recipients in the demo region's team A
        for record in records:
            where = f"topic {record.topic}"
            assert_clean(where, (record.key or b"") + (record.value or b""))
            for name, value in record.headers:
                assert name in {
                    "renkei-event-id", "renkei-event-type", "renkei-schema-version",
                    "renkei-key-id",
                    "renkei-audit-id", "renkei-audit-count",  # audit batches: first uuid, count
                }, name  # fmt: skip
                assert_clean(f"{where} header {name}", value)
        running_files = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    finally:
        await hub.stop()

    assert any(p.name.startswith("renkei.sqlite3") for p in running_files)
    assert any(p.suffix == ".log" for p in running_files)  # the embedded broker's log
    for path, content in running_files.items():
        assert_clean(str(path), content)
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert_clean(str(path), path.read_bytes())
    for record in caplog.records:
        line = f"{record.name} {record.getMessage()} {record.exc_text or ''}"
        assert_clean(f"log record of {record.name}", line.encode("utf-8"))
    assert len(caplog.records) > 20  # the flow did log (routing, SQL statements, Kafka)

    for path in [data_dir, *data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, (str(path.relative_to(tmp_path)), oct(mode))


async def test_dead_letters_are_sealed_too(hub: Hub) -> None:
    """A clear record of an older producer (schema 1) goes to the DLQ sealed with the hub's key."""
    from consumers.dlq import dlq_aad

    producer = hub.broker.producer()
    await producer.start()
    try:
        clear = f'{{"schema_version": 1, "payload": "{DIAGNOSIS}"}}'.encode()
        sent = await producer.send_and_wait(
            hub.settings.topic(EVENT_TOPICS[0]),
            clear,
            key=b"k",
            headers=[("renkei-schema-version", b"1"), ("renkei-event-id", b"e1")],
        )
    finally:
        await producer.stop()
    [record] = await read_topic(hub, DLQ_TOPIC)
    assert_clean("the DLQ", record.value)
    assert dict(record.headers)["renkei-key-id"] == b"hub"
    source = f"{hub.settings.topic(EVENT_TOPICS[0])}/{sent.partition}/{sent.offset}"
    async with hub.sessions() as session:
        assert await hub.keyring.open(session, record.value, dlq_aad(source)) == clear


async def read_topic(hub: Hub, topic: str) -> list:
    consumer = hub.broker.consumer(
        hub.settings.topic(topic), group_id=f"dlq-{uuid.uuid4().hex[:6]}"
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for batch in batches.values() for r in batch]
            if records:
                return records
            assert asyncio.get_running_loop().time() < deadline, "nothing on the DLQ"
    finally:
        await consumer.stop()
