"""Manual proof that deploy/kafka runs real Apache Kafka 4.4.0 (not collected by pytest).

    .venv/bin/python tests/kafka_smoke_check.py

1 node: start, idempotent produce + consume, stop. 3 nodes: start, check that start() only
returned once every node serves metadata listing all three brokers, create a 6-partition RF-3
topic, produce with enable_idempotence + acks=all, consume back, SIGKILL a node, produce
again, SIGSTOP/SIGCONT another, restart the killed node, consume everything, stop.
start() is deliberately called from inside the running event loop, as tests may do.
Prints timings; exits non-zero on any failure.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.kafka.cluster import (  # noqa: E402
    KafkaCluster,
    _probe_metadata,
    ensure_jars,
    java_available,
)

TIMINGS: dict[str, float] = {}


def timed(label: str, t0: float) -> None:
    TIMINGS[label] = time.monotonic() - t0
    print(f"  {label}: {TIMINGS[label]:.2f}s", flush=True)


async def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=30000
    )
    await producer.start()
    try:
        for i in range(start, start + count):
            await producer.send(topic, key=f"k{i % 17}".encode(), value=f"v{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, group: str) -> set[str]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        async with asyncio.timeout(60):
            while len(seen) < expected:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    seen.update(r.value.decode() for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


async def create_topic(bootstrap: str, topic: str, partitions: int, rf: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, rf)])
        # Wait for every partition to have a leader and a full ISR.
        async with asyncio.timeout(30):
            while True:
                (desc,) = await admin.describe_topics([topic])
                parts = desc["partitions"]
                if len(parts) == partitions and all(
                    p["leader"] >= 0 and len(p["isr"]) == rf for p in parts
                ):
                    break
                await asyncio.sleep(0.2)
        print(f"  topic {topic}: " + ", ".join(
            f"p{p['partition']} leader={p['leader']} isr={sorted(p['isr'])}"
            for p in sorted(parts, key=lambda p: p["partition"])
        ))  # fmt: skip
    finally:
        await admin.close()


def check_start_waited(cluster: KafkaCluster) -> None:
    """Right after start() returns, every node must already answer with all brokers."""
    for node_id in cluster.node_ids:
        view = _probe_metadata(cluster.broker_port(node_id))
        assert view.brokers == frozenset(cluster.node_ids), (node_id, view)
        assert view.controller_id >= 0, (node_id, view)
    print(f"  start() waited: every node lists brokers {cluster.node_ids}")


async def one_node(base: Path) -> None:
    print("== 1 node")
    cluster = KafkaCluster(base / "one", nodes=1)
    t0 = time.monotonic()
    bootstrap = cluster.start()  # synchronous, from inside the running loop
    timed("start 1 node", t0)
    try:
        check_start_waited(cluster)
        await create_topic(bootstrap, "smoke1", 3, 1)
        t0 = time.monotonic()
        await produce(bootstrap, "smoke1", 0, 100)
        got = await consume_all(bootstrap, "smoke1", 100, "g1")
        assert got == {f"v{i}" for i in range(100)}
        timed("1 node produce+consume 100", t0)
    finally:
        t0 = time.monotonic()
        cluster.stop()
        timed("stop 1 node", t0)
    assert all(cluster.pid(n) is None for n in cluster.node_ids)


async def three_nodes(base: Path) -> None:
    print("== 3 nodes")
    cluster = KafkaCluster(base / "three", nodes=3)
    t0 = time.monotonic()
    bootstrap = cluster.start()
    timed("start 3 nodes", t0)
    print(f"  bootstrap {bootstrap}")
    try:
        check_start_waited(cluster)
        topic = "renkei.smoke"
        t0 = time.monotonic()
        await create_topic(bootstrap, topic, 6, 3)
        timed("create topic 6x3", t0)

        t0 = time.monotonic()
        await produce(bootstrap, topic, 0, 200)
        timed("produce 200 (idempotent, acks=all)", t0)
        t0 = time.monotonic()
        got = await consume_all(bootstrap, topic, 200, "g-a")
        assert got == {f"v{i}" for i in range(200)}, len(got)
        timed("consume 200 (new group)", t0)

        victim = 1
        cluster.kill(victim, signal.SIGKILL)
        assert cluster.pid(victim) is None
        print(f"  SIGKILLed node {victim}")
        t0 = time.monotonic()
        await produce(bootstrap, topic, 200, 200)
        timed("produce 200 with a node SIGKILLed", t0)

        cluster.kill(3, signal.SIGSTOP)
        await asyncio.sleep(1)
        cluster.kill(3, signal.SIGCONT)
        print("  SIGSTOP/SIGCONT node 3 for 1s")

        t0 = time.monotonic()
        cluster.start_node(victim)
        timed(f"restart node {victim} (until all nodes see it)", t0)
        check_start_waited(cluster)

        t0 = time.monotonic()
        await produce(bootstrap, topic, 400, 100)
        got = await consume_all(bootstrap, topic, 500, "g-b")
        assert got == {f"v{i}" for i in range(500)}, len(got)
        timed("produce 100 + consume all 500 after restart", t0)

        t0 = time.monotonic()
        cluster.stop_node(2)
        timed("clean stop of node 2", t0)
        cluster.start_node(2)
        print("  node 2 back")
    finally:
        t0 = time.monotonic()
        cluster.stop()
        timed("stop 3 nodes", t0)
    cluster.stop()  # idempotent
    assert all(cluster.pid(n) is None for n in cluster.node_ids)


async def main() -> int:
    if not java_available():
        print("java/mvn not on PATH")
        return 2
    t0 = time.monotonic()
    print(f"jars: {ensure_jars()}")
    timed("ensure_jars", t0)
    with tempfile.TemporaryDirectory(prefix="renkei-kafka-smoke-") as tmp:
        await one_node(Path(tmp))
        await three_nodes(Path(tmp))
    print("== timings")
    for label, secs in TIMINGS.items():
        print(f"  {secs:7.2f}s  {label}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
