"""Run real Apache Kafka 4.4.0 (KRaft) locally from Maven Central jars.

Used by the test suite and by `python -m deploy.kafka up`. Only the standard library is
needed here: readiness is checked with a raw Kafka Metadata request over a socket, so
`start()` is a plain synchronous call that also works when called from inside a running
asyncio event loop (no nested `asyncio.run`, no aiokafka client of its own).

Layout under `base_dir`:
    node-N/server.properties   rendered from server.properties.template
    node-N/data/               KRaft storage (formatted on every start())
    node-N/server.log          log4j output (see log4j2.properties)
    node-N/console.log         JVM stdout/stderr (crashes before log4j is up land here)
    node-N/pid                 pid of the running JVM (lets a later run clean up leftovers)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.4.0"
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG_CONFIG = HERE / "log4j2.properties"
TEMPLATE = HERE / "server.properties.template"

# Found by listing the 4.4.0 jars (kafka_2.13-4.4.0.jar: kafka/tools/StorageTool.class),
# not taken on trust; `format` accepts --standalone and --initial-controllers.
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
SERVER_CLASS = "kafka.Kafka"
# A jar that must be present for the cache to count as complete.
_SENTINEL_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
_HOST = "127.0.0.1"


class KafkaClusterError(RuntimeError):
    """Kafka could not be fetched, formatted, started or stopped as asked."""


# ---------------------------------------------------------------------------------------
# Jars
# ---------------------------------------------------------------------------------------


def java_available() -> bool:
    """True when both `java` and `mvn` are on PATH (tests skip the real-Kafka suite if not)."""
    return shutil.which("java") is not None and shutil.which("mvn") is not None


def default_cache_dir() -> Path:
    env = os.environ.get("RENKEI_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "renkei" / f"kafka-{KAFKA_VERSION}"


def _pom_digest() -> str:
    # The marker records which pom filled the cache, so changing the pom (a new log4j, say)
    # refetches instead of silently running stale jars.
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Return the folder holding every runtime jar, fetching them with Maven the first time.

    The cache lives outside the repository. A marker file written after a complete copy
    makes later calls free; a file lock makes concurrent callers (parallel test workers,
    two terminals) wait for one fetch instead of racing.
    """
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    libs = cache / "libs"
    marker = cache / ".complete"
    digest = _pom_digest()

    def ready() -> bool:
        return (
            marker.is_file()
            and marker.read_text().strip() == digest
            and (libs / _SENTINEL_JAR).is_file()
        )

    if ready():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaClusterError("mvn is not on PATH: cannot fetch the Kafka jars")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():  # another process finished the fetch while we waited
            return libs
        # Copy into a scratch folder and rename: a half-finished fetch never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix="libs.", dir=cache))
        cmd = [
            "mvn", "-q", "-B", "-f", str(POM),
            "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
            )
            if proc.returncode != 0 or not (tmp / _SENTINEL_JAR).is_file():
                raise KafkaClusterError(
                    f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                    f"{_tail_text(proc.stdout + proc.stderr, 40)}"
                )
            marker.unlink(missing_ok=True)
            if libs.exists():
                shutil.rmtree(libs)
            tmp.rename(libs)
            marker.write_text(digest + "\n")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return libs


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux default


def _free_ports(count: int) -> list[int]:
    """Free loopback ports, checked by binding them.

    Ports come from BELOW the kernel's ephemeral range when possible: a port handed out by
    bind(0) is an ephemeral one, and while a node is down (fault tests) any outgoing client
    connection may take it, so the restarted node could not bind its old port again.
    All sockets stay open until every port is picked, so no port is returned twice; the
    short window before Kafka binds is reported clearly (node log tail) if ever hit.
    """
    low, _high = _ephemeral_range()
    pool = list(range(max(1025, low - 12000), low)) if low > 2048 else []
    random.shuffle(pool)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for candidate in [*pool, *([0] * count)]:
            if len(ports) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((_HOST, candidate))
            except OSError:
                s.close()
                continue
            stack.callback(s.close)
            ports.append(s.getsockname()[1])
        return ports


def _kafka_uuid() -> str:
    """A Kafka Uuid string (16 random bytes, URL-safe base64 without padding), as the
    storage tool's `random-uuid` prints; used for the cluster id and directory ids.
    Kafka's own generator avoids ids starting with '-' (they read like CLI flags)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            return _tail_text(fh.read().decode("utf-8", "replace"), lines)
    except OSError:
        return "(no file)"


# Placeholders of server.properties.template with a default: the local clusters' plain text.
# (Documented here, not in the template: its comments are rendered into every file.)
#   client_listener      name AND security protocol of the client/replication listener
#                        (production: SASL_SSL)
#   controller_protocol  security protocol of the CONTROLLER listener (production: SSL)
#   security_properties  lines appended after the template's last line, each ending in a
#                        newline (TLS/SASL settings); "" adds nothing
#   extra_listeners, extra_advertised_listeners, extra_protocol_map
#                        ",NAME://host:port" / ",NAME:PROTOCOL" entries after the client
#                        listener: the local clusters' optional SSL listener (KafkaTls)
SERVER_PROPERTIES_DEFAULTS: dict[str, object] = {
    "client_listener": "PLAINTEXT",
    "controller_protocol": "PLAINTEXT",
    "security_properties": "",
    "extra_listeners": "",
    "extra_advertised_listeners": "",
    "extra_protocol_map": "",
}


@dataclass(frozen=True)
class KafkaTls:
    """An extra SSL listener for local clusters (tests of the hub's Kafka TLS client).

    PEM files (ssl.keystore.type=PEM): ``keystore`` holds the broker's private key (PKCS#8,
    unencrypted) and its certificate chain; ``truststore`` the CA that signed the clients'
    certificates. Clients must present one (ssl.client.auth=required). Replication and the
    readiness probe stay on the plain-text listener.
    """

    keystore: Path
    truststore: Path

    def properties(self) -> str:
        return (
            "# --- SSL listener (local clusters, KafkaTls) ---\n"
            "ssl.keystore.type=PEM\n"
            f"ssl.keystore.location={self.keystore}\n"
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={self.truststore}\n"
            "ssl.client.auth=required\n"
        )


# What the local clusters run with on a 2-core machine (production passes its own values).
LOCAL_SIZING: dict[str, int] = {
    # 50 by default; a handful is plenty for tests and loads much faster.
    "internal_topic_partitions": 6,
    "network_threads": 2,
    "io_threads": 2,
    "background_threads": 2,
    "segment_bytes": 16 * 1024 * 1024,
    "session_timeout_ms": 6000,
}


def render_server_properties(**values: object) -> str:
    """Fill server.properties.template; a missing placeholder is an error, not a blank.

    Only the placeholders of SERVER_PROPERTIES_DEFAULTS may be left out; with their defaults
    the rendered bytes are what the template rendered before it had them.
    """
    return TEMPLATE.read_text().format_map({**SERVER_PROPERTIES_DEFAULTS, **values})


# ---------------------------------------------------------------------------------------
# Readiness probe: a raw Metadata request (API key 3, version 4)
# ---------------------------------------------------------------------------------------
# Version 4 because Kafka 4.x dropped Metadata v0-v3 (KIP-896) and v4 is the newest
# non-"flexible" version, so the encoding stays plain big-endian fields. Asking for an
# empty topic list (not null) means no topic is listed, and none is auto-created.


@dataclass(frozen=True)
class _MetadataView:
    brokers: frozenset[int]
    controller_id: int
    cluster_id: str | None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def _probe_metadata(port: int, timeout: float = 2.0) -> _MetadataView:
    client_id = b"renkei-probe"
    correlation_id = 7
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    off = 0

    def take(fmt: str) -> int:
        nonlocal off
        (value,) = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return int(value)

    def take_str() -> str | None:
        nonlocal off
        n = take(">h")
        if n < 0:
            return None
        s = data[off : off + n].decode()
        off += n
        return s

    if take(">i") != correlation_id:
        raise ConnectionError("metadata response with the wrong correlation id")
    take(">i")  # throttle_time_ms
    brokers = set()
    for _ in range(take(">i")):
        brokers.add(take(">i"))
        take_str()  # host
        take(">i")  # port
        take_str()  # rack
    cluster_id = take_str()
    controller_id = take(">i")
    return _MetadataView(frozenset(brokers), controller_id, cluster_id)


# ---------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------

# Clusters still running when the interpreter exits are stopped, so a test run that ends
# without calling stop() does not leave JVMs behind. A plain set, not a WeakSet: a cluster
# object dropped without stop() must still be stopped.
_LIVE: set[KafkaCluster] = set()


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


@dataclass
class _Node:
    node_id: int
    dir: Path
    broker_port: int
    controller_port: int
    directory_id: str
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False  # SIGSTOPped: alive, but it will not answer probes
    # False once we stopped or killed it on purpose; an exit while True is a crash.
    meant_to_run: bool = False

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """1..N combined broker+controller KRaft nodes on loopback, each its own JVM.

    Node ids are 1..nodes. start() formats fresh storage every time (the quorum's voter
    endpoints are written into the metadata log, and ports are picked anew), so a cluster
    never inherits data from an earlier start(); start_node() restarts one node on its
    existing storage and ports.
    """

    def __init__(
        self,
        base_dir: Path,
        nodes: int = 1,
        heap: str = "256m",
        cache_dir: Path | None = None,
        tls: KafkaTls | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.base_dir = Path(base_dir).resolve()
        self.heap = heap
        self.cache_dir = cache_dir
        self.node_ids: list[int] = list(range(1, nodes + 1))
        self.bootstrap: str = ""
        # With ``tls``: the SSL listeners, host:port,... (empty otherwise).
        self.tls = tls
        self.ssl_bootstrap: str = ""
        self.cluster_id: str = ""
        self._nodes: dict[int, _Node] = {}
        self._libs: Path | None = None
        # One lock: stop() may run from atexit or a signal handler while a test thread
        # is in kill()/start_node().
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------

    def start(self, timeout: float = 90) -> str:
        """Format storage, start every node, wait until each node's broker listener answers
        a Metadata request listing all brokers (which implies an elected controller: a
        broker is only listed once the active controller has registered and unfenced it).
        Returns the bootstrap string."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if any(n.alive() for n in self._nodes.values()):
                raise KafkaClusterError("cluster already started")
            self._libs = ensure_jars(self.cache_dir)
            self._prepare()
            _LIVE.add(self)
            try:
                self._format_all(deadline)
                for node_id in self.node_ids:
                    self._spawn(self._nodes[node_id])
                self._wait_ready(deadline, what="cluster start")
            except BaseException:
                self.stop()
                raise
            return self.bootstrap

    def stop(self, timeout: float = 30) -> None:
        """Stop every node: SIGTERM (controlled shutdown), then SIGKILL whatever is still
        running after `timeout`. Safe to call twice, or on a cluster never started."""
        with self._lock:
            running = [n for n in self._nodes.values() if n.alive()]
            for node in running:
                self._signal_term(node)
            self._reap(running, timeout)
            _LIVE.discard(self)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one node (SIGKILL, SIGSTOP, SIGCONT, SIGTERM...) for fault tests.
        After SIGKILL the process is reaped, so pid() is None at once."""
        with self._lock:
            node = self._node(node_id)
            if not node.alive():
                raise KafkaClusterError(f"node {node_id} is not running")
            assert node.proc is not None
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                node.meant_to_run = False
            node.proc.send_signal(sig)
            if sig == signal.SIGSTOP:
                node.paused = True
            elif sig == signal.SIGCONT:
                node.paused = False
            elif sig == signal.SIGKILL:
                node.proc.wait()
                node.paused = False
                node.pid_file.unlink(missing_ok=True)

    def stop_node(self, node_id: int, timeout: float = 30) -> None:
        """Clean stop of one node (SIGTERM, SIGKILL after `timeout`)."""
        with self._lock:
            node = self._node(node_id)
            if node.alive():
                self._signal_term(node)
                self._reap([node], timeout)

    def start_node(self, node_id: int, timeout: float = 60) -> None:
        """Restart a stopped or killed node with its storage and ports, and wait until it
        is registered again and every running node sees it."""
        with self._lock:
            node = self._node(node_id)
            if node.alive():
                raise KafkaClusterError(
                    f"node {node_id} is still running (pid {self.pid(node_id)})"
                )
            self._spawn(node)
            self._wait_ready(time.monotonic() + timeout, what=f"restart of node {node_id}")

    def pid(self, node_id: int) -> int | None:
        """The node's JVM pid while it runs (also while SIGSTOPped), else None."""
        node = self._nodes.get(node_id)
        if node is None:
            if node_id in self.node_ids:
                return None  # not started yet
            raise KafkaClusterError(f"no node {node_id} (nodes: {self.node_ids})")
        return node.proc.pid if node.alive() and node.proc is not None else None

    def node_dir(self, node_id: int) -> Path:
        return self._node(node_id).dir

    def broker_port(self, node_id: int) -> int:
        return self._node(node_id).broker_port

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KafkaClusterError(
                f"no node {node_id} (nodes: {self.node_ids}; started: {bool(self._nodes)})"
            ) from None

    def _prepare(self) -> None:
        """Pick ports and ids, wipe old node folders, render every server.properties."""
        n = len(self.node_ids)
        ports = _free_ports(3 * n if self.tls else 2 * n)
        ssl_ports = ports[2 * n :]
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._nodes = {}
        for i, node_id in enumerate(self.node_ids):
            node_dir = self.base_dir / f"node-{node_id}"
            self._kill_stale(node_dir)
            if node_dir.exists():
                shutil.rmtree(node_dir)
            node_dir.mkdir(parents=True)
            self._nodes[node_id] = _Node(
                node_id=node_id,
                dir=node_dir,
                broker_port=ports[2 * i],
                controller_port=ports[2 * i + 1],
                directory_id=_kafka_uuid(),
            )
        self.cluster_id = _kafka_uuid()
        quorum = ",".join(f"{_HOST}:{nd.controller_port}" for nd in self._nodes.values())
        replication = 3 if n >= 3 else n
        min_isr = 2 if n >= 3 else 1
        for index, node in enumerate(self._nodes.values()):
            extra: dict[str, object] = {}
            if self.tls is not None:
                ssl_listener = f",SSL://{_HOST}:{ssl_ports[index]}"
                extra = {
                    "extra_listeners": ssl_listener,
                    "extra_advertised_listeners": ssl_listener,
                    "extra_protocol_map": ",SSL:SSL",
                    "security_properties": self.tls.properties(),
                }
            node.config.write_text(
                render_server_properties(
                    node_id=node.node_id,
                    listen_host=_HOST,
                    advertised_host=_HOST,
                    broker_port=node.broker_port,
                    controller_port=node.controller_port,
                    quorum_bootstrap=quorum,
                    log_dir=node.data_dir,
                    replication_factor=replication,
                    min_isr=min_isr,
                    **LOCAL_SIZING,
                    **extra,
                )
            )
        self.bootstrap = ",".join(f"{_HOST}:{nd.broker_port}" for nd in self._nodes.values())
        self.ssl_bootstrap = ",".join(f"{_HOST}:{port}" for port in ssl_ports)

    def _kill_stale(self, node_dir: Path) -> None:
        """A JVM left by an earlier run on this same folder (its Python parent was killed)
        would hold the storage lock; end it, but only if its command line names this
        node's config, so an unrelated process that reused the pid is never touched."""
        pid_file = node_dir / "pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return
        if str(node_dir / "server.properties") not in cmdline:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)

    def _java_cmd(self, main_class: str, *args: str, heap: str, logs_dir: Path) -> list[str]:
        assert self._libs is not None
        return [
            "java",
            f"-Xmx{heap}",
            # Serial GC and client-compiler-only JIT: least CPU for short runs on 2 cores.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",  # no /tmp/hsperfdata_* files
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}",
            f"-Dkafka.logs.dir={logs_dir}",
            "-cp",
            f"{self._libs}/*",
            main_class,
            *args,
        ]

    def _format_all(self, deadline: float) -> None:
        """Run the storage tool for every node at once (each is a JVM start, ~1-2 s)."""
        nodes = list(self._nodes.values())
        if len(nodes) == 1:
            mode = ["--standalone"]
        else:
            # Same value on every node: id@host:controller_port:directory_id.
            voters = ",".join(
                f"{nd.node_id}@{_HOST}:{nd.controller_port}:{nd.directory_id}" for nd in nodes
            )
            mode = ["--initial-controllers", voters]
        procs = []
        for node in nodes:
            cmd = self._java_cmd(
                STORAGE_TOOL_CLASS,
                "format",
                "--config", str(node.config),
                "--cluster-id", self.cluster_id,
                *mode,
                heap="128m",
                logs_dir=node.dir,
            )  # fmt: skip
            out = open(node.dir / "format.log", "wb")  # closed after the wait below
            procs.append((node, out, subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )))  # fmt: skip
        errors = []
        for node, out, proc in procs:
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = -1
            finally:
                out.close()
            if rc != 0:
                errors.append(
                    f"node {node.node_id}: storage format exit {rc}\n"
                    f"{_tail_file(node.dir / 'format.log')}"
                )
        if errors:
            raise KafkaClusterError("\n".join(errors))

    def _spawn(self, node: _Node) -> None:
        cmd = self._java_cmd(
            SERVER_CLASS,
            str(node.config),
            heap=self.heap,
            logs_dir=node.dir,
        )
        with open(node.console_log, "ab") as out:
            node.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: a Ctrl-C in the terminal reaches only Python, which then runs
                # stop(); the JVMs never get a stray SIGINT in the middle of a test.
                start_new_session=True,
            )
        node.paused = False
        node.meant_to_run = True
        node.pid_file.write_text(f"{node.proc.pid}\n")

    def _signal_term(self, node: _Node) -> None:
        assert node.proc is not None
        node.meant_to_run = False
        with contextlib.suppress(ProcessLookupError):
            node.proc.send_signal(signal.SIGTERM)
            # A SIGSTOPped JVM would hold SIGTERM pending forever.
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def _reap(self, nodes: list[_Node], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            assert node.proc is not None
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.pid_file.unlink(missing_ok=True)

    def _died(self, node: _Node, what: str) -> KafkaClusterError:
        assert node.proc is not None
        return KafkaClusterError(
            f"{what}: node {node.node_id} exited with code {node.proc.returncode}\n"
            f"--- {node.server_log} (tail) ---\n{_tail_file(node.server_log)}\n"
            f"--- {node.console_log} (tail) ---\n{_tail_file(node.console_log, 20)}"
        )

    def _running(self) -> Iterator[_Node]:
        return (n for n in self._nodes.values() if n.alive() and not n.paused)

    def _wait_ready(self, deadline: float, what: str) -> None:
        """Wait until every running node answers Metadata listing every running node as a
        broker. Fails fast, with the log tail, if a node we just started dies."""
        last = "no answer yet"
        while True:
            for node in self._nodes.values():
                if node.meant_to_run and node.proc is not None and node.proc.poll() is not None:
                    raise self._died(node, what)
            running = list(self._running())
            expected = frozenset(n.node_id for n in running)
            views: dict[int, _MetadataView | str] = {}
            for node in running:
                try:
                    views[node.node_id] = _probe_metadata(node.broker_port)
                except (OSError, struct.error) as exc:
                    views[node.node_id] = f"{type(exc).__name__}: {exc}"
            ok = all(
                isinstance(v, _MetadataView) and v.brokers >= expected and v.controller_id >= 0
                for v in views.values()
            )
            if ok:
                return
            last = "; ".join(
                f"node {nid}: "
                + (f"brokers={sorted(v.brokers)} controller={v.controller_id}"
                   if isinstance(v, _MetadataView) else v)
                for nid, v in sorted(views.items())
            )  # fmt: skip
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- node {n.node_id} {n.server_log} (tail) ---\n"
                    + _tail_file(n.server_log, 15)
                    for n in self._nodes.values()
                )
                raise KafkaClusterError(
                    f"{what}: not ready before the timeout; last probe: {last}\n{tails}"
                )
            time.sleep(0.25)
