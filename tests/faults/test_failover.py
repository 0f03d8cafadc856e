"""Failover on a 3-broker Apache Kafka cluster while messages keep arriving.

Three scenarios, each on a fresh hub (PostgreSQL, its own topics) on one shared cluster
(RF 3, min.insync.replicas 2, unclean leader election off):

1. SIGKILL the leader of the busiest event partition, post on for 15 s, restart the node.
2. SIGSTOP the active KRaft controller for 20 s, then SIGCONT it.
3. Rolling restart of all three brokers, waiting for the full ISR between nodes.

A poster POSTs ~8 messages/s the whole time (acute-change and admission, patients p01..p10,
p01 four times as often so one partition is clearly the busiest). Afterwards, bounded: every
accepted event is routed (lost 0), no (event, recipient) notified twice, every event reaches
exactly the recipients its patient's baseline event of the same type reached (p03 has no
consent: nobody), and per patient and event type the events are routed in POST order. The
order is also read back from Kafka itself (first copy of each event per key, in offset order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import signal
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select

from deploy.kafka.cluster import KafkaCluster
from producers.models import OutboxRecord
from renkei.hub import Hub
from schemas.envelope import HEADER_EVENT_ID
from schemas.events import EventType
from schemas.topics import event_topic
from services.intake.models import STATUS_ACCEPTED, Event
from services.notifications.models import Notification
from tests.conftest import _api
from tests.faults import report
from tests.faults.conftest import HUB_TUNING
from tests.hubtools import event_id_of, headers, message, sender_of, unrouted_count, wait_routed

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

RATE = 8.0  # POSTs per second
PATIENTS = [f"p{n:02d}" for n in range(1, 11)]
WEIGHTS = [4, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # p01 makes its partition the busiest
TYPES = (EventType.ACUTE_CHANGE, EventType.ADMISSION)
DRAIN_WITHIN = 120.0
HEALTHY_WITHIN = 90.0
NODES = 3
CONTROLLER_LINE = re.compile(r"Becoming the active controller at epoch (\d+)")
WATCHED_LOGGERS = ("producers.relay", "consumers.routing", "services", "renkei", "aiokafka")

SETUP = (
    "Cluster: Apache Kafka 4.4.0, 3 KRaft nodes (broker+controller each) on loopback, "
    "RF 3, min.insync.replicas 2, unclean.leader.election.enable false, "
    "broker.session.timeout.ms 6000, replica.lag.time.max.ms 10000. "
    f"Hub: one process (intake, relay, router), PostgreSQL 18 (embedded), 3 partitions per "
    f"topic, idempotent producer acks=all, relay re-drive after "
    f"{HUB_TUNING['relay_redeliver_after_seconds']:.0f} s, back-off max "
    f"{HUB_TUNING['relay_backoff_max_seconds']:.0f} s, consumer session "
    f"{HUB_TUNING['consumer_session_timeout_ms']} ms. "
    f"Load: {RATE:.0f} POST/s, one at a time, acute-change and admission, p01..p10 (p01 x4; "
    "p03 has no consent, its events route to nobody). Delays are Event.routed_at - "
    "Event.accepted_at (the POST's commit -> the router's commit of the notifications)."
)


# -- the load ----------------------------------------------------------------------------


@dataclass
class Post:
    seq: int
    patient: str
    event_type: EventType
    at: float  # on the scenario clock
    seconds: float
    status: int | None
    event_id: str | None
    error: str | None = None


class Clock:
    """The scenario clock (0 = posting starts) and its timeline."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.t0 = time.monotonic()
        self.wall0 = datetime.now(UTC)
        self.timeline: list[str] = []

    def at(self, moment: datetime) -> float:
        """A database timestamp on the scenario clock."""
        return (moment - self.wall0).total_seconds()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, text: str) -> None:
        entry = f"t={self.now():6.1f}s  {text}"
        self.timeline.append(entry)
        print(f"[{self.scenario}] {entry}", flush=True)

    async def until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


class Poster:
    """POSTs one message at a time at RATE per second until told to stop."""

    def __init__(self, hub: Hub, client: httpx.AsyncClient, clock: Clock, seed: int) -> None:
        self.hub = hub
        self.client = client
        self.clock = clock
        self.rng = random.Random(seed)
        self.posts: list[Post] = []

    async def run(self, stop: asyncio.Event) -> None:
        next_at = self.clock.now()
        while not stop.is_set():
            patient = self.rng.choices(PATIENTS, WEIGHTS)[0]
            event_type = self.rng.choice(TYPES)
            bundle = message(event_type, patient)
            started = self.clock.now()
            status = event_id = error = None
            try:
                response = await asyncio.wait_for(
                    self.client.post(
                        "/fhir/$process-message",
                        json=bundle,
                        headers=headers(self.hub, sender_of(bundle)),
                    ),
                    15,
                )
                status = response.status_code
                if status == 202:
                    event_id = event_id_of(response.json())
                else:
                    error = response.text[:300]
            except Exception as exc:  # noqa: BLE001 - a failed POST is a finding, not a crash
                error = repr(exc)[:300]
            seconds = self.clock.now() - started
            self.posts.append(
                Post(
                    len(self.posts), patient, event_type, started, seconds, status, event_id, error
                )
            )
            if error is not None:
                self.clock.mark(f"POST #{len(self.posts) - 1} failed: status {status}: {error}")
            next_at += 1 / RATE
            if next_at < self.clock.now():
                next_at = self.clock.now()  # behind: no burst to catch up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - self.clock.now())


class HubWarnings(logging.Handler):
    """Collects the hub's and aiokafka's warnings during a scenario."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(logging.WARNING)
        self.clock = clock
        self.lines: list[str] = []
        self.counts: Counter[str] = Counter()
        self.republished = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        if "publishing again" in str(record.msg) and record.args:
            self.republished += int(record.args[0])
        self.lines.append(f"t={self.clock.now():6.1f}s {record.levelname} {record.name}: {text}")
        shape = re.sub(r"\d+(\.\d+)?", "N", text)
        shape = re.sub(r"t[0-9a-f]{8}\.", "", shape)  # the test's topic prefix
        self.counts[f"{record.levelname} {record.name}: {shape[:160]}"] += 1

    @contextlib.contextmanager
    def attached(self):
        loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


# -- the cluster ---------------------------------------------------------------------------


async def _admin(cluster: KafkaCluster) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
    except BaseException:
        with contextlib.suppress(Exception):
            await admin.close()
        raise
    return admin


async def describe(cluster: KafkaCluster, topics: list[str]) -> dict[tuple[str, int], dict]:
    """(topic, partition) -> {'leader', 'isr', 'replicas'} as the cluster reports it now."""
    admin = await _admin(cluster)
    try:
        described = await asyncio.wait_for(admin.describe_topics(topics), 10)
    finally:
        await admin.close()
    return {
        (topic["topic"], p["partition"]): p
        for topic in described
        for p in topic.get("partitions", [])
    }


async def wait_healthy(cluster: KafkaCluster, topics: list[str], within: float) -> float:
    """Until the cluster lists all brokers and every partition of ``topics`` (and of the
    offsets topic) has a leader and all replicas in sync. Returns the seconds waited."""
    started = time.monotonic()
    last = "no answer yet"
    while True:
        try:
            admin = await _admin(cluster)
            try:
                brokers = len((await asyncio.wait_for(admin.describe_cluster(), 10))["brokers"])
                described = await asyncio.wait_for(
                    admin.describe_topics([*topics, "__consumer_offsets"]), 10
                )
            finally:
                await admin.close()
            short = [
                f"{t['topic']}/{p['partition']} leader={p['leader']} isr={sorted(p['isr'])}"
                for t in described
                for p in t.get("partitions", [])
                if p["leader"] < 0 or len(p["isr"]) < NODES
            ]
            # The offsets topic exists only once a group has asked for its coordinator.
            errors = [
                t["topic"]
                for t in described
                if t.get("error_code") and t["topic"] != "__consumer_offsets"
            ]
            if brokers == NODES and not short and not errors:
                return time.monotonic() - started
            last = f"brokers={brokers} topic errors={errors} short ISR={short[:4]}"
        except Exception as exc:  # noqa: BLE001 - a node is down: ask again
            last = repr(exc)[:200]
        if time.monotonic() - started > within:
            raise AssertionError(f"cluster not healthy within {within:.0f}s: {last}")
        await asyncio.sleep(0.5)


def event_topics(hub: Hub) -> list[str]:
    return [hub.settings.topic(event_topic(t)) for t in TYPES]


async def end_offsets(hub: Hub, cluster: KafkaCluster) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in event_topics(hub)
            for p in range(hub.settings.topic_partitions)
        ]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def busiest_partition(hub: Hub, cluster: KafkaCluster) -> tuple[str, int, int, int]:
    """(topic, partition, records so far, leader node) of the busiest event partition."""
    offsets = await end_offsets(hub, cluster)
    tp, records = max(offsets.items(), key=lambda item: item[1])
    leader = (await describe(cluster, [tp.topic]))[(tp.topic, tp.partition)]["leader"]
    return tp.topic, tp.partition, records, leader


def active_controller(cluster: KafkaCluster) -> int | None:
    """The node that last became the active KRaft controller (highest epoch in the logs)."""
    best: tuple[int, int | None] = (-1, None)
    for node_id in cluster.node_ids:
        for path in sorted(cluster.node_dir(node_id).glob("server.log*")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for match in CONTROLLER_LINE.finditer(text):
                if int(match.group(1)) > best[0]:
                    best = (int(match.group(1)), node_id)
    return best[1]


def short(topic: str) -> str:
    return topic.split("renkei.event.", 1)[-1]


async def leadership(cluster: KafkaCluster, hub: Hub) -> str:
    try:
        parts = await describe(cluster, event_topics(hub))
    except Exception as exc:  # noqa: BLE001
        return f"(describe failed: {type(exc).__name__})"
    return ", ".join(
        f"{short(topic)}/{p} L{info['leader']} isr={sorted(info['isr'])}"
        for (topic, p), info in sorted(parts.items())
    )


async def kafka_copies(hub: Hub, cluster: KafkaCluster) -> tuple[dict, dict[str, float]]:
    """(topic, partition, key) -> event ids in offset order, and each event's first CreateTime
    (when the relay called send(): splits a delay into before and after the producer)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False)
    await consumer.start()
    copies: dict[tuple[str, int, bytes], list[str]] = defaultdict(list)
    created: dict[str, float] = {}  # event id -> CreateTime of its first copy (epoch seconds)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in event_topics(hub)
            for p in range(hub.settings.topic_partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise AssertionError("could not read the event topics back within 60 s")
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for tp, records in batches.items():
                for record in records:
                    event_id = dict(record.headers).get(HEADER_EVENT_ID, b"").decode()
                    copies[(tp.topic, tp.partition, record.key)].append(event_id)
                    created.setdefault(event_id, record.timestamp / 1000)
    finally:
        await consumer.stop()
    return copies, created


# -- the checks ----------------------------------------------------------------------------


async def post_baseline(hub: Hub, client: httpx.AsyncClient) -> dict[tuple[str, str], frozenset]:
    """One event per patient and type before any fault: who each (patient, type) reaches."""
    posted: dict[tuple[str, str], str] = {}
    for patient in PATIENTS:
        for event_type in TYPES:
            bundle = message(event_type, patient)
            response = await client.post(
                "/fhir/$process-message", json=bundle, headers=headers(hub, sender_of(bundle))
            )
            assert response.status_code == 202, response.text
            posted[(patient, event_type.value)] = event_id_of(response.json())
    await wait_routed(hub, list(posted.values()), within=60)
    async with hub.sessions() as session:
        rows = (
            await session.execute(
                select(Notification.event_id, Notification.recipient).where(
                    Notification.event_id.in_(list(posted.values()))
                )
            )
        ).all()
    by_event: dict[str, set[str]] = defaultdict(set)
    for event_id, recipient in rows:
        by_event[event_id].add(recipient)
    baseline = {key: frozenset(by_event[event_id]) for key, event_id in posted.items()}
    assert not baseline[("p03", "acute-change")], "p03 has no consent: nobody should hear"
    assert baseline[("p01", "acute-change")] and baseline[("p01", "admission")]
    return baseline


async def drain(hub: Hub, event_ids: list[str], within: float) -> float:
    """Seconds until every event is routed (or ``within`` passed)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await unrouted_count(hub, event_ids) == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def inversions(sequence: list[int]) -> int:
    """Adjacent pairs where a later POST came first."""
    return sum(1 for a, b in zip(sequence, sequence[1:], strict=False) if b < a)


async def analyse(
    hub: Hub,
    cluster: KafkaCluster,
    posts: list[Post],
    baseline: dict[tuple[str, str], frozenset],
    result: report.ScenarioResult,
    clock: Clock,
) -> None:
    accepted = [p for p in posts if p.event_id is not None]
    ids = [p.event_id for p in accepted]
    result.posted = len(posts)
    result.accepted = len(accepted)
    result.failed_posts = len(posts) - len(accepted)
    result.longest_post = max((p.seconds for p in posts), default=0.0)
    async with hub.sessions() as session:
        events = {
            row.id: row
            for row in (
                await session.execute(
                    select(
                        Event.id,
                        Event.status,
                        Event.patient_key,
                        Event.accepted_at,
                        Event.routed_at,
                    ).where(Event.id.in_(ids))
                )
            ).all()
        }
        outbox = {
            row.event_id: row
            for row in (
                await session.execute(
                    select(
                        OutboxRecord.event_id, OutboxRecord.sent_at, OutboxRecord.attempts
                    ).where(OutboxRecord.event_id.in_(ids))
                )
            ).all()
        }
        counts = (
            await session.execute(
                select(Notification.event_id, Notification.recipient, func.count())
                .where(Notification.event_id.in_(ids))
                .group_by(Notification.event_id, Notification.recipient)
            )
        ).all()

    unrouted = [i for i in ids if i not in events or events[i].routed_at is None]
    result.lost = len(unrouted)
    if unrouted:
        result.evidence.append(f"never routed: {unrouted[:20]}")
    not_accepted = [i for i in ids if i in events and events[i].status != STATUS_ACCEPTED]
    if not_accepted:
        result.evidence.append(f"{len(not_accepted)} event(s) not 'accepted': {not_accepted[:5]}")

    recipients: dict[str, set[str]] = defaultdict(set)
    for event_id, recipient, count in counts:
        recipients[event_id].add(recipient)
        if count > 1:
            result.duplicated += count - 1
            result.evidence.append(f"duplicate: {event_id} -> {recipient} x{count}")
    for p in accepted:
        if p.event_id in unrouted:
            continue
        want = baseline[(p.patient, p.event_type.value)]
        if recipients[p.event_id] != want:
            result.wrong_recipients += 1
            result.evidence.append(
                f"recipients of {p.event_id} ({p.patient} {p.event_type.value}): "
                f"{sorted(recipients[p.event_id])}, baseline {sorted(want)}"
            )

    # Order: per patient and event type, routed_at follows the POST order.
    chains: dict[tuple[str, str], list[Post]] = defaultdict(list)
    for p in accepted:
        chains[(p.patient, p.event_type.value)].append(p)
    for (patient, event_type), chain in chains.items():
        routed = [events[p.event_id].routed_at for p in chain if p.event_id not in unrouted]
        bad = sum(1 for a, b in zip(routed, routed[1:], strict=False) if b < a)
        if bad:
            result.out_of_order += bad
            result.evidence.append(f"out of order: {patient} {event_type}: {bad} inversion(s)")

    # The same on Kafka: the first copy of each event per key, in offset order.
    seq_of = {p.event_id: p.seq for p in accepted}
    copies, created = await kafka_copies(hub, cluster)
    on_kafka = 0
    partition_of: dict[str, str] = {}
    for (topic, partition, _key), event_ids in copies.items():
        for event_id in event_ids:
            partition_of.setdefault(event_id, f"{short(topic)}/{partition}")
        seen: set[str] = set()
        firsts = []
        for event_id in event_ids:
            if event_id in seq_of:
                on_kafka += 1
                if event_id not in seen:
                    seen.add(event_id)
                    firsts.append(seq_of[event_id])
        bad = inversions(firsts)
        if bad:
            result.kafka_out_of_order += bad
            result.evidence.append(f"Kafka order: {short(topic)}: {bad} inversion(s)")
    result.kafka_records = on_kafka

    delays = [
        (events[i].routed_at - events[i].accepted_at).total_seconds()
        for i in ids
        if i not in unrouted
    ]
    if delays:
        result.p50_delay = statistics.median(delays)
        result.longest_delay = max(delays)
    routed_times = sorted(events[i].routed_at for i in ids if i not in unrouted)
    gaps = [(b - a, a) for a, b in zip(routed_times, routed_times[1:], strict=False)]
    if gaps:
        gap, since = max(gaps)
        result.routing_pause = gap.total_seconds()
        result.details.append(
            f"longest routing pause: {gap.total_seconds():.2f}s from t={clock.at(since):.1f}s"
        )
    # Where the time went: relay (accepted -> acked by Kafka, marked sent) and router
    # (sent -> routed), and the longest delay per partition, with the time of its POST.
    relay = [
        (outbox[i].sent_at - events[i].accepted_at).total_seconds()
        for i in ids
        if i in outbox and outbox[i].sent_at is not None
    ]
    router = [
        (events[i].routed_at - outbox[i].sent_at).total_seconds()
        for i in ids
        if i not in unrouted and i in outbox and outbox[i].sent_at is not None
    ]
    attempts = max((row.attempts for row in outbox.values()), default=0)
    result.details.append(
        f"longest accepted->sent (relay) {max(relay, default=0):.2f}s, "
        f"longest sent->routed (router) {max(router, default=0):.2f}s, "
        f"most publish attempts of one row {attempts}"
    )
    worst: dict[str, tuple[float, float, float, float]] = {}
    for p in accepted:
        if p.event_id in unrouted or p.event_id not in created:
            continue
        event = events[p.event_id]
        delay = (event.routed_at - event.accepted_at).total_seconds()
        before_send = created[p.event_id] - event.accepted_at.timestamp()
        after_send = event.routed_at.timestamp() - created[p.event_id]
        where = partition_of.get(p.event_id, "?")
        if delay > worst.get(where, (-1.0,))[0]:
            worst[where] = (delay, p.at, before_send, after_send)
    result.details.append(
        "longest delay per partition (POST time; waiting for the relay to call send() + "
        "send() -> routed): "
        + "; ".join(
            f"{k} {d:.1f}s (t={t:.1f}s; {b:.1f}s + {a:.1f}s)"
            for k, (d, t, b, a) in sorted(worst.items())
        )
    )


# -- one scenario --------------------------------------------------------------------------


@dataclass
class Context:
    hub: Hub
    cluster: KafkaCluster
    clock: Clock
    fault: list[str] = field(default_factory=list)


Fault = Callable[[Context], Awaitable[None]]


async def run_scenario(
    name: str,
    start_hub: Callable[[], Awaitable[Hub]],
    cluster: KafkaCluster,
    fault: Fault,
    results: list[report.ScenarioResult],
    seed: int,
) -> report.ScenarioResult:
    waited = await wait_healthy(cluster, [], HEALTHY_WITHIN)
    hub = await start_hub()
    await wait_healthy(cluster, [hub.settings.topic(t) for t in event_topics_all()], 60)
    clock = Clock(name)
    result = report.ScenarioResult(scenario=name, fault="")
    warnings = HubWarnings(clock)
    with warnings.attached():
        async for api in _api(hub):
            baseline = await post_baseline(hub, api.client)
            clock = Clock(name)  # posting starts at t=0
            warnings.clock = clock
            if waited > 1:
                clock.mark(f"(cluster needed {waited:.1f}s to be healthy before the scenario)")
            clock.mark(f"leadership: {await leadership(cluster, hub)}")
            poster = Poster(hub, api.client, clock, seed)
            stop = asyncio.Event()
            posting = asyncio.create_task(poster.run(stop))
            context = Context(hub, cluster, clock)
            try:
                await fault(context)
            finally:
                stop.set()
                await posting
            result.duration = clock.now()
            clock.mark(f"posting stopped after {len(poster.posts)} POSTs")
        accepted = [p.event_id for p in poster.posts if p.event_id]
        result.drain_seconds = await drain(hub, accepted, DRAIN_WITHIN)
        clock.mark(f"drain finished after {result.drain_seconds:.1f}s")
        await analyse(hub, cluster, poster.posts, baseline, result, clock)
    result.fault = "; ".join(context.fault)
    result.timeline = clock.timeline
    result.warnings = warnings.counts
    result.republished = warnings.republished
    if result.lost or result.duplicated or result.out_of_order or result.wrong_recipients:
        result.evidence += warnings.lines[:60]
    results.append(result)
    path = report.write(results, SETUP)
    print()
    print(report.table([result]))
    print(f"(written to {path})")
    return result


def event_topics_all() -> list[str]:
    return [event_topic(t) for t in EventType]


def assert_clean(result: report.ScenarioResult) -> None:
    problems = {
        "failed POSTs": result.failed_posts,
        "lost": result.lost,
        "duplicated notifications": result.duplicated,
        "wrong recipients": result.wrong_recipients,
        "out of order": result.out_of_order,
        "out of order on Kafka": result.kafka_out_of_order,
    }
    found = {what: n for what, n in problems.items() if n}
    assert not found, f"{result.scenario}: {found}\n" + "\n".join(result.evidence[:40])
    assert result.accepted > 100, "too few events to say anything"


# -- the scenarios ---------------------------------------------------------------------------


async def kill_busiest_leader(ctx: Context) -> None:
    await ctx.clock.until(6)
    topic, partition, records, leader = await busiest_partition(ctx.hub, ctx.cluster)
    ctx.fault.append(
        f"SIGKILL node {leader}, leader of the busiest partition {short(topic)}/{partition} "
        f"({records} records), 15 s down, then start_node"
    )
    await asyncio.to_thread(ctx.cluster.kill, leader, signal.SIGKILL)
    killed_at = ctx.clock.now()
    ctx.clock.mark(f"SIGKILL node {leader} (leader of {short(topic)}/{partition}, {records} rec)")
    await asyncio.sleep(8)
    ctx.clock.mark(f"leadership: {await leadership(ctx.cluster, ctx.hub)}")
    await ctx.clock.until(killed_at + 15)
    ctx.clock.mark(f"start_node {leader}")
    await asyncio.to_thread(ctx.cluster.start_node, leader)
    ctx.clock.mark(f"node {leader} registered again")
    waited = await wait_healthy(ctx.cluster, event_topics(ctx.hub), HEALTHY_WITHIN)
    ctx.clock.mark(f"full ISR again after {waited:.1f}s: {await leadership(ctx.cluster, ctx.hub)}")
    await asyncio.sleep(5)


async def pause_controller(ctx: Context) -> None:
    await ctx.clock.until(6)
    controller = active_controller(ctx.cluster)
    assert controller is not None, "no 'Becoming the active controller' line in the node logs"
    parts = await describe(ctx.cluster, event_topics(ctx.hub))
    led = [
        f"{short(t)}/{p}" for (t, p), info in sorted(parts.items()) if info["leader"] == controller
    ]
    ctx.fault.append(
        f"SIGSTOP node {controller} (active KRaft controller, leader of {', '.join(led) or '-'}) "
        "for 20 s, then SIGCONT"
    )
    await asyncio.to_thread(ctx.cluster.kill, controller, signal.SIGSTOP)
    ctx.clock.mark(f"SIGSTOP node {controller} (controller; leads {', '.join(led) or '-'})")
    await asyncio.sleep(10)
    ctx.clock.mark(
        f"leadership: {await leadership(ctx.cluster, ctx.hub)}; "
        f"controller now node {active_controller(ctx.cluster)}"
    )
    await ctx.clock.until(6 + 20)
    await asyncio.to_thread(ctx.cluster.kill, controller, signal.SIGCONT)
    ctx.clock.mark(f"SIGCONT node {controller}")
    waited = await wait_healthy(ctx.cluster, event_topics(ctx.hub), HEALTHY_WITHIN)
    ctx.clock.mark(f"full ISR again after {waited:.1f}s: {await leadership(ctx.cluster, ctx.hub)}")
    await asyncio.sleep(5)


async def rolling_restart(ctx: Context) -> None:
    await ctx.clock.until(5)
    ctx.fault.append(
        "stop_node + start_node on nodes 1, 2, 3 in turn, waiting for 3 brokers and full ISR "
        "between nodes"
    )
    for node in ctx.cluster.node_ids:
        started = time.monotonic()
        await asyncio.to_thread(ctx.cluster.stop_node, node)
        ctx.clock.mark(f"node {node} stopped (SIGTERM, {time.monotonic() - started:.1f}s)")
        started = time.monotonic()
        await asyncio.to_thread(ctx.cluster.start_node, node)
        ctx.clock.mark(f"node {node} started ({time.monotonic() - started:.1f}s)")
        waited = await wait_healthy(ctx.cluster, event_topics(ctx.hub), HEALTHY_WITHIN)
        ctx.clock.mark(f"full ISR after {waited:.1f}s: {await leadership(ctx.cluster, ctx.hub)}")
    await asyncio.sleep(5)


async def test_sigkill_leader_of_busiest_partition(kafka3, failover_hub, failover_results):
    result = await run_scenario(
        "1. SIGKILL busiest leader", failover_hub, kafka3, kill_busiest_leader, failover_results, 1
    )
    assert_clean(result)


async def test_sigstop_active_controller(kafka3, failover_hub, failover_results):
    result = await run_scenario(
        "2. SIGSTOP controller 20 s", failover_hub, kafka3, pause_controller, failover_results, 2
    )
    assert_clean(result)


async def test_rolling_restart_of_all_brokers(kafka3, failover_hub, failover_results):
    result = await run_scenario(
        "3. rolling restart", failover_hub, kafka3, rolling_restart, failover_results, 3
    )
    assert_clean(result)
