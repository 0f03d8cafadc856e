"""The fault reports: one row per scenario, printed and written under var/ (the broker failovers
to var/failover-report.md, the hub-level faults to var/hub-faults-report.md)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_PATH = REPO_ROOT / "var" / "failover-report.md"
HUB_FAULTS_REPORT_PATH = REPO_ROOT / "var" / "hub-faults-report.md"


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
    # The fault's end (hub restarted, database back, quorum back) -> the last event accepted
    # before it routed (its notifications readable); None: not everything was routed.
    fault_end_to_visible: float | None = None
    duration: float = 0.0  # the posting window, seconds
    timeline: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    evidence: list[str] = field(default_factory=list)


HEADER = (
    "| scenario | posted | 202 | failed POST | lost | dup. notif. | wrong recip. | out-of-order "
    "| Kafka out-of-order | Kafka records / events | re-driven | POST->routed p50 | longest "
    "| longest routing pause | drain | fault end -> all visible |"
)


def row(r: ScenarioResult) -> str:
    return (
        f"| {r.scenario} | {r.posted} | {r.accepted} | {r.failed_posts} | {r.lost} "
        f"| {r.duplicated} | {r.wrong_recipients} | {r.out_of_order} | {r.kafka_out_of_order} "
        f"| {r.kafka_records} / {r.accepted} | {r.republished} | {r.p50_delay:.2f} s "
        f"| {r.longest_delay:.2f} s | {r.routing_pause:.2f} s | {r.drain_seconds:.1f} s "
        f"| {_seconds(r.fault_end_to_visible)} |"
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(results: list[ScenarioResult]) -> str:
    separator = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, separator, *(row(r) for r in results)])


def render(
    results: list[ScenarioResult],
    setup: str,
    title: str = "Failover report",
    source: str = "tests/faults/test_failover.py",
) -> str:
    lines = [
        f"# {title}",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')} by "
        f"`make test-faults` ({source}).",
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


def write(
    results: list[ScenarioResult],
    setup: str,
    path: Path = REPORT_PATH,
    title: str = "Failover report",
    source: str = "tests/faults/test_failover.py",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, setup, title, source), encoding="utf-8")
    return path
