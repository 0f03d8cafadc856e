"""POST -> recipient's list latency: how long one event takes to reach a care manager.

Starts a real hub (``renkei up`` in a subprocess, its own data dir and port; embedded Tansu and
SQLite unless RENKEI_KAFKA_BOOTSTRAP / RENKEI_DATABASE_URL are set), loads the demo region over
HTTP, then posts N admissions one after the other. For each, the clock runs from sending the
POST until the care manager's ``GET /fhir/Communication`` (polled every 2 ms) lists it.

    make bench-latency             # 100 events, prints median / p90 / p99 / max
    .venv/bin/python -m tests.benchmarks.latency --events 300

On the embedded SQLite it also splits each event's time by the hub's own timestamps: accepted
(the intake's commit) -> published (the relay marked the outbox row sent) -> routed (the
router's commit), so a slow stage shows which one it is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from renkei.kafka_probe import free_port


def start_hub(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RENKEI_DATA_DIR=str(data_dir), RENKEI_PORT=str(port))
    log = open(data_dir / "hub.log", "wb")  # noqa: SIM115 - handed to the process
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"hub exited; see {data_dir / 'hub.log'}")
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("hub not ready within 60 s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(base_url: str, events: int) -> list[float]:
    # Imported late: the settings (data dir for token keys) must see the environment first.
    from schemas.events import EventType
    from services.auth.service import Role
    from services.demo import _headers, load_region
    from tests.hubtools import event_id_of, message, sender_of

    reader = _headers("misawa-care-plan-1", Role.MEMBER, "cm-sato")
    timings = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        load_region(client)
        for _ in range(events):
            bundle = message(EventType.ADMISSION, "p01")
            headers = _headers(sender_of(bundle), Role.SYSTEM)
            started = time.perf_counter()
            response = client.post("/fhir/$process-message", json=bundle, headers=headers)
            assert response.status_code == 202, response.text
            event_id = event_id_of(response.json())
            while True:
                listing = client.get("/fhir/Communication", params={"_count": 1}, headers=reader)
                entries = listing.json().get("entry", [])
                if entries and entries[0]["resource"]["identifier"][0]["value"] == event_id:
                    break
                if time.perf_counter() - started > 30:
                    raise SystemExit(f"event {event_id} not delivered within 30 s")
                time.sleep(0.002)
            timings.append(time.perf_counter() - started)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["RENKEI_DATA_DIR"] = str(data_dir)
        port = free_port()
        hub = start_hub(data_dir, port)
        try:
            timings = measure(f"http://127.0.0.1:{port}", args.events)
        finally:
            hub.terminate()
            hub.wait(timeout=30)
        stages = stage_split(data_dir / "renkei.sqlite3")
    engine = "apache-kafka" if os.environ.get("RENKEI_KAFKA_BOOTSTRAP") else "tansu (embedded)"
    url = os.environ.get("RENKEI_DATABASE_URL", "")
    database = "postgresql" if "postgresql" in url else "sqlite"
    ms = [t * 1000 for t in timings]
    print(f"POST -> care manager's Communication list, {len(ms)} admissions, one at a time")
    print(f"engine={engine} database={database}")
    print(
        f"median {statistics.median(ms):.1f} ms  p90 {percentile(ms, 0.9):.1f} ms  "
        f"p99 {percentile(ms, 0.99):.1f} ms  max {max(ms):.1f} ms  min {min(ms):.1f} ms"
    )
    for name, values in stages.items():
        print(f"  {name:<28} median {statistics.median(values):6.1f} ms  "
              f"p90 {percentile(values, 0.9):6.1f} ms")  # fmt: skip
    return 0


def stage_split(database: Path) -> dict[str, list[float]]:
    """Milliseconds per stage from the hub's timestamps (SQLite only; empty otherwise)."""
    if os.environ.get("RENKEI_DATABASE_URL") or not database.exists():
        return {}
    import sqlite3
    from datetime import datetime

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value)

    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT e.accepted_at, o.sent_at, e.routed_at FROM event e JOIN outbox o"
            " ON o.event_id = e.id AND o.topic LIKE 'renkei.event.%'"
            " WHERE e.routed_at IS NOT NULL AND o.sent_at IS NOT NULL"
        ).fetchall()
    split: dict[str, list[float]] = {"accepted -> published (relay)": [],
                                     "published -> routed (router)": []}  # fmt: skip
    for accepted, sent, routed in rows:
        split["accepted -> published (relay)"].append(
            (at(sent) - at(accepted)).total_seconds() * 1e3
        )
        split["published -> routed (router)"].append((at(routed) - at(sent)).total_seconds() * 1e3)
    return split if rows else {}


if __name__ == "__main__":
    sys.exit(main())
