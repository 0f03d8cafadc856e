"""Processes the throughput benchmark runs and watches: the hub (``renkei up``), the bare
baseline, Tansu and ``renkei worker`` processes, wrk, and a sampler of the hub tree's memory.

The hub is only driven through what any deployment has: ``renkei up``, ``renkei worker
relay|router``, ``/readyz``, the HTTP API and ``renkei token issue``. Progress (accepted,
published, routed) is read from the database the hub writes (the event and outbox tables).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from sqlalchemy import text

from renkei.kafka_probe import free_port
from tests.benchmarks.tools import wrk_threads

BIN = Path(sys.executable).parent
RENKEI = [str(BIN / "renkei")]
if not (BIN / "renkei").exists():
    RENKEI = [sys.executable, "-m", "services.cli"]
BROKER_LINE = re.compile(r"embedded Tansu broker on (\S+)")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Managed:
    """A process this benchmark started; stopped with SIGINT, then SIGTERM, then SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if not self.alive():
            return
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for child in descendants:  # what it started and did not stop (only ours)
            if child.is_running():
                child.kill()


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Managed:
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the process
    process = subprocess.Popen(
        argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    out.close()
    return Managed(name, process, log_path)


def wait_ready(managed: Managed, url: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not managed.alive():
            raise SystemExit(f"{managed.name} exited; see {managed.log_path}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    managed.stop()
    raise SystemExit(f"{managed.name} not ready within {within:.0f} s; see {managed.log_path}")


@dataclass
class HubProcess:
    """One ``renkei up`` with its own data dir, port and database."""

    data_dir: Path
    database_url: str | None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    managed: Managed | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, RENKEI_DATA_DIR=str(self.data_dir), RENKEI_PORT=str(self.port))
        env["RENKEI_HOST"] = "127.0.0.1"
        env.pop("RENKEI_KAFKA_BOOTSTRAP", None)  # the embedded broker, as `make run` has it
        if self.database_url:
            env["RENKEI_DATABASE_URL"] = self.database_url
        else:
            env.pop("RENKEI_DATABASE_URL", None)
        env.update(self.extra_env)
        return env

    def start(self, argv_prefix: list[str] | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*(argv_prefix or RENKEI), "up"]
        self.managed = spawn("hub", argv, self.env(), self.data_dir)
        wait_ready(self.managed, f"{self.base_url}/readyz")

    def stop(self, grace: float = 8.0) -> None:
        """SIGINT, then SIGTERM after ``grace`` (uvicorn's second signal: exit now; the hub on
        main needs 15 s to give up on its relay), then SIGKILL; leftovers (Tansu) killed."""
        if self.managed is not None:
            self.managed.stop(grace)

    @property
    def pid(self) -> int:
        assert self.managed is not None
        return self.managed.process.pid

    def broker_bootstrap(self) -> str:
        """The embedded broker's address: from the hub's log, else the listening port of the
        Tansu process in the hub's tree."""
        assert self.managed is not None
        found = BROKER_LINE.search(self.managed.log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        for child in psutil.Process(self.pid).children(recursive=True):
            if "tansu" in child.name():
                for conn in child.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        return f"127.0.0.1:{conn.laddr.port}"
        raise SystemExit("cannot find the hub's embedded broker")

    def token(self, org: str, role: str, practitioner: str | None = None) -> str:
        return issue_token(self.env(), org, role, practitioner)


def issue_token(env: dict[str, str], org: str, role: str, practitioner: str | None = None) -> str:
    argv = [*RENKEI, "token", "issue", "--org", org, "--role", role, "--ttl", "7200"]
    if practitioner:
        argv += ["--practitioner", practitioner]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"renkei token issue failed: {done.stderr.strip()}")
    return done.stdout.strip()


def issue_tokens(data_dir: Path, wanted: list[tuple[str, str, str | None]]) -> list[str]:
    """Many tokens, signed with the hub's key as ``renkei token issue`` signs them (the same
    function, without a Python start-up and a migration check per token: on a busy 2-core
    machine twenty CLI calls took most of a minute per hub)."""
    from services.auth.service import Role
    from services.auth.service import issue_token as sign

    keys = data_dir / "keys"
    return [sign(keys, org, Role(role), who, ttl_seconds=7200) for org, role, who in wanted]


class TreeSampler:
    """Peak resident memory of process trees, sampled every ``every`` seconds in a thread.

    RSS is summed over every process of the tree (shared pages of forked workers count once
    per process: an upper bound). The embedded broker (a process named tansu*) is kept apart.
    """

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.roots: list[int] = []
        self.peak_total = 0
        self.peak_hub = 0  # without the broker
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, pid: int) -> None:
        self.roots.append(pid)

    def unwatch(self, pid: int) -> None:
        if pid in self.roots:
            self.roots.remove(pid)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> tuple[int, int, int]:
        total = hub = count = 0
        for root in list(self.roots):
            try:
                processes = [psutil.Process(root)]
                processes += processes[0].children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    name = process.name()
                except psutil.NoSuchProcess:
                    continue
                total += rss
                count += 1
                if "tansu" not in name:
                    hub += rss
        return total, hub, count

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            total, hub, count = self.sample()
            self.peak_total = max(self.peak_total, total)
            self.peak_hub = max(self.peak_hub, hub)
            self.peak_processes = max(self.peak_processes, count)


class Progress:
    """Counts of the hub's own tables: accepted events, unsent outbox rows, routed events."""

    def __init__(self, database_url: str) -> None:
        from renkei.db import create_engine

        self.engine = create_engine(database_url)

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT"
                        " (SELECT count(*) FROM event WHERE status = 'accepted') AS accepted,"
                        " (SELECT count(*) FROM event WHERE routed_at IS NOT NULL) AS routed,"
                        " (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS unsent"
                    )
                )
            ).one()
        return {"accepted": int(row.accepted), "routed": int(row.routed), "unsent": int(row.unsent)}

    async def wait_quiet(self, within: float) -> tuple[bool, dict[str, int]]:
        """Until every accepted event is routed (True), or ``within`` seconds (False)."""
        deadline = time.monotonic() + within
        while True:
            counts = await self.counts()
            if counts["routed"] >= counts["accepted"]:
                return True, counts
            if time.monotonic() > deadline:
                return False, counts
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        await self.engine.dispose()


async def run_wrk(
    url: str,
    script: Path,
    connections: int,
    seconds: float,
    log_path: Path,
    timeout_s: int = 10,
) -> str:
    threads = wrk_threads(connections)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    output = out.decode(errors="replace")
    with log_path.open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n{output}\n")
    return output
