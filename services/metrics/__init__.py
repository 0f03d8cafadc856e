"""The hub's Prometheus metrics: ``GET /metrics`` and the few calls the pipeline makes.

The intake and the router each call one function here (``observe_intake`` through the intake
middleware, ``observe_routed``); the outbox depth and the consumer lag are computed at scrape
time (services/metrics/scrape.py). Labels are closed sets (event type, outcome, priority,
topic, consumer): no patient, organization, id or name ever becomes a label value.
"""

from services.metrics.registry import (
    configure,
    multiprocess_dir,
    note_event_type,
    observe_intake,
    observe_routed,
    process_exited,
    since,
)

__all__ = [
    "configure",
    "multiprocess_dir",
    "note_event_type",
    "observe_intake",
    "observe_routed",
    "process_exited",
    "since",
]
