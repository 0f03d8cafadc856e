"""The routing table: which care-team role hears of which event, and how urgently.

Defaults are DESIGN.md's table; a region overrides it with a JSON file
(``RENKEI_ROUTING_FILE``) of ``{"admission": {"care-manager": "urgent", ...}, ...}``; an event
named in the file replaces that event's whole row.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import CareTeamRole, EventType

PRIORITIES = ("routine", "urgent", "stat")
RoutingTable = dict[EventType, dict[CareTeamRole, str]]

_R = CareTeamRole
DEFAULT_ROUTING: RoutingTable = {
    EventType.ADMISSION: {
        _R.PRIMARY_PHYSICIAN: "routine",
        _R.VISITING_NURSE: "routine",
        _R.CARE_MANAGER: "urgent",
        _R.PHARMACY: "routine",
        _R.CARE_SERVICE: "routine",
    },
    EventType.DISCHARGE: {
        _R.PRIMARY_PHYSICIAN: "routine",
        _R.VISITING_NURSE: "urgent",
        _R.CARE_MANAGER: "urgent",
        _R.PHARMACY: "routine",
        _R.CARE_SERVICE: "routine",
    },
    EventType.ACUTE_CHANGE: {
        _R.PRIMARY_PHYSICIAN: "stat",
        _R.BACKUP_PHYSICIAN: "stat",
        _R.VISITING_NURSE: "stat",
        _R.CARE_MANAGER: "urgent",
    },
    EventType.END_OF_LIFE: {
        _R.PRIMARY_PHYSICIAN: "urgent",
        _R.BACKUP_PHYSICIAN: "urgent",
        _R.VISITING_NURSE: "urgent",
        _R.CARE_MANAGER: "urgent",
        _R.PHARMACY: "routine",
        _R.CARE_SERVICE: "routine",
        _R.COMMUNITY_SUPPORT_CENTER: "routine",
    },
}


class RoutingFileError(ValueError):
    pass


def load_routing(path: Path | None) -> RoutingTable:
    table = {event: dict(row) for event, row in DEFAULT_ROUTING.items()}
    if path is None:
        return table
    try:
        overrides = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RoutingFileError(f"routing file {path}: {error}") from None
    if not isinstance(overrides, dict):
        raise RoutingFileError(f"routing file {path}: expected an object of events")
    for event_name, row in overrides.items():
        try:
            event = EventType(event_name)
            if not isinstance(row, dict):
                raise ValueError("expected an object of care-team roles")
            parsed = {CareTeamRole(role): priority for role, priority in row.items()}
        except ValueError as error:
            raise RoutingFileError(f"routing file {path}, {event_name}: {error}") from None
        bad = [p for p in parsed.values() if p not in PRIORITIES]
        if bad:
            raise RoutingFileError(f"routing file {path}, {event_name}: unknown priority {bad[0]}")
        table[event] = parsed
    return table
