"""The metric objects and the functions the pipeline calls; one process or several.

One process (``renkei up`` as a single process, the tests): prometheus_client's default
registry, with its process and platform collectors. Several processes (HTTP workers, router,
relay): prometheus_client's multiprocess mode. Whoever starts the processes calls
``configure(settings, processes)`` first: it empties ``<data_dir>/metrics`` and sets
PROMETHEUS_MULTIPROC_DIR, which the children inherit, so every process writes its samples
there and the worker that answers a scrape adds them all up. ``process_exited(pid)`` drops a
dead process's live gauges (its counters and histograms stay counted, as they must).

Every label value passes through a closed set (``_closed``): a caller that hands in anything
else (a patient id, an organization) gets "other", never its value in a label.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from starlette.requests import Request

from consumers.routing.rules import PRIORITY_RANK
from renkei.db import utcnow
from renkei.keys import secure_dir
from renkei.settings import Settings
from schemas.events import EventType

# No *_created series: a timestamp per label set that no dashboard of ours reads.
disable_created_metrics()

ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
OTHER = "other"
EVENT_TYPES = frozenset(t.value for t in EventType)
PRIORITIES = frozenset(PRIORITY_RANK)
# accepted 202, repeat 200 (already accepted), refused 4xx (the sender's to fix), failed 5xx.
OUTCOMES = frozenset({"accepted", "repeat", "refused", "failed"})

# Intake answers in milliseconds; routing includes the outbox and the broker (seconds when a
# broker was away, minutes in a backlog).
INTAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

INTAKE_SECONDS = Histogram(
    "renkei_intake_seconds",
    "POST /fhir/$process-message: time to answer, by event type and outcome "
    "(accepted 202, repeat 200, refused 4xx, failed 5xx); _count is the intake rate",
    ["event_type", "outcome"],
    buckets=INTAKE_BUCKETS,
)
ROUTING_SECONDS = Histogram(
    "renkei_routing_seconds",
    "Event accepted (intake commit) to routed (router commit), by event type",
    ["event_type"],
    buckets=ROUTING_BUCKETS,
)
NOTIFICATIONS = Counter(
    "renkei_notifications",
    "Notifications the router wrote, by event type and priority",
    ["event_type", "priority"],
)


def _closed(value: object, allowed: frozenset[str]) -> str:
    if value is None:
        return UNKNOWN
    text = getattr(value, "value", value)
    return text if isinstance(text, str) and text in allowed else OTHER


def outcome_of(status: int) -> str:
    if status == 202:
        return "accepted"
    if 200 <= status < 300:
        return "repeat"
    return "refused" if 400 <= status < 500 else "failed"


def observe_intake(event_type: object, outcome: str, seconds: float) -> None:
    """One answered POST /fhir/$process-message (``event_type`` None: not parsed that far)."""
    INTAKE_SECONDS.labels(_closed(event_type, EVENT_TYPES), _closed(outcome, OUTCOMES)).observe(
        max(seconds, 0.0)
    )


def observe_routed(event_type: object, accepted_at: datetime, priorities: Iterable[str]) -> None:
    """One event routed for the first time (now; it was accepted at ``accepted_at``), with the
    priorities of the notifications written for it (one entry per notification)."""
    kind = _closed(event_type, EVENT_TYPES)
    ROUTING_SECONDS.labels(kind).observe(max(since(accepted_at), 0.0))
    for priority in priorities:
        NOTIFICATIONS.labels(kind, _closed(priority, PRIORITIES)).inc()


def since(moment: datetime) -> float:
    """Seconds from ``moment`` (timezone-aware, as the database reads it back) until now."""
    return (utcnow() - moment).total_seconds()


# The intake's event type travels from the view to the middleware in the ASGI scope's state.
EVENT_TYPE_KEY = "renkei_metrics_event_type"


def note_event_type(request: Request, event_type: EventType) -> None:
    """Called by the intake view once the message is parsed (IntakeTimer reads it)."""
    setattr(request.state, EVENT_TYPE_KEY, event_type.value)


# --------------------------------------------------------------------------------------------
# One process or several


def configure(settings: Settings, processes: int = 1) -> Path | None:
    """Choose the mode before any hub process starts; returns the multiprocess directory.

    Call it in the process that starts the others, before it starts them (they inherit the
    environment). A directory left by an earlier run is emptied: its counters belong to
    processes that are gone.
    """
    if processes <= 1:
        os.environ.pop(ENV, None)
        directory = None
    else:
        directory = Path(settings.data_dir) / "metrics"
        shutil.rmtree(directory, ignore_errors=True)
        secure_dir(directory)
        os.environ[ENV] = str(directory)
    # prometheus_client picks the value class when it is imported; pick again, so that the
    # metric children created from now on (labels are created on first use) follow the mode.
    values.ValueClass = values.get_value_class()
    return directory


def multiprocess_dir() -> Path | None:
    directory = os.environ.get(ENV)
    return Path(directory) if directory else None


def process_exited(pid: int) -> None:
    """A hub process has exited (the supervisor saw it): forget its live gauges."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def render(scrape_time: list[Metric]) -> bytes:
    """The whole exposition: the processes' own metrics, then what the scrape computed."""
    directory = multiprocess_dir()
    if directory is None:
        own = generate_latest(REGISTRY)
    else:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))
        registry.register(_HubProcesses(directory))
        own = generate_latest(registry)
    computed = CollectorRegistry(auto_describe=False)
    computed.register(_Fixed(scrape_time))
    return own + generate_latest(computed)


class _Fixed:
    """A collector that yields metric families computed beforehand (async, at scrape)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


_PID_FILE = re.compile(r".*_(\d+)\.db")


class _HubProcesses:
    """process_* of every live hub process (multiprocess mode), labelled with its pid.

    prometheus_client's process collector only sees the process it runs in; the pids come from
    the sample files each process writes.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self._pids():
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            with contextlib.suppress(OSError):
                for family in collector.collect():
                    target = merged.setdefault(
                        family.name, Metric(family.name, family.documentation, family.type)
                    )
                    for sample in family.samples:
                        labels = {**sample.labels, "pid": str(pid)}
                        target.add_sample(sample.name, labels, sample.value)
        yield from merged.values()

    def _pids(self) -> list[int]:
        pids = set()
        for path in self.directory.glob("*.db"):
            match = _PID_FILE.fullmatch(path.name)
            if match and Path(f"/proc/{match.group(1)}").exists():
                pids.add(int(match.group(1)))
        return sorted(pids)
