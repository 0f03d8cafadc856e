"""``make test``: the whole suite, leg by leg (engine x database), with a summary per leg.

Leg 1 runs everything on Tansu + SQLite, pure tests included; leg 2 reruns every test that
touches a broker or a database on PostgreSQL; the Apache Kafka legs rerun the tests that touch a
broker (database-only tests do not depend on the engine and ran on both databases). They
need Java and Maven; without them this prints one line saying so instead of skipping silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

LEGS = [
    # (engine, database, which tests): "all" (pure ones too), "database" (every test that
    # touches a broker or a database), "broker" (only those that touch a broker)
    ("tansu", "sqlite", "all"),
    ("tansu", "postgresql", "database"),
    ("kafka", "postgresql", "broker"),
    ("kafka", "sqlite", "broker"),
]


def java_and_maven() -> bool:
    return shutil.which("java") is not None and shutil.which("mvn") is not None


def run_leg(engine: str, database: str, which: str, extra: list[str]) -> tuple[int, str, float]:
    env = dict(os.environ)
    env.update(
        RENKEI_TEST_ENGINE=engine,
        RENKEI_TEST_DATABASE=database,
        RENKEI_TEST_PURE="1" if which == "all" else "0",
        RENKEI_TEST_BROKER_ONLY="1" if which == "broker" else "0",
    )
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not faults", "-p", "no:cacheprovider"]
    print(f"\n=== leg: engine={engine} database={database} ===", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command + extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    summary = ""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        if re.search(r"\d+ (passed|failed|error)", line):
            summary = line.strip().strip("=").strip()
    return process.wait(), summary, time.monotonic() - started


def main() -> int:
    extra = sys.argv[1:]
    legs = LEGS
    if not java_and_maven():
        print("Apache Kafka legs did not run: java and mvn are not both on PATH")
        legs = [leg for leg in LEGS if leg[0] != "kafka"]
    results = []
    for engine, database, which in legs:
        code, summary, seconds = run_leg(engine, database, which, extra)
        results.append((engine, database, code, summary, seconds))
    print("\n=== legs ===")
    worst = 0
    passed = failed = 0
    for engine, database, code, summary, seconds in results:
        passed += _count(summary, "passed")
        failed += _count(summary, "failed") + _count(summary, "error")
        if code and not summary:
            failed += 1  # a leg that crashed before reporting counts as a failure
        print(
            f"engine={engine:6} database={database:10} {seconds:6.0f}s  {summary or 'no summary'}"
        )
        worst = worst or code
    # The plain closing line CI reads: every leg's tests added up.
    print(f"{passed} passed, {failed} failed")
    return worst


def _count(summary: str, word: str) -> int:
    match = re.search(rf"(\d+) {word}", summary)
    return int(match.group(1)) if match else 0


if __name__ == "__main__":
    sys.exit(main())
