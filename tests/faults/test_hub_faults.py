"""Hub-level faults while messages keep arriving over real HTTP (`make test-faults`).

Each scenario runs the whole hub as the operator does, `renkei up` in a process group of its
own (tests/faults/hubproc.py), on a fresh PostgreSQL database (the suite's embedded server)
and its own topics on a 3-broker Apache Kafka cluster the test owns, so that killing the hub
leaves the broker standing. (With the embedded Tansu the kill would take the broker with it,
and Tansu keeps nothing across a restart: that is the relay's re-drive, not this.)

1. The whole hub SIGKILLed with unsent rows in the outbox, and started again.
2. PostgreSQL restarted under load (fast shutdown, started again on the same socket).
3. PostgreSQL away for 10 s (stopped, then started): the intake must answer 503 with an
   OperationOutcome meanwhile, and nothing answered 2xx may be lost. 3b: the same 10 s with
   every PostgreSQL process SIGSTOPped (a partition: connections stay open, nothing answers).
4. The broker delivering records twice: every event record is published a second time while
   the stream runs, and afterwards the router's committed offsets are rewound to 0 so it
   reads everything again.
5. Two of three brokers down at once (one SIGKILLed, one SIGSTOPped) for 20 s: everything
   visible within 30 s of the quorum's return (issue 13's target).

A poster sends RATE messages a second, open loop across patients (a slow answer does not slow
the others) but one at a time per patient (a sender waits for its answer before sending the
next message about the same patient, which is what the per-patient order promise is about).
Afterwards, bounded: every event answered 202 is routed and reaches its patient's baseline
recipients (lost 0), no (event, recipient) has two notifications or two notification records
in the outbox (duplicated 0), and per patient and event type the events are routed, and first
published, in POST order. "Fault end -> all visible" is the fault's end (the restart command,
the database started, the quorum back) to the routing of the last event accepted before it
(Event.routed_at: its notifications are committed in that transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import func, select

from consumers.routing.router import URGENT_GROUP_SUFFIX
from deploy.kafka.cluster import KafkaCluster
from producers.models import OutboxRecord
from renkei.hub import Hub
from schemas.events import EventType
from schemas.topics import LANE_URGENT, LANES, NOTIFICATION_TOPIC, event_topics_of
from services.intake.models import STATUS_ACCEPTED, Event
from services.notifications.models import Notification
from tests.conftest import make_settings
from tests.databases import fresh_database_url
from tests.faults import report
from tests.faults.conftest import HUB_TUNING
from tests.faults.hubproc import HubProcess
from tests.faults.postgres import EmbeddedPostgres
from tests.faults.test_failover import (
    PATIENTS,
    TYPES,
    WEIGHTS,
    Clock,
    Post,
    active_controller,
    analyse,
    busiest_partition,
    event_topics,
    event_topics_all,
    leadership,
    post_baseline,
    short,
    wait_healthy,
)
from tests.hubtools import event_id_of, headers, load_region, message, sender_of

pytestmark = [pytest.mark.faults, pytest.mark.timeout(360)]

RATE = 10.0  # POSTs per second, offered
POST_TIMEOUT = 15.0
DRAIN_WITHIN = 90.0
HEALTHY_WITHIN = 90.0
QUORUM_TARGET = 30.0  # issue 13: visible within 30 s of the quorum's return

SETUP = (
    "Cluster: Apache Kafka 4.4.0, 3 KRaft nodes (broker+controller each) on loopback, "
    "RF 3, min.insync.replicas 2, unclean leader election off. "
    "Hub: `renkei up` as a subprocess (its own process group) on 127.0.0.1, "
    "RENKEI_KAFKA_BOOTSTRAP at the cluster, PostgreSQL 18 (embedded, Unix socket), 3 partitions "
    f"per topic, relay re-drive after {HUB_TUNING['relay_redeliver_after_seconds']:.0f} s, "
    f"back-off max {HUB_TUNING['relay_backoff_max_seconds']:.0f} s, consumer session "
    f"{HUB_TUNING['consumer_session_timeout_ms']} ms, everything else default. "
    f"Load: {RATE:.0f} POST/s offered over real HTTP, open loop across patients, one at a time "
    "per patient, acute-change and admission, p01..p10 (p01 x4; p03 has no consent). "
    "Delays are Event.routed_at - Event.accepted_at."
)


# -- the stage: cluster, database, the hub process, and a view of its database --------------


@dataclass
class Stage:
    cluster: KafkaCluster
    hub: Hub  # this process's view of the hub's database and settings (no workers, no broker)
    proc: HubProcess
    work_dir: Path

    @property
    def settings(self):  # noqa: ANN201 - renkei.settings.Settings
        return self.hub.settings


@pytest.fixture(scope="module")
def hub_fault_results() -> Iterator[list[report.ScenarioResult]]:
    """Scenario rows; the report file is rewritten after each scenario and printed at the end."""
    results: list[report.ScenarioResult] = []
    yield results
    if results:
        print(f"\n\nHub faults report ({report.HUB_FAULTS_REPORT_PATH})\n")
        print(report.table(results))


@pytest.fixture
async def stage(tmp_path: Path, work_dir: Path, kafka3: KafkaCluster) -> AsyncIterator[Stage]:
    """A fresh database and topic prefix, the region loaded, `renkei up` answering /readyz."""
    await wait_healthy(kafka3, [], HEALTHY_WITHIN)
    database_url = await fresh_database_url("postgresql", work_dir)
    settings = make_settings(tmp_path, database_url, kafka3.bootstrap).model_copy(update=HUB_TUNING)
    hub = Hub(settings)
    await hub.start(broker=False, workers=False)  # migrations, keys, the region office
    await load_region(hub)
    proc = HubProcess(settings, tmp_path)
    try:
        proc.spawn()
        await proc.wait_ready()
        await wait_healthy(kafka3, [settings.topic(t) for t in event_topics_all()], 60)
        yield Stage(kafka3, hub, proc, work_dir)
    finally:
        await asyncio.to_thread(proc.stop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hub.stop(), 30)


# -- the load -------------------------------------------------------------------------------


@dataclass
class HubPost(Post):
    outcome: bool = False  # the answer's body is an OperationOutcome


class Poster:
    """RATE POSTs a second over HTTP; a patient with a POST in flight is skipped that tick."""

    def __init__(self, hub: Hub, base_url: str, clock: Clock, seed: int) -> None:
        self.hub = hub
        self.base_url = base_url
        self.clock = clock
        self.rng = random.Random(seed)
        self.posts: list[HubPost] = []
        self.busy: set[str] = set()
        self.skipped = 0  # ticks with every patient in flight
        self._seq = 0
        self._headers: dict[str, dict] = {}

    def _auth(self, sender: str) -> dict:
        if sender not in self._headers:
            self._headers[sender] = headers(self.hub, sender)
        return self._headers[sender]

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits) as client:
            in_flight: set[asyncio.Task[None]] = set()
            next_at = self.clock.now()
            while not stop.is_set():
                free = [
                    (p, w) for p, w in zip(PATIENTS, WEIGHTS, strict=True) if p not in self.busy
                ]
                if free:
                    patient = self.rng.choices([p for p, _ in free], [w for _, w in free])[0]
                    event_type = self.rng.choice(TYPES)
                    self.busy.add(patient)
                    task = asyncio.create_task(self._post(client, patient, event_type))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.skipped += 1
                next_at += 1 / RATE
                if next_at < self.clock.now():
                    next_at = self.clock.now()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_at - self.clock.now())
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _post(self, client: httpx.AsyncClient, patient: str, event_type: EventType) -> None:
        seq, self._seq = self._seq, self._seq + 1
        bundle = message(event_type, patient)
        started = self.clock.now()
        status = event_id = error = None
        outcome = False
        try:
            response = await client.post(
                "/fhir/$process-message",
                json=bundle,
                headers=self._auth(sender_of(bundle)),
                timeout=POST_TIMEOUT,
            )
            status = response.status_code
            with contextlib.suppress(ValueError):
                outcome = response.json().get("resourceType") == "OperationOutcome"
            if status == 202:
                event_id = event_id_of(response.json())
            else:
                error = response.text[:300]
        except Exception as exc:  # noqa: BLE001 - a failed POST is a finding, not a crash
            error = repr(exc)[:300]
        finally:
            self.busy.discard(patient)
        seconds = self.clock.now() - started
        self.posts.append(
            HubPost(seq, patient, event_type, started, seconds, status, event_id, error, outcome)
        )

    def in_order(self) -> list[Post]:
        return sorted(self.posts, key=lambda p: p.seq)

    def answers(self, since: float = float("-inf"), until: float = float("inf")) -> Counter[str]:
        """What the intake answered to POSTs started in [since, until): status or exception."""
        counts: Counter[str] = Counter()
        for p in self.posts:
            if since <= p.at < until:
                what = str(p.status) if p.status is not None else (p.error or "?").split("(")[0]
                counts[what] += 1
        return counts


# -- the checks beyond analyse() ----------------------------------------------------------


async def outbox_unsent(hub: Hub) -> tuple[int, int]:
    """(unsent rows, of which claimed by a relay now)."""
    async with hub.sessions() as session:
        unsent = await session.scalar(
            select(func.count()).select_from(OutboxRecord).where(OutboxRecord.sent_at.is_(None))
        )
        claimed = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.sent_at.is_(None), OutboxRecord.claimed_until.is_not(None))
        )
    return unsent or 0, claimed or 0


async def notification_records_beyond_one(hub: Hub, ids: list[str]) -> list[str]:
    """Events with more notification records in the outbox than notifications: a recipient
    would be told twice downstream even though the notification table holds one row."""
    async with hub.sessions() as session:
        records = dict(
            (
                await session.execute(
                    select(OutboxRecord.event_id, func.count())
                    .where(OutboxRecord.event_id.in_(ids), OutboxRecord.topic == NOTIFICATION_TOPIC)
                    .group_by(OutboxRecord.event_id)
                )
            ).all()
        )
        rows = dict(
            (
                await session.execute(
                    select(Notification.event_id, func.count())
                    .where(Notification.event_id.in_(ids))
                    .group_by(Notification.event_id)
                )
            ).all()
        )
    return [
        f"{event_id}: {count} notification records, {rows.get(event_id, 0)} notifications"
        for event_id, count in records.items()
        if count > rows.get(event_id, 0)
    ]


async def accepted_events(hub: Hub) -> dict[str, tuple[datetime, datetime | None]]:
    """Every event the hub accepted (this database is the scenario's alone): id ->
    (accepted_at, routed_at), answered to the client or not."""
    async with hub.sessions() as session:
        rows = (
            await session.execute(
                select(Event.id, Event.accepted_at, Event.routed_at).where(
                    Event.status == STATUS_ACCEPTED
                )
            )
        ).all()
    return {row.id: (row.accepted_at, row.routed_at) for row in rows}


async def drain_all(hub: Hub, within: float) -> float:
    """Seconds until every accepted event in the database is routed (or ``within`` passed)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        with contextlib.suppress(Exception):  # the database may still be coming back
            events = await accepted_events(hub)
            if all(routed is not None for _accepted, routed in events.values()):
                break
        await asyncio.sleep(0.25)
    return time.monotonic() - started


# -- one scenario ---------------------------------------------------------------------------


@dataclass
class Context:
    stage: Stage
    clock: Clock
    poster: Poster | None = None
    fault: list[str] = field(default_factory=list)
    fault_end: datetime | None = None  # wall clock; set by the fault
    notes: list[str] = field(default_factory=list)
    extra_duplicates: int = 0
    extra_evidence: list[str] = field(default_factory=list)
    away: tuple[float, float] = (0.0, 0.0)  # scenario 3: the database's absence, scenario clock

    def ended(self, text: str) -> None:
        self.fault_end = datetime.now(self.clock.wall0.tzinfo)
        self.clock.mark(f"fault ends: {text}")


Fault = Callable[[Context], Awaitable[None]]


async def run_scenario(
    name: str,
    stage: Stage,
    fault: Fault,
    results: list[report.ScenarioResult],
    seed: int,
    after_posting: Fault | None = None,
) -> tuple[report.ScenarioResult, Context]:
    hub, cluster = stage.hub, stage.cluster
    async with httpx.AsyncClient(base_url=stage.proc.base_url, timeout=30) as client:
        baseline = await post_baseline(hub, client)
    before_posting = set(await accepted_events(hub))  # the baseline's events
    clock = Clock(name)  # posting starts at t=0
    clock.mark(f"leadership: {await leadership(cluster, hub)}")
    poster = Poster(hub, stage.proc.base_url, clock, seed)
    ctx = Context(stage, clock, poster)
    stop = asyncio.Event()
    posting = asyncio.create_task(poster.run(stop))
    try:
        await fault(ctx)
    finally:
        stop.set()
        await posting
    result = report.ScenarioResult(scenario=name, fault="")
    result.duration = clock.now()
    clock.mark(f"posting stopped after {len(poster.posts)} POSTs ({poster.skipped} ticks skipped)")
    if after_posting is not None:
        await after_posting(ctx)
    result.drain_seconds = await drain_all(hub, DRAIN_WITHIN)
    clock.mark(f"drain finished after {result.drain_seconds:.1f}s")
    await analyse(hub, cluster, poster.in_order(), baseline, result, clock)

    # Beyond the answered ones: anything the hub accepted whose answer the client never got.
    answered = {p.event_id for p in poster.posts if p.event_id}
    events = await accepted_events(hub)
    unanswered = [i for i in events if i not in answered and i not in before_posting]
    unanswered_unrouted = [i for i in unanswered if events[i][1] is None]
    result.lost += len(unanswered_unrouted)
    if unanswered_unrouted:
        result.evidence.append(
            f"accepted, answer not received, never routed: {unanswered_unrouted}"
        )
    double = await notification_records_beyond_one(hub, list(events))
    result.duplicated += len(double) + ctx.extra_duplicates
    result.evidence += [f"notification records beyond one: {d}" for d in double[:20]]
    result.evidence += ctx.extra_evidence

    if ctx.fault_end is not None:
        before = [routed for accepted, routed in events.values() if accepted <= ctx.fault_end]
        if all(routed is not None for routed in before):
            last = max(before, default=ctx.fault_end)
            result.fault_end_to_visible = max(0.0, (last - ctx.fault_end).total_seconds())
        after = [
            (routed - accepted).total_seconds()
            for accepted, routed in events.values()
            if accepted > ctx.fault_end and routed is not None
        ]
        result.details.append(
            f"events accepted before the fault's end: {len(before)}; "
            f"longest POST->routed of those accepted after it: {max(after, default=0):.2f}s"
        )
    result.details.append(f"answers: {dict(poster.answers())}")
    result.details.append(
        f"{len(unanswered)} event(s) accepted whose answer the client did not get (timeout, "
        "connection cut); all routed unless counted as lost"
    )
    result.details += ctx.notes
    result.fault = "; ".join(ctx.fault)
    result.timeline = clock.timeline
    counts, tracebacks = stage.proc.problems()
    result.warnings = counts
    result.republished = stage.proc.republished()
    if tracebacks:
        result.evidence += [
            f"{n} x traceback in the hub's log ending: {line}"
            for line, n in tracebacks.most_common(10)
        ]
    results.append(result)
    path = report.write(
        results,
        SETUP,
        report.HUB_FAULTS_REPORT_PATH,
        "Hub faults report",
        "tests/faults/test_hub_faults.py",
    )
    print()
    print(report.table([result]))
    for line in result.details + result.evidence[:30]:
        print(f"  {line}")
    print(f"(written to {path}; hub logs {', '.join(map(str, stage.proc.log_paths))})")
    return result, ctx


def assert_clean(result: report.ScenarioResult, *, posts_may_fail: bool) -> None:
    problems = {
        "lost": result.lost,
        "duplicated": result.duplicated,
        "wrong recipients": result.wrong_recipients,
        "out of order": result.out_of_order,
        "out of order on Kafka": result.kafka_out_of_order,
    }
    if not posts_may_fail:
        problems["failed POSTs"] = result.failed_posts
    found = {what: n for what, n in problems.items() if n}
    assert not found, f"{result.scenario}: {found}\n" + "\n".join(result.evidence[:40])
    assert result.accepted > 80, f"too few events to say anything ({result.accepted})"


# -- 1. the whole hub SIGKILLed with rows in the outbox -------------------------------------


async def kill_whole_hub(ctx: Context) -> None:
    stage, clock = ctx.stage, ctx.clock
    await clock.until(5)
    # The cluster frozen for a few seconds, so the outbox holds a backlog when the hub dies
    # (some rows claimed by the relay that is about to die, some not yet claimed).
    for node in stage.cluster.node_ids:
        await asyncio.to_thread(stage.cluster.kill, node, signal.SIGSTOP)
    clock.mark("SIGSTOP all three brokers (the outbox fills)")
    await asyncio.sleep(4)
    unsent, claimed = await outbox_unsent(stage.hub)
    killed = await asyncio.to_thread(stage.proc.kill, signal.SIGKILL)
    clock.mark(
        f"SIGKILL the whole hub ({killed} process(es)); outbox: {unsent} unsent, {claimed} claimed"
    )
    ctx.fault.append(
        f"brokers SIGSTOPped 4 s so the outbox fills; hub SIGKILLed ({killed} process(es)) with "
        f"{unsent} unsent outbox rows ({claimed} claimed by its relay); brokers SIGCONT; "
        "`renkei up` started again 2 s later"
    )
    for node in stage.cluster.node_ids:
        await asyncio.to_thread(stage.cluster.kill, node, signal.SIGCONT)
    clock.mark("SIGCONT all three brokers")
    assert unsent > 0, "scenario precondition: rows in the outbox when the hub is killed"
    await asyncio.sleep(2)
    stage.proc.spawn()
    ctx.ended("`renkei up` started again")
    ready = await stage.proc.wait_ready()
    clock.mark(f"hub ready again after {ready:.1f}s")
    ctx.notes.append(f"restarted hub answered /readyz {ready:.1f}s after its start")
    await asyncio.sleep(10)


async def test_whole_hub_sigkilled_with_unsent_outbox(stage, hub_fault_results):
    result, _ctx = await run_scenario(
        "1. hub SIGKILLed, outbox unsent", stage, kill_whole_hub, hub_fault_results, 11
    )
    assert_clean(result, posts_may_fail=True)


# -- 2. PostgreSQL restarted under load -----------------------------------------------------


async def restart_postgres(ctx: Context) -> None:
    postgres = EmbeddedPostgres(ctx.stage.work_dir)
    await ctx.clock.until(6)
    started = time.monotonic()
    await asyncio.to_thread(postgres.stop)
    ctx.clock.mark(f"PostgreSQL stopped (fast shutdown, {time.monotonic() - started:.1f}s)")
    started = time.monotonic()
    await asyncio.to_thread(postgres.start)
    ctx.fault.append("pg_ctl stop -m fast, then start on the same socket at once")
    ctx.ended(f"PostgreSQL started again ({time.monotonic() - started:.1f}s)")
    await asyncio.sleep(12)


async def test_postgres_restarted_under_load(stage, hub_fault_results):
    result, _ctx = await run_scenario(
        "2. PostgreSQL restarted", stage, restart_postgres, hub_fault_results, 12
    )
    assert_clean(result, posts_may_fail=True)


# -- 3. the database away for 10 s ----------------------------------------------------------

AWAY_SECONDS = 10.0


async def database_away(ctx: Context) -> None:
    postgres = EmbeddedPostgres(ctx.stage.work_dir)
    await ctx.clock.until(6)
    await asyncio.to_thread(postgres.stop)
    away_from = ctx.clock.now()
    ctx.clock.mark("PostgreSQL stopped")
    await ctx.clock.until(away_from + AWAY_SECONDS)
    away_until = ctx.clock.now()  # the server accepts connections before pg_ctl returns
    await asyncio.to_thread(postgres.start)
    ctx.fault.append(f"PostgreSQL stopped (fast) for {AWAY_SECONDS:.0f} s, then started")
    ctx.ended("PostgreSQL started again")
    ctx.notes.append(f"database away from t={away_from:.1f}s to t={away_until:.1f}s")
    ctx.away = (away_from + 1.0, away_until)  # a POST already in flight at the stop may pass
    await asyncio.sleep(12)


async def test_database_away_for_10_seconds(stage, hub_fault_results):
    result, ctx = await run_scenario(
        "3. database away 10 s", stage, database_away, hub_fault_results, 13
    )
    since, until = ctx.away
    # Answered while it was away (a POST held until the database came back may be accepted).
    during = [p for p in ctx.poster.posts if since <= p.at and p.at + p.seconds < until]
    answers = ctx.poster.answers(since, until)
    print(f"  intake answers while the database was away: {dict(answers)}")
    not_503 = [p for p in during if p.status != 503 or not p.outcome]
    refusals = (
        f"while the database is away the intake must answer 503 with an OperationOutcome; it "
        f"answered {dict(answers)}; first: {not_503[0].status} {not_503[0].error}"
        if not_503
        else ""
    )
    assert during, "no POST answered while the database was away"
    try:
        assert_clean(result, posts_may_fail=True)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{refusals}") from None
    assert not refusals, refusals


async def database_frozen(ctx: Context) -> None:
    postgres = EmbeddedPostgres(ctx.stage.work_dir)
    await ctx.clock.until(6)
    frozen = await asyncio.to_thread(postgres.freeze)
    away_from = ctx.clock.now()
    ctx.clock.mark(f"PostgreSQL SIGSTOPped ({frozen} processes)")
    await ctx.clock.until(away_from + AWAY_SECONDS)
    away_until = ctx.clock.now()
    await asyncio.to_thread(postgres.thaw)
    ctx.fault.append(
        f"every PostgreSQL process SIGSTOPped for {AWAY_SECONDS:.0f} s (connections open, "
        "nothing answers: a partition), then SIGCONT"
    )
    ctx.ended("PostgreSQL SIGCONT")
    ctx.away = (away_from, away_until)
    await asyncio.sleep(12)


async def test_database_frozen_for_10_seconds(stage, hub_fault_results):
    """The other way to lose the database: it stops answering without closing anything."""
    result, ctx = await run_scenario(
        "3b. database frozen 10 s", stage, database_frozen, hub_fault_results, 23
    )
    since, until = ctx.away
    print(f"  intake answers to POSTs sent while frozen: {dict(ctx.poster.answers(since, until))}")
    assert_clean(result, posts_may_fail=True)


# -- 4. the broker delivering records twice -------------------------------------------------


class Doubler:
    """Publishes every record of the event topics a second time, same partition, key, value
    and headers, as an at-least-once producer or a replaying broker would."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.copies = 0
        self._own: set[tuple[TopicPartition, int]] = set()  # the copies: not copied again

    async def run(self, stop: asyncio.Event) -> None:
        bootstrap = self.stage.cluster.bootstrap
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await consumer.start()
        await producer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in event_topics(self.stage.hub)
                for p in range(self.stage.settings.topic_partitions)
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for tp, records in batches.items():
                    for record in records:
                        if (tp, record.offset) in self._own:
                            continue
                        sent = await producer.send_and_wait(
                            tp.topic,
                            record.value,
                            key=record.key,
                            headers=list(record.headers),
                            partition=tp.partition,
                        )
                        self._own.add((tp, sent.offset))
                        self.copies += 1
        finally:
            await producer.stop()
            await consumer.stop()


async def double_delivery(ctx: Context) -> None:
    doubler = Doubler(ctx.stage)
    stop = asyncio.Event()
    task = asyncio.create_task(doubler.run(stop))
    ctx.clock.mark("every event record is published a second time from now on")
    await ctx.clock.until(25)
    await asyncio.sleep(1)  # the last POSTs' records
    stop.set()
    await task
    ctx.ended(f"{doubler.copies} records published a second time; no more copies")
    ctx.fault.append(
        f"{doubler.copies} event records published twice (same partition, key, value, headers) "
        "while posting; then the router's committed offsets rewound to 0 and the hub restarted"
    )


def router_groups(stage: Stage) -> dict[str, set[str]]:
    """Each lane's router has its consumer group: group id -> the (prefixed) topics it reads."""
    return {
        stage.settings.router_group_id + (URGENT_GROUP_SUFFIX if lane == LANE_URGENT else ""): {
            stage.settings.topic(t) for t in event_topics_of(lane)
        }
        for lane in LANES
    }


async def group_offsets(stage: Stage) -> dict[TopicPartition, int]:
    """The committed offsets of every event partition, from the group of its lane's router."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stage.cluster.bootstrap)
    await admin.start()
    merged: dict[TopicPartition, int] = {}
    try:
        for group, topics in router_groups(stage).items():
            offsets = await admin.list_consumer_group_offsets(group)
            merged |= {tp: meta.offset for tp, meta in offsets.items() if tp.topic in topics}
    finally:
        await admin.close()
    return merged


async def end_offsets_of(stage: Stage) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stage.cluster.bootstrap)
    await consumer.start()
    try:
        tps = [
            TopicPartition(stage.settings.topic(t), p)
            for t in event_topics_all()
            for p in range(stage.settings.topic_partitions)
        ]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def rewind_router(stage: Stage, within: float = 60.0) -> int:
    """Commit offset 0 for every event partition in its lane router's group (the group must be
    empty: Kafka refuses a commit without a generation while members are in it)."""
    ends = await end_offsets_of(stage)
    for group, topics in router_groups(stage).items():
        await _rewind_group(stage, group, [tp for tp in ends if tp.topic in topics], within)
    return sum(ends.values())


async def _rewind_group(
    stage: Stage, group: str, partitions: list[TopicPartition], within: float
) -> None:
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < within:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stage.cluster.bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
            return
        except Exception as exc:  # noqa: BLE001 - the dead member's session has not expired yet
            last = exc
        finally:
            await consumer.stop()
        await asyncio.sleep(1)
    raise AssertionError(f"could not rewind the router's offsets: {last!r}")


async def count_notifications(hub: Hub) -> tuple[int, int]:
    async with hub.sessions() as session:
        notifications = await session.scalar(select(func.count()).select_from(Notification))
        records = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.topic == NOTIFICATION_TOPIC)
        )
    return notifications or 0, records or 0


async def reread_everything(ctx: Context) -> None:
    """After the doubled stream: every record read again from offset 0 by a restarted hub."""
    stage, clock = ctx.stage, ctx.clock
    await drain_all(stage.hub, DRAIN_WITHIN)
    before = await count_notifications(stage.hub)
    await asyncio.to_thread(stage.proc.stop)
    clock.mark("hub stopped (SIGTERM)")
    records = await rewind_router(stage)
    offsets = await group_offsets(stage)
    clock.mark(
        f"router offsets rewound to 0 ({records} records to read again): {set(offsets.values())}"
    )
    stage.proc.spawn()
    clock.mark("`renkei up` started again with the router at offset 0")
    started = time.monotonic()
    ends = await end_offsets_of(stage)
    while time.monotonic() - started < DRAIN_WITHIN:
        offsets = await group_offsets(stage)
        if all(offsets.get(tp, -1) >= end for tp, end in ends.items() if end):
            break
        await asyncio.sleep(0.5)
    reread = time.monotonic() - started
    clock.mark(f"router read every record again in {reread:.1f}s")
    offsets = await group_offsets(stage)
    behind = {
        f"{short(tp.topic)}/{tp.partition}": (offsets.get(tp), end)
        for tp, end in ends.items()
        if end and offsets.get(tp, -1) < end
    }
    after = await count_notifications(stage.hub)
    ctx.notes.append(
        f"re-read {records} records from offset 0 in {reread:.1f}s; notifications/records "
        f"before {before}, after {after}"
    )
    if behind:
        ctx.extra_evidence.append(f"router did not re-read everything: {behind}")
    if after != before:
        ctx.extra_duplicates += (after[0] - before[0]) + (after[1] - before[1])
        ctx.extra_evidence.append(f"re-reading created notifications/records: {before} -> {after}")
    assert not behind, f"the router did not read its partitions again: {behind}"


async def test_broker_delivering_records_twice(stage, hub_fault_results):
    result, _ctx = await run_scenario(
        "4. records delivered twice",
        stage,
        double_delivery,
        hub_fault_results,
        14,
        after_posting=reread_everything,
    )
    assert_clean(result, posts_may_fail=False)


# -- 5. two of three brokers down for 20 s --------------------------------------------------

MAJORITY_LOST_SECONDS = 20.0


async def lose_majority(ctx: Context) -> None:
    stage, clock = ctx.stage, ctx.clock
    await clock.until(6)
    topic, partition, records, leader = await busiest_partition(stage.hub, stage.cluster)
    controller = active_controller(stage.cluster)
    others = [n for n in stage.cluster.node_ids if n != leader]
    frozen = controller if controller in others else others[0]
    await asyncio.to_thread(stage.cluster.kill, leader, signal.SIGKILL)
    await asyncio.to_thread(stage.cluster.kill, frozen, signal.SIGSTOP)
    lost_at = clock.now()
    clock.mark(
        f"SIGKILL node {leader} (leader of {short(topic)}/{partition}, {records} rec), "
        f"SIGSTOP node {frozen} (controller: {controller}): majority lost"
    )
    ctx.fault.append(
        f"node {leader} SIGKILLed (leader of the busiest partition) and node {frozen} "
        f"SIGSTOPped (the active controller was {controller}) at once, for "
        f"{MAJORITY_LOST_SECONDS:.0f} s; then SIGCONT {frozen} (quorum back), "
        f"start_node {leader}"
    )
    await clock.until(lost_at + MAJORITY_LOST_SECONDS)
    await asyncio.to_thread(stage.cluster.kill, frozen, signal.SIGCONT)
    ctx.ended(f"SIGCONT node {frozen}: two of three voters again")
    await asyncio.to_thread(stage.cluster.start_node, leader)
    clock.mark(f"node {leader} registered again")
    waited = await wait_healthy(stage.cluster, event_topics(stage.hub), HEALTHY_WITHIN)
    clock.mark(f"full ISR after {waited:.1f}s: {await leadership(stage.cluster, stage.hub)}")
    await clock.until(lost_at + MAJORITY_LOST_SECONDS + 15)


async def test_two_of_three_brokers_down_for_20_seconds(stage, hub_fault_results):
    result, ctx = await run_scenario(
        "5. majority lost 20 s", stage, lose_majority, hub_fault_results, 15
    )
    assert_clean(result, posts_may_fail=False)
    # Everything accepted before the quorum came back is visible within the target, and
    # nothing accepted later takes longer than the target either.
    events = await accepted_events(stage.hub)
    late = sum(
        1
        for accepted, routed in events.values()
        if routed is None
        or routed > max(accepted, ctx.fault_end) + timedelta(seconds=QUORUM_TARGET)
    )
    visible = result.fault_end_to_visible
    assert visible is not None and visible <= QUORUM_TARGET and not late, (
        f"everything must be visible within {QUORUM_TARGET:.0f}s of the quorum's return: the "
        f"last event accepted before it was routed "
        f"{'never' if visible is None else f'{visible:.1f}s'} after it; {late} event(s) took "
        "longer than the target"
    )
