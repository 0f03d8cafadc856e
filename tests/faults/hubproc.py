"""The whole hub as the operator runs it: `renkei up` in a process group of its own.

The fault scenarios talk to it over real HTTP on loopback and SIGKILL it like a power cut;
its settings come from the environment (RENKEI_*), so the test and the hub share the database,
the key folder and the topic prefix. Whatever `renkei up` starts (HTTP workers, relay, router
as processes of their own) is in the group and dies with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from renkei.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# The hub's settings the scenarios set, as the environment `renkei up` reads.
ENV_FIELDS = (
    "data_dir",
    "database_url",
    "kafka_bootstrap",
    "topic_prefix",
    "topic_partitions",
    "router_group_id",
    "relay_redeliver_after_seconds",
    "relay_backoff_max_seconds",
    "consumer_session_timeout_ms",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_environment(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    for name in ENV_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            env[f"RENKEI_{name.upper()}"] = str(value)
    env["RENKEI_HOST"] = "127.0.0.1"
    env["RENKEI_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class HubProcess:
    """`renkei up` (or `renkei worker NAME`) as a subprocess; its output goes to a log file."""

    def __init__(self, settings: Settings, log_dir: Path, command: tuple[str, ...] = ("up",)):
        self.settings = settings
        self.port = free_port()
        self.command = command
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start it (again, after a kill: same port, same settings)."""
        self.starts += 1
        log_path = self.log_dir / f"hub-{'-'.join(self.command)}-{self.starts}.log"
        self.log_paths.append(log_path)
        renkei = Path(sys.executable).with_name("renkei")
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(renkei), *self.command],
                env=hub_environment(self.settings, self.port),
                # Not the repository: a developer's .env there must not steer the scenario.
                cwd=self.log_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killpg reaches every child
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, within: float = 90.0) -> float:
        """Until GET /readyz answers 200 (database, broker, topics). Returns the seconds."""
        started = time.monotonic()
        last = "no answer"
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() - started < within:
                if not self.alive():
                    raise AssertionError(f"renkei {self.command} exited: {self.tail()}")
                try:
                    response = await client.get("/readyz")
                    if response.status_code == 200:
                        return time.monotonic() - started
                    last = response.text[:300]
                except httpx.HTTPError as exc:
                    last = repr(exc)[:200]
                await asyncio.sleep(0.2)
        raise AssertionError(f"hub not ready within {within:.0f}s: {last}\n{self.tail()}")

    def _members(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal the whole hub (the group and any child that left it). Returns how many
        processes it had."""
        members = self._members()
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL and self.proc is not None:
            self.proc.wait(10)
            psutil.wait_procs(members, timeout=10)
        return len(members)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (a clean stop), SIGKILL after ``grace``."""
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        assert self.proc is not None
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
        psutil.wait_procs([m for m in self._members() if m.is_running()], timeout=5)

    def log_text(self) -> str:
        return "\n".join(
            path.read_text(encoding="utf-8", errors="replace")
            for path in self.log_paths
            if path.exists()
        )

    def tail(self, lines: int = 30) -> str:
        if not self.log_paths or not self.log_paths[-1].exists():
            return "(no log)"
        text = self.log_paths[-1].read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def republished(self) -> int:
        """Events the relay published again (not routed within the re-drive window)."""
        import re

        pattern = re.compile(r"relay: (\d+) event\(s\) not routed within")
        return sum(int(m.group(1)) for m in pattern.finditer(self.log_text()))

    def problems(self) -> tuple[Counter[str], Counter[str]]:
        """WARNING/ERROR lines by shape, and the tracebacks' last lines (what was raised)."""
        import re

        counts: Counter[str] = Counter()
        tracebacks: Counter[str] = Counter()
        lines = self.log_text().splitlines()
        for index, line in enumerate(lines):
            match = re.search(r" (WARNING|ERROR|CRITICAL) (\S+): (.*)", line)
            if match:
                shape = re.sub(r"\d+(\.\d+)?", "N", match.group(3))
                shape = re.sub(r"t[0-9a-f]{8}\.", "", shape)
                counts[f"{match.group(1)} {match.group(2)}: {shape[:160]}"] += 1
            if line.startswith("Traceback"):
                end = index + 1
                while end < len(lines) and (lines[end].startswith(" ") or not lines[end]):
                    end += 1
                if end < len(lines):
                    tracebacks[lines[end][:300]] += 1
        return counts, tracebacks
