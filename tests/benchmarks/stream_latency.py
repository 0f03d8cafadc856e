"""Routed -> received on the live stream: how long a notification takes to reach an open
GET /notifications/stream, with the hub as ``renkei up`` runs it (HTTP workers and the router
in processes of their own, so the stream is woken by the router's doorbell across processes).

Starts a real hub (tests.benchmarks.latency.start_hub: its own data dir and port; embedded
Tansu and SQLite unless RENKEI_KAFKA_BOOTSTRAP / RENKEI_DATABASE_URL are set), loads the demo
region, opens the care manager's stream, then posts N admissions one after the other, each
after the previous one arrived. Routed is the Communication's ``sent`` (the router's clock at
routing, the same host); received is when the event's blank line was read.

    .venv/bin/python -m tests.benchmarks.stream_latency --events 50
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from renkei.kafka_probe import free_port
from tests.benchmarks.latency import percentile, start_hub


def _read_stream(base_url: str, headers: dict, events: queue.Queue, ready: threading.Event) -> None:
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", "/notifications/stream", headers=headers) as response,
    ):
        ready.set()
        data = None
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
            elif line == "" and data is not None:
                events.put((time.time(), json.loads(data)))
                data = None


def measure(base_url: str, count: int) -> tuple[list[float], list[float]]:
    from schemas.events import EventType
    from services.auth.service import Role
    from services.demo import _headers, load_region
    from tests.hubtools import event_id_of, message, sender_of

    reader = _headers("misawa-care-plan-1", Role.MEMBER, "cm-sato")
    arrived: queue.Queue = queue.Queue()
    ready = threading.Event()
    routed_to_stream, post_to_stream = [], []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        load_region(client)
        threading.Thread(
            target=_read_stream, args=(base_url, reader, arrived, ready), daemon=True
        ).start()
        ready.wait(10)
        time.sleep(0.5)
        for _ in range(count):
            bundle = message(EventType.ADMISSION, "p01")
            posted = time.time()
            response = client.post(
                "/fhir/$process-message",
                json=bundle,
                headers=_headers(sender_of(bundle), Role.SYSTEM),
            )
            assert response.status_code == 202, response.text
            event_id = event_id_of(response.json())
            while True:
                received, communication = arrived.get(timeout=30)
                if communication["identifier"][0]["value"] == event_id:
                    break
            sent = datetime.fromisoformat(communication["sent"]).timestamp()
            routed_to_stream.append(received - sent)
            post_to_stream.append(received - posted)
    return routed_to_stream, post_to_stream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["RENKEI_DATA_DIR"] = str(data_dir)
        port = free_port()
        hub = start_hub(data_dir, port)
        try:
            routed, posted = measure(f"http://127.0.0.1:{port}", args.events)
        finally:
            hub.terminate()
            hub.wait(timeout=30)
    url = os.environ.get("RENKEI_DATABASE_URL", "")
    database = "postgresql" if "postgresql" in url else "sqlite"
    print(f"live stream, {len(routed)} admissions one at a time, renkei up, database={database}")
    for name, values in (("routed -> stream", routed), ("POST -> stream", posted)):
        ms = [v * 1000 for v in values]
        print(
            f"{name:17} p50 {statistics.median(ms):6.1f} ms  p99 {percentile(ms, 0.99):6.1f} ms"
            f"  max {max(ms):6.1f} ms  min {min(ms):6.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
