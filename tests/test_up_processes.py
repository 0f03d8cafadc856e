"""`renkei up` as the operator runs it: a supervisor process, its HTTP workers, relay, router
and embedded Tansu as real OS processes (temp data dir, free port, SQLite).

Workers are told apart by SIGSTOP: with one frozen, the port still answers, so the other
accepts from the shared socket. Routing runs with a 30 s relay poll, so an event routed within
seconds was woken by the doorbell (renkei.wakeup), not found by the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from producers.models import OutboxRecord
from renkei.dev_ca import make_dev_ca
from renkei.hub import Hub
from renkei.kafka_probe import free_port
from renkei.settings import Settings
from schemas.events import EventType
from tests.hubtools import (
    accept,
    headers,
    load_region,
    message,
    notification_count,
    wait_routed,
)
from tests.test_end_to_end import EXPECTED
from tests.test_metrics import parse, value
from tests.test_router_processes import duplicate_pairs

ROOT = Path(__file__).resolve().parent.parent
PATIENTS = ("p01", "p04", "p05", "p06", "p08", "p09", "p10")


class Up:
    """One `renkei up` subprocess; its output goes to a file (a full pipe would block it)."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.data_dir = tmp_path / "var"
        self.port = free_port()
        self.log = tmp_path / "up.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
        environment.update(
            RENKEI_DATA_DIR=str(self.data_dir),
            RENKEI_PORT=str(self.port),
            RENKEI_HTTP_WORKERS="2",
            RENKEI_TOPIC_PARTITIONS="2",
            RENKEI_CONSUMER_SESSION_TIMEOUT_MS="2000",
            RENKEI_SHUTDOWN_GRACE_SECONDS="10",
            **env,
        )
        self.env = environment
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "up"],
                env=environment, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def children(self) -> dict[int, str]:
        """pid -> "http", "relay", "router" or "tansu", from /proc."""
        found: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) != self.process.pid:
                    continue
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited, not yet reaped
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                words = [a.decode() for a in argv]
                if "worker" in words:
                    found[int(entry)] = words[words.index("worker") + 1]
                elif any("tansu" in word for word in words):
                    found[int(entry)] = "tansu"
        return found

    def pids(self, kind: str) -> list[int]:
        return sorted(pid for pid, name in self.children().items() if name == kind)

    def wait_for(self, kind: str, count: int, without: set[int] = frozenset(), within=90.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pids = [pid for pid in self.pids(kind) if pid not in without]
            if len(pids) == count:
                return pids
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"{count} {kind} process(es) not running: {self.children()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def settings(self) -> Settings:
        url = self.env.get("RENKEI_DATABASE_URL")
        return Settings(data_dir=self.data_dir, kafka_bootstrap=None, database_url=url)


async def wait_sent(hub: Hub, event_ids: list[str], within: float) -> None:
    """Until every outbox row of these events (the event's, its notifications') is sent."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with hub.sessions() as session:
            unsent = await session.scalar(
                select(func.count())
                .select_from(OutboxRecord)
                .where(OutboxRecord.event_id.in_(event_ids), OutboxRecord.sent_at.is_(None))
            )
        if unsent == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{unsent} outbox rows unsent"
        await asyncio.sleep(0.05)


def still_running(pids: set[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


async def answers(client: httpx.AsyncClient, path: str = "/readyz", within: float = 120) -> None:
    """Until the port answers 200 on a fresh connection (a worker may still be starting)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        with contextlib.suppress(httpx.HTTPError):
            response = await client.get(path, headers={"Connection": "close"}, timeout=5)
            if response.status_code == 200:
                return
        assert asyncio.get_running_loop().time() < deadline, f"{path} did not answer"
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def frozen(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def each_worker_answers(up: Up, client: httpx.AsyncClient) -> None:
    first, second = up.wait_for("http", 2)
    for stopped in (first, second):
        with frozen(stopped):
            for _ in range(3):
                await answers(client)


async def test_up_runs_workers_restarts_them_and_stops_everything(tmp_path, database_url) -> None:
    # Both databases (the PostgreSQL leg too): every process has a pool of its own.
    up = Up(tmp_path, RENKEI_RELAY_POLL_SECONDS="30", RENKEI_DATABASE_URL=database_url)
    seen: set[int] = set()
    hub: Hub | None = None
    try:
        up.wait_for("relay", 1)
        up.wait_for("router", 1)
        up.wait_for("audit", 1)
        assert len(up.pids("tansu")) == 1
        seen |= set(up.children())
        # A connection of its own per request: they spread over the workers, and none is left
        # in the pool pointing at the worker this test kills.
        fresh = httpx.Limits(max_keepalive_connections=0)
        base = f"http://127.0.0.1:{up.port}"
        async with httpx.AsyncClient(base_url=base, limits=fresh) as client:
            await answers(client)
            await each_worker_answers(up, client)
            hub = Hub(up.settings())  # the test's view of the same database and keys
            await load_region(hub)

            # The doorbell: with the relay's poll at 30 s, routing in seconds is its doing.
            warm = await accept(hub, client, message(EventType.ADMISSION, "p01"))
            await wait_routed(hub, [warm], within=90)
            await wait_sent(hub, [warm], within=90)  # the relay has nothing left to do
            woken = await accept(hub, client, message(EventType.DISCHARGE, "p01"))
            await wait_routed(hub, [woken], within=10)
            assert await notification_count(hub, [woken]) == len(EXPECTED[EventType.DISCHARGE])
            # The notification records the router wrote after the relay went idle: sent
            # because the router rang.
            await wait_sent(hub, [woken], within=10)

            # Writers in several processes at once: they wait for SQLite's lock, none fails.
            burst = await asyncio.gather(
                *(accept(hub, client, message(EventType.ADMISSION, p)) for p in PATIENTS * 3)
            )
            posted = [warm, woken, *burst]
            await wait_routed(hub, posted, within=90)

            # /metrics adds up every process: one admission through each worker, then scrape.
            for stopped in up.wait_for("http", 2):
                with frozen(stopped):
                    posted.append(await accept(hub, client, message(EventType.ADMISSION)))
            office = headers(hub, hub.settings.region_org, "region-admin")
            scraped = await client.get("/metrics", headers=office)
            assert scraped.status_code == 200, scraped.text
            accepted = value(
                parse(scraped.text), "renkei_intake_seconds_count", event_type="admission",
                outcome="accepted",
            )  # fmt: skip
            assert accepted == 1 + len(burst) + 2

            # An HTTP worker killed: the other answers meanwhile, the supervisor replaces it.
            doomed = up.pids("http")[0]
            os.kill(doomed, signal.SIGKILL)
            for patient in PATIENTS:
                posted.append(await accept(hub, client, message(EventType.DISCHARGE, patient)))
            up.wait_for("http", 2, without={doomed})
            seen |= set(up.children())
            await each_worker_answers(up, client)

            # The router killed mid-stream: restarted, it takes the records that were not
            # committed; nothing lost, nothing twice.
            (router,) = up.pids("router")
            os.kill(router, signal.SIGKILL)
            for patient in PATIENTS:
                posted.append(await accept(hub, client, message(EventType.ADMISSION, patient)))
            up.wait_for("router", 1, without={router})
            seen |= set(up.children())
            await wait_routed(hub, posted, within=120)
            assert await duplicate_pairs(hub, posted) == 0

            # The embedded broker killed: the supervisor starts it again, with its topics.
            (tansu,) = up.pids("tansu")
            os.kill(tansu, signal.SIGKILL)
            up.wait_for("tansu", 1, without={tansu})
            seen |= set(up.children())
            after = await accept(hub, client, message(EventType.ADMISSION, "p04"))
            await wait_routed(hub, [after], within=120)
    finally:
        seen |= set(up.children())
        code = up.stop()
        if hub is not None:
            await hub.stop()
    assert code == 0, up.log.read_text()[-3000:]
    assert len(seen) >= 8  # 2 http, relay, router, tansu; a second http, router and tansu
    assert still_running(seen) == []  # no orphans
    assert not any((up.data_dir / "wakeup").iterdir())  # relays took their sockets away


def tls_version(port: int, ca: Path, maximum: ssl.TLSVersion | None = None) -> str | None:
    context = ssl.create_default_context(cafile=str(ca))
    if maximum is not None:
        context.maximum_version = maximum
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version()
    except ssl.SSLError:
        return None


async def test_every_http_worker_serves_the_hubs_tls(tmp_path) -> None:
    files = make_dev_ca(tmp_path / "ca")
    up = Up(tmp_path, RENKEI_TLS_CERT=str(files["server"]), RENKEI_TLS_KEY=str(files["server_key"]))
    try:
        first, second = up.wait_for("http", 2)
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{up.port}", verify=ssl.create_default_context(
                cafile=str(files["ca"]))
        ) as client:  # fmt: skip
            await answers(client)
            for stopped in (first, second):
                with frozen(stopped):
                    await answers(client)
                    # The hub's own context (renkei.tls), not uvicorn's: TLS 1.3 only.
                    assert tls_version(up.port, files["ca"]) == "TLSv1.3"
                    assert tls_version(up.port, files["ca"], ssl.TLSVersion.TLSv1_2) is None
    finally:
        code = up.stop()
    assert code == 0, up.log.read_text()[-3000:]


def test_up_on_a_port_in_use_says_so_and_leaves_nothing_running(tmp_path) -> None:
    up = Up(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", up.port))
        taken.listen()
        try:
            code = up.process.wait(timeout=120)
        finally:
            up.stop()
    log = up.log.read_text()
    assert code == 1 and "cannot start" in log
    tansu = re.search(r"embedded Tansu broker on \S+ \(pid (\d+)\)", log)
    assert tansu is not None and still_running({int(tansu.group(1))}) == []
    assert "started (pid" not in log  # no worker was started


def test_up_stopped_while_it_prepares_leaves_nothing_running(tmp_path) -> None:
    up = Up(tmp_path)
    deadline = time.monotonic() + 120
    while "embedded Tansu broker on" not in up.log.read_text():
        assert time.monotonic() < deadline and up.process.poll() is None, up.log.read_text()
        time.sleep(0.05)
    code = up.stop()  # SIGTERM while the database is being prepared
    log = up.log.read_text()
    assert code == 0, log[-3000:]
    tansu = re.search(r"embedded Tansu broker on \S+ \(pid (\d+)\)", log)
    assert tansu is not None and still_running({int(tansu.group(1))}) == []
    assert "started (pid" not in log
