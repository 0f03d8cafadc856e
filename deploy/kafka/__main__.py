"""`python -m deploy.kafka up --nodes 1|3 [--dir DIR]` and `python -m deploy.kafka fetch`.

`up` prints one line `RENKEI_KAFKA_BOOTSTRAP=<host:port,...>` once every node is ready (a
script can wait for that line, then export it), stays in the foreground, and stops the
nodes cleanly on Ctrl-C or SIGTERM. Progress and errors go to stderr so stdout carries only
that line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from deploy.kafka.cluster import KafkaCluster, KafkaClusterError, ensure_jars, java_available


def _log(msg: str) -> None:
    print(f"[deploy.kafka] {msg}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="renkei-kafka-"))
    cluster = KafkaCluster(base, nodes=args.nodes, heap=args.heap)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Handlers first: a SIGTERM that arrives during start still ends in a clean stop().
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        t0 = time.monotonic()
        _log(f"starting {args.nodes} node(s) under {base}")
        bootstrap = cluster.start(timeout=args.timeout)
        _log(f"ready in {time.monotonic() - t0:.1f}s; logs: {base}/node-N/server.log")
        print(f"RENKEI_KAFKA_BOOTSTRAP={bootstrap}", flush=True)
        while not stop.wait(1.0):
            # A node that dies on its own ends `up`: better than serving a broken cluster.
            dead = [n for n in cluster.node_ids if cluster.pid(n) is None]
            if dead:
                _log(f"node(s) {dead} exited; see {base}/node-N/server.log")
                return 1
        return 0
    except KafkaClusterError as exc:
        _log(str(exc))
        return 1
    finally:
        _log("stopping")
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="copy the Kafka jars from Maven Central into the cache")
    up = sub.add_parser("up", help="run a local KRaft cluster until Ctrl-C / SIGTERM")
    up.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    up.add_argument("--dir", help="working folder (wiped per node on start); default: a temp dir")
    up.add_argument("--heap", default="256m", help="max heap per node (default 256m)")
    up.add_argument("--timeout", type=float, default=90, help="start timeout in seconds")
    args = parser.parse_args(argv)

    if not java_available():
        _log("java and mvn must both be on PATH")
        return 2
    if args.command == "fetch":
        _log(f"jars in {ensure_jars()}")
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
