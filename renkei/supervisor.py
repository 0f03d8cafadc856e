"""``renkei up``: the supervisor of the hub's processes on one host.

It does the once-only work itself, then starts and watches the children:

- the embedded Tansu broker when ``RENKEI_KAFKA_BOOTSTRAP`` is unset (restarted if it dies);
- migrations, file modes, the region office, the first keys, the topics;
- the listening socket, bound once here and inherited by every HTTP worker: the kernel hands
  each connection to whichever worker accepts it first, a busy or stopped worker leaves its
  connections to the others, and a worker that dies loses nothing queued on the port;
- ``RENKEI_HTTP_WORKERS`` HTTP workers (``renkei worker http``, 0: one per core), one relay
  (``renkei worker relay``) and one router (``renkei worker router``), each with
  ``RENKEI_KAFKA_BOOTSTRAP`` set; a child that exits is started again after a backoff.

SIGTERM or Ctrl-C: every child gets SIGTERM, then SIGKILL after ``shutdown_grace_seconds``;
the broker stops last. Children die with the supervisor even when it is SIGKILLed (Linux
parent-death signal), and live in their own process group, so a terminal's Ctrl-C reaches
the supervisor alone and the shutdown keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from renkei.settings import Settings

log = logging.getLogger(__name__)

TICK = 0.2  # how often children and the broker are looked at
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # a child that ran this long starts again from the first backoff
PR_SET_PDEATHSIG = 1
METRICS_DIR = "metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def forget_metrics_of(pid: int) -> None:
    """A child exited: its live gauges leave the sums (its counters stay: they happened)."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, directory)


def http_worker_count(settings: Settings) -> int:
    if settings.http_workers:
        return settings.http_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The HTTP port. ``reuse_port``: for ``renkei worker http`` started several times on one
    host (each binds; the kernel spreads connections); ``renkei up`` binds once and shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


@dataclass
class Child:
    """One worker process, started again whenever it exits (until the supervisor stops)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            pass_fds=self.pass_fds,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads in the supervisor
            process_group=0,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("%s started (pid %d)", self.name, self.process.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def watch(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when its backoff is over."""
        if self.restart_at is None and self.process is not None and not self.alive():
            ran = now - self.started_at
            self.backoff = BACKOFF_FIRST if ran >= HEALTHY_AFTER else self.backoff
            log.warning(
                "%s (pid %d) exited with %s after %.0fs; starting it again in %.1fs",
                self.name, self.process.pid, self.process.returncode, ran, self.backoff,
            )  # fmt: skip
            self.restart_at = now + self.backoff
            self.backoff = min(BACKOFF_MAX, self.backoff * 2)
            forget_metrics_of(self.process.pid)
        if self.restart_at is not None and now >= self.restart_at:
            self.restarts += 1
            try:
                self.start()
            except OSError as error:  # no fork (memory, process limit): later, not never
                log.error("%s could not be started (%s); trying again", self.name, error)
                self.restart_at = now + self.backoff
                self.backoff = min(BACKOFF_MAX, self.backoff * 2)

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            log.warning("%s (pid %d) did not stop in time; killing it", self.name, self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self._embedded = None  # deploy.tansu.EmbeddedTansu when the hub runs its own broker
        self._stopping = False
        self._listener: socket.socket | None = None

    def run(self) -> int:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop_requested)
        try:
            if not self._start_all():
                return 1
            while not self._stopping:
                time.sleep(TICK)
                self._watch_broker()
                now = time.monotonic()
                for child in self.children:
                    if not self._stopping:
                        child.watch(now)
        finally:
            self._stop_children()
            if self._listener is not None:
                self._listener.close()
            if self._embedded is not None:
                self._embedded.stop()
        log.info("stopped")
        return 0

    def _start_all(self) -> bool:
        try:
            bootstrap = self._start_broker()
            if not self._stopping:
                self._prepare(bootstrap)
            if not self._stopping:
                self._listener = bind_listener(self.settings.host, self.settings.port)
        except (OSError, RuntimeError, TimeoutError) as error:
            log.error("renkei up cannot start: %s", error)
            return False
        if not self._stopping:
            self._metrics_directory()
            self.children = self._children(bootstrap, self._listener)
            for child in self.children:
                child.start()
            self._announce()
        return True

    def _stop_requested(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    # -- once, before the children ---------------------------------------------------------

    def _start_broker(self) -> str:
        if self.settings.kafka_bootstrap:
            return self.settings.kafka_bootstrap
        from deploy.tansu import EmbeddedTansu

        self._embedded = EmbeddedTansu(Path(self.settings.data_dir) / "broker", supervised=True)
        bootstrap = self._embedded.start()
        log.info("embedded Tansu broker on %s (pid %s)", bootstrap, self._embedded.pid)
        return bootstrap

    def _prepare(self, bootstrap: str) -> None:
        """Migrations, the region office, the first keys and the topics: once, before the
        children, so that they never race to create them. In a process of its own: what it
        imports (SQLAlchemy, aiokafka) would otherwise stay in the supervisor's memory."""
        preparing = subprocess.Popen(
            [sys.executable, "-m", "renkei.supervisor", "prepare", bootstrap],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads in the supervisor
            process_group=0,
        )
        while preparing.poll() is None:
            if self._stopping:  # Ctrl-C while, say, the database does not answer
                preparing.terminate()
                preparing.wait()
                return
            time.sleep(0.05)
        if preparing.returncode != 0:
            raise RuntimeError(f"preparing the hub failed (exit {preparing.returncode}); see above")

    def _metrics_directory(self) -> None:
        """Prometheus multiprocess mode (services/metrics): every child writes its samples to
        files in one directory, and whichever HTTP worker answers ``GET /metrics`` adds them
        all up. Emptied here: what an earlier run left belongs to processes that are gone.
        (services.metrics.configure does the same; not imported: it would bring the app's
        modules into the supervisor's memory.)"""
        directory = Path(self.settings.data_dir).resolve() / METRICS_DIR
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[MULTIPROCESS_ENV] = str(directory)

    def _children(self, bootstrap: str, listener: socket.socket) -> list[Child]:
        listener_fd = listener.fileno()
        # The port bound (RENKEI_PORT=0 picks one): the workers' links and token audience.
        port = str(listener.getsockname()[1])
        env = dict(os.environ, RENKEI_KAFKA_BOOTSTRAP=bootstrap, RENKEI_PORT=port)
        command = [sys.executable, "-m", "services.cli", "worker"]
        http = [
            Child(
                f"http-{n}",
                [*command, "http", "--prepared", "--listen-fd", str(listener_fd)],
                env,
                pass_fds=(listener_fd,),
            )
            for n in range(http_worker_count(self.settings))
        ]
        return [
            *http,
            Child("relay", [*command, "relay", "--prepared"], env),
            Child("router", [*command, "router", "--prepared"], env),
            Child("audit", [*command, "audit", "--prepared"], env),
        ]

    def _announce(self) -> None:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        scheme = "https" if self.settings.tls_enabled else "http"
        workers = sum(1 for c in self.children if c.name.startswith("http-"))
        print(
            f"Renkei Hub 連携ハブ: {scheme}://{host}:{port} ({workers} HTTP workers, relay, "
            "router, audit writer; Ctrl-C で停止 / to stop)",
            flush=True,
        )

    # -- while running -------------------------------------------------------------------

    def _watch_broker(self) -> None:
        """``make run`` should survive its broker: restart a Tansu that died, on the same port.

        It comes back empty: the topics are made again (the preparation is idempotent), and
        the relay republishes what was not routed."""
        embedded = self._embedded
        if self._stopping or embedded is None or embedded.running:
            return
        log.warning("embedded broker exited; restarting it on %s", embedded.bootstrap)
        try:
            embedded.start()
            self._prepare(embedded.bootstrap)
        except Exception as error:  # noqa: BLE001 - logged, tried again at the next tick
            log.error("embedded broker did not restart (%s); retrying", type(error).__name__)

    # -- stopping ------------------------------------------------------------------------

    def _stop_children(self) -> None:
        running = [child for child in self.children if child.alive()]
        for child in running:
            child.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        waiting = list(running)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.05)
            for child in [c for c in waiting if not c.alive()]:
                waiting.remove(child)
                log.info("%s stopped", child.name)
        for child in waiting:
            child.kill()


async def prepare(settings: Settings, bootstrap: str) -> None:
    """The once-only work of ``renkei up`` (``python -m renkei.supervisor prepare BOOTSTRAP``)."""
    from renkei.broker import Broker
    from renkei.hub import Hub
    from services.auth.keys import load_ring

    hub = Hub(settings)  # its key ring makes the first key-encryption key
    try:
        await hub.prepare()
        load_ring(settings.keys_dir)  # the first token-signing key
        async with hub.sessions() as session:
            await hub.keyring.hub_key(session)  # the hub's own data key (DLQ records)
            await session.commit()
        await Broker(settings, bootstrap).start()  # detects the engine, makes the topics
    finally:
        await hub.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "prepare":
        sys.exit("usage: python -m renkei.supervisor prepare BOOTSTRAP (run by renkei up)")
    from renkei.settings import get_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.umask(0o077)
    asyncio.run(prepare(get_settings(), sys.argv[2]))
