"""GET /metrics: what the counters say after real traffic through a whole hub, who may scrape,
and that no label ever carries a patient or an organization (services/metrics)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from renkei.broker import Broker
from schemas.events import EventType
from services.demo_region import ORGANIZATIONS, PATIENTS, PRACTITIONERS
from tests.conftest import Api
from tests.hubtools import (
    HOSPITAL,
    accept,
    headers,
    load_region,
    message,
    notifications_of,
    sender_of,
    wait_routed,
)

ROOT = Path(__file__).resolve().parent.parent
ADMISSIONS = "renkei.event.admission"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(api: Api) -> tuple[str, Samples]:
    office = headers(api.hub, api.hub.settings.region_org, "region-admin")
    response = await api.client.get("/metrics", headers=office)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def personal_strings(event_ids: list[str]) -> set[str]:
    """Every id and name of the region the test used: none may be in a label value."""
    found = set(event_ids)
    for row in (*ORGANIZATIONS, *PRACTITIONERS):
        found |= {field for field in row if isinstance(field, str)}
    for patient_id, family, given, kana, _gender, birth, chart, clinic_chart in PATIENTS:
        found |= {patient_id, family, given, kana, birth, chart, clinic_chart}
    return {text for text in found if len(text) >= 2}


def label_values(samples: Samples) -> set[str]:
    return {label for _name, labels in samples for _key, label in labels}


async def test_counters_move_by_what_was_posted_and_labels_name_no_one(live_api: Api) -> None:
    hub = live_api.hub
    await load_region(hub)
    _text, before = await scrape(live_api)

    admission = message(EventType.ADMISSION, "p01")
    admission_id = await accept(hub, live_api.client, admission)
    repeat = await live_api.client.post(
        "/fhir/$process-message", json=admission, headers=headers(hub, sender_of(admission))
    )
    assert repeat.status_code == 200
    # The token's organization is not the message's sender: refused after parsing (403).
    refused = await live_api.client.post(
        "/fhir/$process-message",
        json=message(EventType.ADMISSION, "p02"),
        headers=headers(hub, "towada-naika-clinic"),
    )
    assert refused.status_code == 403
    unparsed = await live_api.client.post(
        "/fhir/$process-message", content=b"{", headers=headers(hub, HOSPITAL)
    )
    assert unparsed.status_code == 400
    acute_id = await accept(hub, live_api.client, message(EventType.ACUTE_CHANGE, "p06"))
    await wait_routed(hub, [admission_id, acute_id])

    # The router commits its offset just after the routing transaction: give it a moment.
    lag = ("renkei_consumer_lag", frozenset({("consumer", "router"), ("topic", ADMISSIONS)}))
    for _ in range(100):
        _text, after = await scrape(live_api)
        if after.get(lag) == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the router's committed offsets never caught up")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    intake = "renkei_intake_seconds_count"
    assert moved(intake, event_type="admission", outcome="accepted") == 1
    assert moved(intake, event_type="admission", outcome="repeat") == 1
    assert moved(intake, event_type="admission", outcome="refused") == 1
    assert moved(intake, event_type="unknown", outcome="refused") == 1
    assert moved(intake, event_type="acute-change", outcome="accepted") == 1
    assert moved("renkei_intake_seconds_sum", event_type="admission", outcome="accepted") > 0
    assert moved("renkei_routing_seconds_count", event_type="admission") == 1
    assert moved("renkei_routing_seconds_count", event_type="acute-change") == 1
    assert moved("renkei_routing_seconds_bucket", event_type="admission", le="+Inf") == 1

    for event_type, event_id in (("admission", admission_id), ("acute-change", acute_id)):
        written = list((await notifications_of(hub, event_id)).values())
        assert written, event_type
        for priority in {"routine", "urgent", "stat"}:
            assert moved(
                "renkei_notifications_total", event_type=event_type, priority=priority
            ) == written.count(priority), (event_type, priority)

    assert value(after, "renkei_broker_reachable") == 1
    assert value(after, "process_resident_memory_bytes") > 0  # the process basics

    forbidden = personal_strings([admission_id, acute_id])
    for label in label_values(after):
        leaked = [text for text in forbidden if text in label]
        assert leaked == [], (label, leaked)


async def test_outbox_depth_and_age_with_the_relay_stopped(hub_factory) -> None:
    hub = await hub_factory(workers=False)  # no relay, no router: the outbox only grows
    from tests.conftest import _api

    async for api in _api(hub):
        await load_region(hub)
        _text, empty = await scrape(api)
        assert value(empty, "renkei_outbox_depth", topic="renkei.event.admission") == 0
        for patient in ("p01", "p02"):
            await accept(hub, api.client, message(EventType.ADMISSION, patient))
        await accept(hub, api.client, message(EventType.DISCHARGE, "p03"))
        await asyncio.sleep(0.05)
        _text, samples = await scrape(api)
        assert value(samples, "renkei_outbox_depth", topic="renkei.event.admission") == 2
        assert value(samples, "renkei_outbox_depth", topic="renkei.event.discharge") == 1
        assert ("renkei_outbox_depth", frozenset({("topic", "renkei.notification")})) in samples
        assert value(samples, "renkei_outbox_depth", topic="renkei.notification") == 0
        assert value(samples, "renkei_outbox_depth", topic="other") == 0
        age = value(samples, "renkei_outbox_oldest_age_seconds", topic="renkei.event.admission")
        assert 0 < age < 60
        assert value(samples, "renkei_outbox_oldest_age_seconds", topic="renkei.dlq") == 0
        if hub.engine.dialect.name == "sqlite":
            await assert_outbox_count_reads_the_index_only(hub)
        # Nothing was published: the router has nothing to catch up on.
        assert value(samples, "renkei_broker_reachable") == 1
        assert value(samples, "renkei_consumer_lag", consumer="router",
                     topic="renkei.event.admission") == 0  # fmt: skip


async def assert_outbox_count_reads_the_index_only(hub) -> None:  # noqa: ANN001 - Hub
    """The scrape's per-topic count is a search in the partial index of unsent rows."""
    from sqlalchemy import text

    query = (
        "EXPLAIN QUERY PLAN SELECT count(*), min(created_at) FROM outbox "
        "WHERE sent_at IS NULL AND topic = 'x'"
    )
    async with hub.engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in await connection.execute(text(query)))
    assert "INDEX ix_outbox_unsent_topic (topic=?)" in plan, plan


async def test_a_broker_away_is_a_gauge_not_a_failed_scrape(api: Api) -> None:
    _text, samples = await scrape(api)  # this fixture's hub has no broker at all
    assert value(samples, "renkei_broker_reachable") == 0
    api.hub.broker = Broker(api.hub.settings, "127.0.0.1:9")  # nobody listens there
    try:
        _text, samples = await scrape(api)
    finally:
        api.hub.broker = None
    assert value(samples, "renkei_broker_reachable") == 0
    assert not any(name == "renkei_consumer_lag" for name, _labels in samples)


async def test_only_the_region_office_and_its_scrapers(api: Api) -> None:
    from tests.test_clients import ask, assertion, ec_key, register, token_url

    await load_region(api.hub)
    assert (await api.client.get("/metrics")).status_code == 401
    office = api.hub.settings.region_org
    for org, role in (
        (HOSPITAL, "member"),
        (office, "member"),
        (office, "auditor"),
        (HOSPITAL, "org-admin"),
        (HOSPITAL, "system"),  # a care organization's machine: not the hub's operator
    ):
        refused = await api.client.get("/metrics", headers=api.headers(org, role))
        assert refused.status_code == 403, (org, role, refused.text)
        assert "renkei_" not in refused.text
    for role in ("region-admin", "system"):
        allowed = await api.client.get("/metrics", headers=api.headers(office, role))
        assert allowed.status_code == 200, (role, allowed.text)

    # A scraper is a system client of the region office, granted system/Metrics.r.
    url = await token_url(api)
    private = ec_key()
    scraper = await register(api, private, org=office)
    granted = await ask(api, assertion(private, scraper, url, "k1"), "system/Metrics.r")
    assert granted.json()["scope"] == "system/Metrics.r"
    token = {"Authorization": f"Bearer {granted.json()['access_token']}"}
    assert (await api.client.get("/metrics", headers=token)).status_code == 200
    reader = await ask(api, assertion(private, scraper, url, "k1"), "system/Communication.rs")
    token = {"Authorization": f"Bearer {reader.json()['access_token']}"}
    missing = await api.client.get("/metrics", headers=token)
    assert missing.status_code == 403 and "system/Metrics.r" in missing.text
    # A hospital's client is never granted it, whatever it asks for.
    hospital_key = ec_key()
    hospital_client = await register(api, hospital_key, org=HOSPITAL)
    asked = await ask(api, assertion(hospital_key, hospital_client, url, "k1"), "system/Metrics.r")
    assert asked.status_code == 400 and asked.json()["error"] == "invalid_scope"
    wildcard = await ask(api, assertion(hospital_key, hospital_client, url, "k1"), "system/*.rs")
    assert "Metrics" not in wildcard.json()["scope"]


SUPERVISOR = textwrap.dedent(
    """
    import os, subprocess, sys
    from pathlib import Path
    from renkei.settings import Settings
    from services import metrics
    from services.metrics.registry import render

    data_dir = Path(sys.argv[1])
    stale = data_dir / "metrics" / "counter_999999.db"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"left by an earlier run")
    metrics.configure(Settings(data_dir=data_dir), processes=3)
    assert not stale.exists()
    # Imported before configure(): what it observes from now on still goes to the directory.
    metrics.observe_intake("discharge", "accepted", 0.01)
    child = (
        "from datetime import timedelta\\n"
        "from renkei.db import utcnow\\n"
        "from services import metrics\\n"
        "metrics.observe_intake('admission', 'accepted', 0.02)\\n"
        "metrics.observe_intake('admission', 'refused', 0.001)\\n"
        "accepted = utcnow() - timedelta(seconds=0.2)\\n"
        "metrics.observe_routed('admission', accepted, ['stat', 'routine'])\\n"
    )
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-c", child], env=os.environ)
        assert process.wait() == 0
        metrics.process_exited(process.pid)
    sys.stdout.write(f"# supervisor {os.getpid()}\\n" + render([]).decode())
    """
)


def test_several_processes_add_up(tmp_path: Path) -> None:
    """Multiprocess mode: two processes' observations, read by a third (the scraping worker)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "var")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout)
    intake = "renkei_intake_seconds_count"
    assert value(samples, intake, event_type="admission", outcome="accepted") == 2
    assert value(samples, intake, event_type="admission", outcome="refused") == 2
    assert value(samples, "renkei_routing_seconds_count", event_type="admission") == 2
    for priority in ("stat", "routine"):
        assert value(samples, "renkei_notifications_total", event_type="admission",
                     priority=priority) == 2  # fmt: skip
    assert value(samples, "renkei_notifications_total", event_type="admission",
                 priority="urgent") == 0  # fmt: skip
    assert value(samples, intake, event_type="discharge", outcome="accepted") == 1
    # process_* of the live processes only (the children exited), each with its pid.
    supervisor = result.stdout.split("\n", 1)[0].removeprefix("# supervisor ")
    memory = [dict(labels) for name, labels in samples if name == "process_resident_memory_bytes"]
    assert memory == [{"pid": supervisor}]


def test_a_label_outside_its_closed_set_becomes_other() -> None:
    from services.metrics.registry import INTAKE_SECONDS, observe_intake

    observe_intake("Patient/p01", "accepted", 0.01)
    observe_intake("admission", "misawa-general-hospital", 0.01)
    names = {labels for labels in INTAKE_SECONDS._metrics}
    assert ("other", "accepted") in names and ("admission", "other") in names
    assert not any("p01" in part or "misawa" in part for key in names for part in key)
