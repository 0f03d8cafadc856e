"""The failover report: one row per scenario, printed and written to var/failover-report.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_PATH = REPO_ROOT / "var" / "failover-report.md"


@dataclass
class ScenarioResult:
    scenario: str
    fault: str
    posted: int = 0  # POSTs attempted while the fault ran
    accepted: int = 0  # answered 202
    failed_posts: int = 0  # anything but 202 (or no answer in time)
    lost: int = 0  # accepted, never routed
    duplicated: int = 0  # notification rows beyond one per (event, recipient)
    wrong_recipients: int = 0  # routed events whose recipients differ from the baseline
    out_of_order: int = 0  # per patient and event type: routed before an earlier POST
    kafka_out_of_order: int = 0  # per patient and topic: first copy on Kafka out of POST order
    kafka_records: int = 0  # records of the posted events on the event topics
    republished: int = 0  # relay re-drives (events published again, not routed in the window)
    p50_delay: float = 0.0  # POST (accepted_at) -> routed_at, seconds
    longest_delay: float = 0.0
    longest_post: float = 0.0  # slowest POST answer, seconds
    routing_pause: float = 0.0  # longest gap between two consecutive routings
    drain_seconds: float = 0.0  # after posting stopped, until everything was routed
    duration: float = 0.0  # the posting window, seconds
    timeline: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    evidence: list[str] = field(default_factory=list)


HEADER = (
    "| scenario | posted | 202 | failed POST | lost | dup. notif. | wrong recip. | out-of-order "
    "| Kafka out-of-order | Kafka records / events | re-driven | POST->routed p50 | longest "
    "| longest routing pause | drain |"
)


def row(r: ScenarioResult) -> str:
    return (
        f"| {r.scenario} | {r.posted} | {r.accepted} | {r.failed_posts} | {r.lost} "
        f"| {r.duplicated} | {r.wrong_recipients} | {r.out_of_order} | {r.kafka_out_of_order} "
        f"| {r.kafka_records} / {r.accepted} | {r.republished} | {r.p50_delay:.2f} s "
        f"| {r.longest_delay:.2f} s | {r.routing_pause:.2f} s | {r.drain_seconds:.1f} s |"
    )


def table(results: list[ScenarioResult]) -> str:
    separator = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, separator, *(row(r) for r in results)])


def render(results: list[ScenarioResult], setup: str) -> str:
    lines = [
        "# Failover report",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')} by "
        "`make test-faults` (tests/faults/test_failover.py).",
        "",
        setup,
        "",
        table(results),
        "",
    ]
    for r in results:
        lines += [f"## {r.scenario}", "", f"Fault: {r.fault}", "", "Timeline (posting clock):", ""]
        lines += [f"- {entry}" for entry in r.timeline]
        if r.details:
            lines += ["", "Where the time went:", ""]
            lines += [f"- {entry}" for entry in r.details]
        if r.warnings:
            lines += ["", "Hub warnings during the scenario:", ""]
            lines += [f"- {count} x {text}" for text, count in r.warnings.most_common()]
        if r.evidence:
            lines += ["", "Evidence:", "", "```", *r.evidence, "```"]
        lines.append("")
    return "\n".join(lines)


def write(results: list[ScenarioResult], setup: str) -> Path:
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(render(results, setup), encoding="utf-8")
    return REPORT_PATH
