"""``make bench``: the hub's throughput, latency, priority, drain and memory in one run.

Every figure of issue 13's benchmark, measured on this machine in one run, printed as a table
with its target and written as JSON (var/bench/latest.json and a dated copy):

- baselines: a bare FastAPI endpoint under the hub's uvicorn configuration (same bodies, JSON
  parsed, 202) with wrk at 32 connections; raw aiokafka produce (acks=all) to the hub's Tansu;
- intake (POST /fhir/$process-message) with wrk at 1, 8, 32 and 64 connections: msg/s,
  p50/p99, non-2xx, the ratio to the bare endpoint, and whether routing keeps up;
- POST -> notification readable (the care manager's GET /fhir/Communication lists it): idle,
  and at 100 and 500 msg/s offered background load (wrk, paced);
- acute change (visiting-nurse station) POST -> readable during an admission flood from the
  hospitals at full rate, and how many were refused;
- backlog drain: events accepted through the intake service in-process with no router, the
  relay publishes them (``renkei worker relay``), then ``renkei worker router`` is started and
  timed until every one is routed (admissions, 5 recipients each);
- peak RSS of the hub's process tree (psutil, sampled).

Every wrk request is a new message (a Lua script builds each body from a template with a
counter) and the requests rotate over several tokens per sender, so that the per-client limits
are not what is measured. The hub is a subprocess (``renkei up``, fresh data dir and database
per scenario, embedded Tansu); SQLite unless ``--database postgresql`` (embedded PostgreSQL).

    make bench                      # SQLite, ~8 min
    make bench DB=postgresql
    make bench QUICK=1              # shorter steps, smaller backlog (~3 min)
    make bench PROFILE=1            # also a pyinstrument profile under 32-connection intake
    DRAIN=20000 make bench          # backlog size (default 100,000; capped by --fill-seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.benchmarks import tools
from tests.benchmarks.processes import (
    RENKEI,
    HubProcess,
    Managed,
    Progress,
    TreeSampler,
    issue_tokens,
    log,
    run_wrk,
    spawn,
    wait_ready,
)
from tests.benchmarks.region import (
    ADMISSION_RECIPIENTS,
    BENCH_PATIENTS,
    CARE_MANAGER,
    HOSPITAL,
    NURSE_STATION,
    PROBE_PATIENT,
    SECOND_HOSPITAL,
    bench_region,
    load_message,
    probe_message,
)

ROOT = Path(__file__).resolve().parents[2]
TOKENS_PER_SENDER = 8  # distinct token ids: distinct clients for services/throttle.py
LOAD_SENDERS = (HOSPITAL[0], SECOND_HOSPITAL[0])
PROBE_TIMEOUT = 15.0  # seconds a probe waits to be readable before it counts as lost


@dataclass
class Plan:
    database: str = "sqlite"
    quick: bool = False
    step_seconds: float = 10.0
    connections: tuple[int, ...] = (1, 8, 32, 64)
    idle_probes: int = 100
    load_seconds: float = 15.0
    loads: tuple[int, ...] = (100, 500)
    flood_seconds: float = 20.0
    flood_connections: int = 32
    drain: int = 100_000
    fill_seconds: float = 150.0
    relay_timeout: float = 120.0
    drain_timeout: float = 120.0
    routers: int = 1
    profile: bool = False
    out_dir: Path = ROOT / "var" / "bench"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        plan = cls(database=args.database, quick=args.quick, profile=args.profile)
        if args.quick:
            plan.step_seconds, plan.idle_probes, plan.load_seconds = 4.0, 30, 8.0
            plan.flood_seconds, plan.drain, plan.fill_seconds = 8.0, 5_000, 40.0
            plan.relay_timeout, plan.drain_timeout = 60.0, 60.0
        env = os.environ
        plan.drain = int(env.get("DRAIN", plan.drain))
        plan.fill_seconds = float(env.get("FILL_SECONDS", plan.fill_seconds))
        plan.drain_timeout = float(env.get("DRAIN_TIMEOUT", plan.drain_timeout))
        plan.routers = int(env.get("ROUTERS", plan.routers))
        plan.step_seconds = float(env.get("STEP_SECONDS", plan.step_seconds))
        return plan


@dataclass
class Run:
    """Everything one bench run measured (the JSON document)."""

    plan: dict[str, Any]
    machine: dict[str, Any]
    limits: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, str]] = field(default_factory=list)


# -- the hub under test ------------------------------------------------------------------------


class Database:
    """A fresh database per hub: SQLite in its data dir, or one on an embedded PostgreSQL."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work

    async def url_for(self, data_dir: Path) -> str | None:
        if self.kind == "sqlite":
            return None  # the hub's default file in its data dir
        from tests.databases import fresh_postgres_url

        return await fresh_postgres_url(self.work / "postgres")

    @staticmethod
    def resolved(url: str | None, data_dir: Path) -> str:
        return url or f"sqlite+aiosqlite:///{(data_dir / 'renkei.sqlite3').resolve()}"

    def close(self) -> None:
        if self.kind == "postgresql":
            from tests.databases import stop_embedded_postgres

            stop_embedded_postgres()


@dataclass
class Senders:
    """Tokens the load uses (several per sender) and the probes' own."""

    load: dict[str, list[str]]
    probe_hospital: str
    probe_nurse: str
    readers: list[str]
    admin: str


class LiveHub:
    """A started ``renkei up`` with the bench region loaded and tokens issued."""

    def __init__(self, process: HubProcess, senders: Senders, progress: Progress) -> None:
        self.process = process
        self.senders = senders
        self.progress = progress

    @property
    def url(self) -> str:
        return self.process.base_url


async def load_region(base_url: str, admin_token: str) -> int:
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/fhir+json"}
    resources = bench_region()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for resource in resources:
            url = f"/fhir/{resource['resourceType']}/{resource['id']}"
            response = await client.put(url, json=resource, headers=headers)
            if response.status_code not in (200, 201):
                raise SystemExit(f"registry refused {url}: {response.status_code}")
    return len(resources)


def issue_senders(process: HubProcess, admin: str) -> Senders:
    load_orgs = list(LOAD_SENDERS)
    wanted: list[tuple[str, str, str | None]] = [
        (org, "system", None) for org in load_orgs for _ in range(TOKENS_PER_SENDER)
    ]
    wanted += [(HOSPITAL[0], "system", None), (NURSE_STATION, "system", None)]
    wanted += [(CARE_MANAGER[0], "member", CARE_MANAGER[1])] * 3
    tokens = issue_tokens(process.data_dir, wanted)
    load = {
        org: tokens[i * TOKENS_PER_SENDER : (i + 1) * TOKENS_PER_SENDER]
        for i, org in enumerate(load_orgs)
    }
    rest = tokens[len(load_orgs) * TOKENS_PER_SENDER :]
    return Senders(load, rest[0], rest[1], rest[2:], admin)


@asynccontextmanager
async def live_hub(name: str, work: Path, database: Database, sampler: TreeSampler, **kw: Any):
    data_dir = work / name
    url = await database.url_for(data_dir)
    process = HubProcess(data_dir, url)
    started = time.monotonic()
    await asyncio.to_thread(process.start, kw.get("argv_prefix"))
    sampler.watch(process.pid)
    progress = Progress(Database.resolved(url, data_dir))
    try:
        up = time.monotonic() - started
        admin = await asyncio.to_thread(process.token, "region-office", "region-admin")
        count = await load_region(process.base_url, admin)
        loaded = time.monotonic() - started
        senders = await asyncio.to_thread(issue_senders, process, admin)
        log(
            f"hub {name}: ready {up:.1f} s, region ({count} resources) {loaded - up:.1f} s, "
            f"tokens {time.monotonic() - started - loaded:.1f} s"
        )
        yield LiveHub(process, senders, progress)
    finally:
        await progress.close()
        sampler.unwatch(process.pid)
        await asyncio.to_thread(process.stop, kw.get("stop_grace", 8.0))


def load_variants(senders: Senders) -> list[tools.Variant]:
    """Admissions from both hospitals about the bench patients; each token has its bodies."""
    codes = {HOSPITAL[0]: HOSPITAL, SECOND_HOSPITAL[0]: SECOND_HOSPITAL}
    pairs = [(org, token) for org, tokens in senders.load.items() for token in tokens]
    variants = []
    for i in range(len(pairs) * 5):  # 80: every token with several patients
        org, token = pairs[i % len(pairs)]
        bundle = load_message(_admission(), codes[org], i % BENCH_PATIENTS + 1)
        variants.append(tools.Variant(token, tools.body_template(bundle)))
    return variants


def _admission():  # noqa: ANN202 - late import: settings read the environment first
    from schemas.events import EventType

    return EventType.ADMISSION


def write_script(work: Path, name: str, variants: list[tools.Variant], **kw: Any) -> Path:
    path = work / f"{name}.lua"
    run = uuid.uuid4().hex[:10]
    path.write_text(tools.lua_script(variants, run, **kw), encoding="utf-8")
    path.chmod(0o600)  # it holds tokens
    return path


# -- baselines -------------------------------------------------------------------------------


async def bare_baseline(plan: Plan, work: Path, variants: list[tools.Variant]) -> dict[str, Any]:
    from renkei.kafka_probe import free_port

    port = free_port()
    argv = [sys.executable, "-m", "tests.benchmarks.bare_app", "--port", str(port)]
    bare = spawn("bare-fastapi", argv, dict(os.environ), work)
    try:
        await asyncio.to_thread(wait_ready, bare, f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}"
        await run_wrk(url, write_script(work, "warm", variants), 32, 2, work / "wrk.log")
        script = write_script(work, "bare", variants)
        output = await run_wrk(url, script, 32, plan.step_seconds, work / "wrk.log")
        result = tools.parse_wrk(output)
    finally:
        await asyncio.to_thread(bare.stop)
    figure = _wrk_figure(result, 32)
    log(f"bare FastAPI: {figure['rate']:.0f} req/s p99 {figure['p99_ms']:.1f} ms")
    return figure


def _wrk_figure(result: tools.WrkResult, connections: int) -> dict[str, Any]:
    return {
        "connections": connections,
        "rate": result.rate(result.accepted),
        "requests": result.requests,
        "accepted_202": result.accepted,
        "repeat_200": result.statuses.get(200, 0),
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "p50_ms": result.latency_ms.get("p50", math.nan),
        "p99_ms": result.latency_ms.get("p99", math.nan),
        "seconds": result.duration_s,
    }


async def raw_produce(bootstrap: str, quick: bool) -> dict[str, Any]:
    """aiokafka straight to the broker, acks=all (the relay's producer options), pipelined;
    then one at a time (send_and_wait), the floor of a relay that waits for each record."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, enable_idempotence=False
    )
    await producer.start()
    value = os.urandom(3000)  # about a sealed admission envelope
    count, sequential = (5_000, 200) if quick else (20_000, 500)
    try:
        await producer.send_and_wait(topic, value, key=b"warm")
        started = time.perf_counter()
        for chunk in range(0, count, 1000):
            futures = [
                await producer.send(topic, value, key=f"k{i % 50}".encode())
                for i in range(chunk, min(count, chunk + 1000))
            ]
            await asyncio.gather(*futures)
        pipelined = count / (time.perf_counter() - started)
        waits = []
        for i in range(sequential):
            t0 = time.perf_counter()
            await producer.send_and_wait(topic, value, key=f"k{i % 50}".encode())
            waits.append((time.perf_counter() - t0) * 1000)
    finally:
        await producer.stop()
    figure = {
        "rate": pipelined,
        "messages": count,
        "value_bytes": len(value),
        "one_at_a_time_p50_ms": tools.percentile(waits, 0.5),
        "one_at_a_time_p99_ms": tools.percentile(waits, 0.99),
    }
    one = figure["one_at_a_time_p50_ms"]
    log(f"raw aiokafka produce: {pipelined:.0f} msg/s; one at a time p50 {one:.1f} ms")
    return figure


# -- intake ----------------------------------------------------------------------------------


async def intake_steps(plan: Plan, work: Path, hub: LiveHub, bare_rate: float) -> list[dict]:
    steps = []
    for connections in plan.connections:
        # A new script per run: its run id keeps the message ids new (else: 200 repeats).
        script = write_script(work, f"intake-{connections}", load_variants(hub.senders))
        before = await hub.progress.counts()
        output = await run_wrk(hub.url, script, connections, plan.step_seconds, work / "wrk.log")
        after = await hub.progress.counts()
        result = tools.parse_wrk(output)
        step = _wrk_figure(result, connections)
        step["ratio_to_bare"] = step["rate"] / bare_rate if bare_rate else math.nan
        step.update(_routing_during(before, after, result.duration_s))
        steps.append(step)
        log(
            f"intake {connections:>2} conn: {step['rate']:.0f} msg/s "
            f"({step['ratio_to_bare']:.1%}) p50 {step['p50_ms']:.0f} ms p99 {step['p99_ms']:.0f} ms"
            f" non-2xx {step['non_2xx']}; routed {step['routed_per_s']:.0f}/s,"
            f" backlog {step['backlog_after']}"
        )
    return steps


def _routing_during(before: dict, after: dict, seconds: float) -> dict[str, Any]:
    accepted = after["accepted"] - before["accepted"]
    routed = after["routed"] - before["routed"]
    return {
        "accepted_in_db_per_s": accepted / seconds,
        "routed_per_s": routed / seconds,
        "backlog_before": before["accepted"] - before["routed"],
        "backlog_after": after["accepted"] - after["routed"],
        "backlog_growth_per_s": (accepted - routed) / seconds,
        "unsent_outbox_after": after["unsent"],
    }


# -- POST -> readable ----------------------------------------------------------------------


class Prober:
    """Posts tagged messages about the probe patient and times each until the care manager's
    ``GET /fhir/Communication?subject=Patient/p01`` lists it (one poller for all probes)."""

    def __init__(
        self, client: httpx.AsyncClient, post_token: str, readers: list[str], poll_every: float
    ) -> None:
        self.client = client
        self.poll_every = poll_every
        self.post_token = post_token
        self.readers = readers
        self.pending: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.refused: dict[str, int] = {}
        self.lost = 0
        self._polls = 0
        self._tag = uuid.uuid4().hex[:8]
        self._sent = 0
        self._posting: set[asyncio.Task[None]] = set()

    def launch(self, event: Any) -> None:
        task = asyncio.create_task(self.post(event))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def post(self, event: Any) -> None:
        self._sent += 1
        bundle = probe_message(event, f"probe-{self._tag}-{self._sent}")
        headers = {"Authorization": f"Bearer {self.post_token}"}
        started = time.perf_counter()
        try:
            response = await self.client.post(
                "/fhir/$process-message", json=bundle, headers=headers
            )
        except httpx.HTTPError as error:
            self.refused[type(error).__name__] = self.refused.get(type(error).__name__, 0) + 1
            return
        if response.status_code != 202:
            code = str(response.status_code)
            self.refused[code] = self.refused.get(code, 0) + 1
            return
        event_id = response.json()["issue"][0]["details"]["coding"][0]["code"]
        self.pending[event_id] = started

    async def poll_forever(self) -> None:
        while True:
            if not self.pending:
                await asyncio.sleep(0.002)
                continue
            self._polls += 1
            token = self.readers[self._polls % len(self.readers)]
            try:
                response = await self.client.get(
                    "/fhir/Communication",
                    params={"subject": f"Patient/{PROBE_PATIENT}", "_count": 5},
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            now = time.perf_counter()
            if response.status_code == 200:
                for entry in response.json().get("entry", []):
                    event_id = entry["resource"]["identifier"][0]["value"]
                    started = self.pending.pop(event_id, None)
                    if started is not None:
                        self.latencies_ms.append((now - started) * 1000)
            else:
                await asyncio.sleep(0.05)  # a 429 from the reader's own limit: back off
            self._expire(now)
            await asyncio.sleep(self.poll_every)

    def _expire(self, now: float) -> None:
        for event_id, started in list(self.pending.items()):
            if now - started > PROBE_TIMEOUT:
                del self.pending[event_id]
                self.lost += 1

    async def settle(self) -> None:
        """Wait for every pending probe (each at most PROBE_TIMEOUT after its POST)."""
        if self._posting:
            await asyncio.gather(*self._posting)
        while self.pending:  # noqa: ASYNC110 - the poller empties it
            await asyncio.sleep(0.05)

    def figure(self) -> dict[str, Any]:
        # A lost probe counts as slower than any read one: it lifts the percentiles.
        values = self.latencies_ms + [math.inf] * self.lost
        return {
            "probes": len(values),
            "p50_ms": tools.percentile(values, 0.5),
            "p99_ms": tools.percentile(values, 0.99),
            "max_ms": max(values, default=math.nan),
            "lost_after_s": PROBE_TIMEOUT if self.lost else None,
            "lost": self.lost,
            "refused": sum(self.refused.values()),
            "refused_by_status": dict(self.refused),
            "polls": self._polls,
        }


@asynccontextmanager
async def prober(hub: LiveHub, post_token: str, poll_every: float):
    """Polling costs the hub CPU: every 2 ms when idle (the resolution its targets need), every
    10 ms under load (a 250 ms target)."""
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=hub.url, timeout=30, limits=limits) as client:
        probe = Prober(client, post_token, hub.senders.readers, poll_every)
        poller = asyncio.create_task(probe.poll_forever())
        try:
            yield probe
            await probe.settle()
        finally:
            poller.cancel()


async def idle_latency(plan: Plan, hub: LiveHub) -> dict[str, Any]:
    from schemas.events import EventType

    async with prober(hub, hub.senders.probe_hospital, 0.002) as probe:
        for _ in range(plan.idle_probes):
            await probe.post(EventType.ADMISSION)
            await probe.settle()
            await asyncio.sleep(0.01)
    figure = probe.figure()
    log(f"idle POST->readable: p50 {figure['p50_ms']:.1f} ms p99 {figure['p99_ms']:.1f} ms")
    return figure


async def latency_under(
    plan: Plan, work: Path, hub: LiveHub, rate: int, *, probe_every: float = 0.1
) -> dict[str, Any]:
    """Admissions at ``rate`` msg/s offered (wrk, paced) while probes run, open loop."""
    from schemas.events import EventType

    connections = 32 if rate > 200 else 16
    threads = tools.wrk_threads(connections)
    script = write_script(
        work, f"paced-{rate}", load_variants(hub.senders), rate_per_second=rate, threads=threads
    )
    before = await hub.progress.counts()
    load = asyncio.create_task(
        run_wrk(hub.url, script, connections, plan.load_seconds, work / "wrk.log")
    )
    async with prober(hub, hub.senders.probe_hospital, 0.01) as probe:
        await asyncio.sleep(1.5)  # the load reaches its rate
        deadline = time.monotonic() + plan.load_seconds - 2.5
        while time.monotonic() < deadline:
            probe.launch(EventType.ADMISSION)  # open loop: not waiting for the last one
            await asyncio.sleep(probe_every)
        result = tools.parse_wrk(await load)
    after = await hub.progress.counts()
    figure = probe.figure()
    figure["offered_per_s"] = rate
    figure["load"] = _wrk_figure(result, connections)
    figure["load"]["sent_per_s"] = result.rate()
    figure.update(_routing_during(before, after, result.duration_s))
    log(
        f"at {rate} msg/s offered ({result.rate():.0f} sent, {figure['load']['rate']:.0f} "
        f"accepted): p50 {figure['p50_ms']:.0f} ms p99 {figure['p99_ms']:.0f} ms, "
        f"lost {figure['lost']}"
    )
    return figure


async def acute_during_flood(plan: Plan, work: Path, hub: LiveHub) -> dict[str, Any]:
    from schemas.events import EventType

    script = write_script(work, "flood", load_variants(hub.senders))
    before = await hub.progress.counts()
    flood = asyncio.create_task(
        run_wrk(hub.url, script, plan.flood_connections, plan.flood_seconds, work / "wrk.log")
    )
    async with prober(hub, hub.senders.probe_nurse, 0.01) as probe:
        await asyncio.sleep(2.0)  # the flood is on
        deadline = time.monotonic() + plan.flood_seconds - 3.0
        while time.monotonic() < deadline:
            probe.launch(EventType.ACUTE_CHANGE)
            await asyncio.sleep(0.2)
        result = tools.parse_wrk(await flood)
    after = await hub.progress.counts()
    figure = probe.figure()
    figure["flood"] = _wrk_figure(result, plan.flood_connections)
    figure.update(_routing_during(before, after, result.duration_s))
    log(
        f"acute change during a {figure['flood']['rate']:.0f} msg/s flood: "
        f"p50 {figure['p50_ms']:.0f} ms p99 {figure['p99_ms']:.0f} ms, "
        f"refused {figure['refused']}, lost {figure['lost']}"
    )
    return figure


# -- backlog drain -----------------------------------------------------------------------------


async def fill_backlog(settings: Any, target: int, budget: float, concurrency: int) -> dict:
    """Accept ``target`` admissions through the intake service in-process (no HTTP, no broker,
    no router), ``concurrency`` at a time, for at most ``budget`` seconds."""
    from renkei.hub import Hub
    from schemas.events import EventType
    from schemas.message import parse_message
    from services.intake import service as intake
    from services.registry import service as registry

    hub = Hub(settings)
    await hub.start(broker=False, workers=False)
    try:
        async with hub.sessions() as session:
            for resource in bench_region():
                await registry.write(session, resource["resourceType"], resource, resource["id"])
            await session.commit()
        senders = [HOSPITAL, SECOND_HOSPITAL]
        run = uuid.uuid4().hex[:8]
        next_index = 0
        accepted = 0
        started = time.perf_counter()
        deadline = started + budget

        async def worker() -> None:
            nonlocal next_index, accepted
            while next_index < target and time.perf_counter() < deadline:
                i = next_index
                next_index += 1
                sender = senders[i % 2]
                bundle = load_message(
                    EventType.ADMISSION, sender, i % BENCH_PATIENTS + 1, f"drain-{run}-{i}"
                )
                message = parse_message(json.dumps(bundle, ensure_ascii=False).encode())
                async with hub.sessions() as session:
                    result = await intake.accept(session, message, sender[0])
                accepted += int(result.created)
                if accepted % 5000 == 0 and result.created:
                    log(f"  backlog fill: {accepted} accepted")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        await hub.stop()
    return {"accepted": accepted, "seconds": seconds, "rate": accepted / seconds}


async def backlog_drain(plan: Plan, work: Path, database: Database) -> dict[str, Any]:
    from deploy.tansu import EmbeddedTansu
    from renkei.settings import Settings

    data_dir = work / "drain"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = await database.url_for(data_dir)
    broker = EmbeddedTansu(data_dir / "broker")
    bootstrap = await asyncio.to_thread(broker.start)
    env = dict(os.environ, RENKEI_DATA_DIR=str(data_dir), RENKEI_KAFKA_BOOTSTRAP=bootstrap)
    if url:
        env["RENKEI_DATABASE_URL"] = url
    progress = Progress(Database.resolved(url, data_dir))
    figure: dict[str, Any] = {"target": plan.drain, "routers": plan.routers}
    workers: list[Managed] = []
    try:
        settings = Settings(data_dir=data_dir, database_url=url, kafka_bootstrap=bootstrap)
        concurrency = 1 if database.kind == "sqlite" else 8
        budget = plan.fill_seconds
        log(f"backlog: filling {plan.drain} admissions in-process (at most {budget:.0f} s)")
        figure["fill"] = await fill_backlog(settings, plan.drain, plan.fill_seconds, concurrency)
        figure["fill"]["how"] = f"intake service in-process, {concurrency} at a time"
        log(f"  filled {figure['fill']['accepted']} at {figure['fill']['rate']:.0f}/s")
        figure["relay"] = await _publish_all(plan, data_dir, env, progress, workers)
        published = (await progress.counts())["accepted"] - (await progress.counts())["unsent"]
        figure["events"] = published
        figure.update(await _route_all(plan, data_dir, env, progress, workers, published))
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        await progress.close()
        await asyncio.to_thread(broker.stop)
    log(
        f"drain: {figure['routed']} of {figure['events']} routed in {figure['seconds']:.1f} s "
        f"= {figure['rate']:.0f} events/s (first after {figure['first_routed_after_s']:.1f} s)"
    )
    return figure


async def _publish_all(
    plan: Plan, data_dir: Path, env: dict, progress: Progress, workers: list[Managed]
) -> dict[str, Any]:
    relay = spawn("relay", [*RENKEI, "worker", "relay"], env, data_dir)
    workers.append(relay)
    started = time.monotonic()
    counts = await progress.counts()
    while counts["unsent"] > 0 and time.monotonic() - started < plan.relay_timeout:
        if not relay.alive():
            raise SystemExit(f"relay exited; see {relay.log_path}")
        await asyncio.sleep(0.5)
        counts = await progress.counts()
    seconds = time.monotonic() - started
    published = counts["accepted"] - counts["unsent"]
    await asyncio.to_thread(relay.stop)  # the router drains what is in the broker
    log(f"  relay published {published} in {seconds:.1f} s ({counts['unsent']} left)")
    return {"published": published, "seconds": seconds, "rate": published / seconds,
            "left_unsent": counts["unsent"]}  # fmt: skip


async def _route_all(
    plan: Plan,
    data_dir: Path,
    env: dict,
    progress: Progress,
    workers: list[Managed],
    events: int,
) -> dict[str, Any]:
    log(f"  starting {plan.routers} router(s) for {events} events")
    started = time.monotonic()
    for i in range(plan.routers):
        workers.append(spawn(f"router-{i}", [*RENKEI, "worker", "router"], env, data_dir))
    first = math.nan
    routed = 0
    last_report = started
    while time.monotonic() - started < plan.drain_timeout:
        routed = (await progress.counts())["routed"]
        now = time.monotonic()
        if routed and math.isnan(first):
            first = now - started
        if routed >= events:
            break
        if now - last_report > 15:
            log(f"  routed {routed} of {events}")
            last_report = now
        await asyncio.sleep(0.25)
    seconds = time.monotonic() - started
    steady = seconds - first if not math.isnan(first) else math.nan
    return {
        "routed": routed,
        "complete": routed >= events,
        "seconds": seconds,
        "rate": routed / seconds,
        "first_routed_after_s": first,
        "rate_after_first": routed / steady if steady and steady > 0 else math.nan,
        "recipients_each": ADMISSION_RECIPIENTS,
    }


# -- profile ---------------------------------------------------------------------------------


async def profile_intake(plan: Plan, work: Path, database: Database, sampler: TreeSampler) -> dict:
    """The hub under pyinstrument (its main process: the event loop, not the database or
    validation threads) while wrk posts at 32 connections; rendered as a call tree and as a
    flat list of functions by their own time."""
    session = work / "profile.pyisession"
    prefix = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session)]
    prefix += ["-m", "services.cli"]
    # A long grace: pyinstrument writes its session only after the hub has shut down.
    kw = {"argv_prefix": prefix, "stop_grace": 90.0}
    async with live_hub("profiled", work, database, sampler, **kw) as hub:
        script = write_script(work, "profile", load_variants(hub.senders))
        await run_wrk(hub.url, script, 32, max(plan.step_seconds, 15), work / "wrk.log")
    out_dir = plan.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for name, options in (("tree", ["-p", "processor_options.filter_threshold=0.02"]),
                          ("flat", ["-p", "flat"])):  # fmt: skip
        argv = [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", "text"]
        done = await asyncio.to_thread(
            subprocess.run, [*argv, *options], capture_output=True, text=True, check=False
        )
        path = out_dir / f"profile-{name}.txt"
        path.write_text(done.stdout or done.stderr)
        rendered[name] = path
    head = rendered["flat"].read_text().splitlines()[:45]
    return {"path": str(rendered["tree"]), "flat": str(rendered["flat"]), "head": head}


async def profile_only(plan: Plan) -> int:
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        work = Path(tmp)
        database = Database(plan.database, work)
        try:
            with TreeSampler() as sampler:
                profile = await profile_intake(plan, work, database, sampler)
        finally:
            _keep_logs(work, plan.out_dir)
            database.close()
    print("\n".join(profile["head"]))
    print(f"profile: {profile['path']}")
    return 0


# -- the table -------------------------------------------------------------------------------


def rows_of(f: dict[str, Any]) -> list[tools.Row]:
    R, ms = tools.Row, tools.ms
    bare = f["bare"]
    rows = [
        R("bare FastAPI endpoint, 32 conn (baseline)",
          f"{bare['rate']:,.0f} req/s, p50 {ms(bare['p50_ms'])}, p99 {ms(bare['p99_ms'])}"),
        R("raw aiokafka produce, acks=all (baseline)",
          f"{f['raw_produce']['rate']:,.0f} msg/s; one at a time p50 "
          f"{ms(f['raw_produce']['one_at_a_time_p50_ms'])}"),
    ]  # fmt: skip
    for step in f["intake"]:
        c = step["connections"]
        target, verdict = ("≥ 20% of bare", "") if c != 32 else ("≥ 20% of bare", "")
        if c == 32:
            verdict = tools.verdict(step["ratio_to_bare"], 0.20, higher_is_better=True)
        rows.append(
            R(f"intake, {c} conn",
              f"{step['rate']:,.0f} msg/s ({step['ratio_to_bare']:.1%}), p50 {ms(step['p50_ms'])}, "
              f"p99 {ms(step['p99_ms'])}, non-2xx {step['non_2xx']}",
              target if c == 32 else "", verdict)
        )  # fmt: skip
    top = max(f["intake"], key=lambda s: s["rate"])
    # Keeping up: what the step left unrouted is at most about one second of its arrivals (in
    # flight between the intake and the router), whatever the step's length.
    backlog_added = top["backlog_after"] - max(top["backlog_before"], 0)
    keeping_up = backlog_added <= top["rate"] * 1.0
    rows.append(
        R(f"routing at the highest accepted rate ({top['connections']} conn)",
          f"routed {top['routed_per_s']:,.0f}/s of {top['accepted_in_db_per_s']:,.0f}/s accepted,"
          f" backlog {top['backlog_growth_per_s']:+,.0f}/s (→ {top['backlog_after']:,})",
          "no backlog growth",
          "ok" if keeping_up else "MISS")
    )  # fmt: skip
    idle = f["idle"]
    rows.append(R("POST → readable, idle: p50", _latency(idle, "p50_ms"), "≤ 25 ms",
                  tools.verdict(idle["p50_ms"], 25, higher_is_better=False)))  # fmt: skip
    rows.append(R("POST → readable, idle: p99", _latency(idle, "p99_ms"), "≤ 60 ms",
                  tools.verdict(idle["p99_ms"], 60, higher_is_better=False)))  # fmt: skip
    for load in f["loaded"]:
        rate = load["offered_per_s"]
        rows.append(
            R(f"POST → readable at {rate} msg/s offered",
              f"p50 {_latency(load, 'p50_ms')}, p99 {_latency(load, 'p99_ms')}; "
              f"{load['load']['rate']:,.0f} msg/s accepted, lost {load['lost']}",
              "p99 ≤ 250 ms" if rate == 500 else "",
              tools.verdict(load["p99_ms"], 250, higher_is_better=False) if rate == 500 else "")
        )  # fmt: skip
    acute = f["acute"]
    ok = acute["refused"] == 0 and tools.verdict(acute["p99_ms"], 100, False) == "ok"
    rows.append(
        R(f"acute change during a {acute['flood']['rate']:,.0f} msg/s flood",
          f"p50 {_latency(acute, 'p50_ms')}, p99 {_latency(acute, 'p99_ms')}, "
          f"refused {acute['refused']} of {acute['probes'] + acute['refused']}",
          "p99 ≤ 100 ms, none refused", "ok" if ok else "MISS")
    )  # fmt: skip
    drain = f["drain"]
    note = "" if drain["complete"] else f" (stopped after {drain['seconds']:.0f} s)"
    rows.append(
        R(f"backlog drain, {drain['events']:,} admissions × {ADMISSION_RECIPIENTS} recipients",
          f"{drain['rate']:,.0f} events/s: {drain['routed']:,} in {drain['seconds']:.1f} s{note}",
          "≥ 1,000 events/s", tools.verdict(drain["rate"], 1000, higher_is_better=True))
    )  # fmt: skip
    rss = f["rss"]
    rows.append(
        R("peak RSS, whole hub tree (incl. embedded broker)",
          f"{rss['peak_total_mb']:.0f} MB ({rss['peak_hub_mb']:.0f} MB without Tansu, "
          f"{rss['peak_processes']} processes)",
          "≤ 400 MB", tools.verdict(rss["peak_total_mb"], 400, higher_is_better=False))
    )  # fmt: skip
    return rows


def _latency(figure: dict[str, Any], key: str) -> str:
    value = figure[key]
    if math.isinf(value):
        return f"> {PROBE_TIMEOUT:.0f} s (lost)"
    return tools.ms(value)


# -- the run ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def limits_in_effect(plan: Plan) -> dict[str, Any]:
    """The per-client limits the hub runs with, and how the load stays inside them."""
    from renkei.settings import Settings

    settings = Settings()
    tokens = TOKENS_PER_SENDER * 2
    busiest = max(plan.connections)
    out = {
        "rate_limit_per_second": settings.rate_limit_per_second,
        "rate_limit_burst": settings.rate_limit_burst,
        "process_message_concurrency": settings.process_message_concurrency,
        "load_tokens": tokens,
        "load_senders": list(LOAD_SENDERS),
        "most_in_flight_per_token": math.ceil(busiest / tokens),
        "rate_allowed_by_limits": settings.rate_limit_per_second * tokens,
    }
    for name in ("http_workers", "workers", "routers", "relays"):  # if a later hub has them
        if hasattr(settings, name):
            out[name] = getattr(settings, name)
    return out


async def run_all(plan: Plan) -> Run:
    run = Run(plan={k: str(v) for k, v in asdict(plan).items()}, machine=machine_info())
    run.limits = limits_in_effect(plan)
    log(f"plan: {plan.database}, {'quick' if plan.quick else 'full'}; limits {run.limits}")
    f = run.figures
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RENKEI_DATA_DIR", str(work / "cli"))  # for late settings reads
        database = Database(plan.database, work)
        try:
            with TreeSampler() as sampler:
                await _measure(plan, work, database, sampler, f)
                f["rss"] = {
                    "peak_total_mb": sampler.peak_total / 2**20,
                    "peak_hub_mb": sampler.peak_hub / 2**20,
                    "peak_processes": sampler.peak_processes,
                    "sampled_every_s": sampler.every,
                }
            f["drain"] = await backlog_drain(plan, work, database)
            if plan.profile:
                with TreeSampler() as other:
                    try:
                        f["profile"] = await profile_intake(plan, work, database, other)
                    except (OSError, SystemExit, httpx.HTTPError) as error:
                        log(f"profile failed: {error!r}")
        finally:
            _keep_logs(work, plan.out_dir)
            database.close()
    run.table = [asdict(row) for row in rows_of(f)]
    return run


async def _measure(
    plan: Plan, work: Path, database: Database, sampler: TreeSampler, f: dict[str, Any]
) -> None:
    # The baseline first, with nothing else running; the same bodies, placeholder tokens.
    fake = {org: ["x" * 400] * TOKENS_PER_SENDER for org in LOAD_SENDERS}
    placeholder = Senders(fake, "", "", [], "")
    f["bare"] = await bare_baseline(plan, work, load_variants(placeholder))
    async with live_hub("intake", work, database, sampler) as hub:
        f["raw_produce"] = await raw_produce(hub.process.broker_bootstrap(), plan.quick)
        f["intake"] = await intake_steps(plan, work, hub, f["bare"]["rate"])
    f["loaded"] = []
    async with live_hub("latency", work, database, sampler) as hub:
        f["idle"] = await idle_latency(plan, hub)
        f["loaded"].append(await latency_under(plan, work, hub, plan.loads[0]))
    async with live_hub("latency-500", work, database, sampler) as hub:
        f["loaded"].append(await latency_under(plan, work, hub, plan.loads[1]))
    async with live_hub("flood", work, database, sampler) as hub:
        f["acute"] = await acute_during_flood(plan, work, hub)


def _keep_logs(work: Path, out_dir: Path) -> None:
    """The hub, worker and wrk logs next to the JSON (no tokens in them)."""
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for path in work.rglob("*.log"):
        relative = path.relative_to(work)
        target = logs / str(relative).replace(os.sep, "-")
        target.write_bytes(path.read_bytes())


def write_outputs(run: Run, plan: Plan) -> Path:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = json.dumps(asdict(run), indent=2, ensure_ascii=False, default=str)
    latest = plan.out_dir / "latest.json"
    latest.write_text(document, encoding="utf-8")
    (plan.out_dir / f"{stamp}-{plan.database}.json").write_text(document, encoding="utf-8")
    return latest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="shorter steps, smaller backlog")
    parser.add_argument("--profile", action="store_true", help="pyinstrument under intake load")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    args = parser.parse_args(argv)
    plan = Plan.from_args(args)
    if args.profile_only:
        return asyncio.run(profile_only(plan))
    started = time.monotonic()
    run = asyncio.run(run_all(plan))
    path = write_outputs(run, plan)
    rows = [tools.Row(**row) for row in run.table]
    m = run.machine
    print()
    print(
        f"Renkei Hub benchmark — {plan.database}, embedded Tansu, commit {m['commit']}"
        f"{' (dirty)' if m['dirty'] else ''}, {m['cpus']} cores, load average at start "
        f"{m['load_average_at_start'][0]:.1f}, {time.monotonic() - started:.0f} s"
    )
    lim = run.limits
    print(
        f"limits in effect: {lim['rate_limit_per_second']:.0f}/s burst {lim['rate_limit_burst']}"
        f" and {lim['process_message_concurrency']} messages in flight per client; the load "
        f"rotates {lim['load_tokens']} tokens of 2 hospitals (≤ {lim['most_in_flight_per_token']}"
        f" in flight per token)"
    )
    print(tools.render_table(rows))
    if "profile" in run.figures:
        where = run.figures["profile"]["path"]
        print(f"profile (pyinstrument, hub main process, 32 conn): {where}")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
