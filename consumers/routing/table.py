"""The routing table: which care-team role hears of which event, how urgently, and how much.

Defaults are DESIGN.md's table. A region overrides it with a JSON file (``RENKEI_ROUTING_FILE``)
of ``{event: {care-team-role: priority-or-route}}``, where a route is either a priority string
(``"urgent"``) or an object ``{"priority": "urgent", "content": "summary"}``; an event named in the
file replaces that event's whole row. ``content`` says what a notification carries (minimum
necessary): ``full`` (the message itself) or ``summary`` (event, patient name, time, sender,
what is due; no message); left out, it is the role's default (``DEFAULT_CONTENT``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.events import CareTeamRole, EventType

PRIORITIES = ("routine", "urgent", "stat")
CONTENT_LEVELS = ("full", "summary")
FULL, SUMMARY = CONTENT_LEVELS

_R = CareTeamRole
# Minimum necessary: those who treat or nurse the person, dispense for them or plan their care
# read the message; care services and the community support center need to know that
# something happened and what to do, not the clinical detail.
DEFAULT_CONTENT: dict[CareTeamRole, str] = {
    _R.PRIMARY_PHYSICIAN: FULL,
    _R.BACKUP_PHYSICIAN: FULL,
    _R.VISITING_NURSE: FULL,
    _R.EMERGENCY_HOSPITAL: FULL,
    _R.PHARMACY: FULL,
    _R.CARE_MANAGER: FULL,
    _R.CARE_SERVICE: SUMMARY,
    _R.COMMUNITY_SUPPORT_CENTER: SUMMARY,
}


@dataclass(frozen=True)
class Route:
    priority: str
    content: str


RoutingTable = dict[EventType, dict[CareTeamRole, Route]]


def _row(priorities: dict[CareTeamRole, str]) -> dict[CareTeamRole, Route]:
    return {role: Route(p, DEFAULT_CONTENT[role]) for role, p in priorities.items()}


DEFAULT_ROUTING: RoutingTable = {
    EventType.ADMISSION: _row(
        {
            _R.PRIMARY_PHYSICIAN: "routine",
            _R.VISITING_NURSE: "routine",
            _R.CARE_MANAGER: "urgent",
            _R.PHARMACY: "routine",
            _R.CARE_SERVICE: "routine",
        }
    ),
    EventType.DISCHARGE: _row(
        {
            _R.PRIMARY_PHYSICIAN: "routine",
            _R.VISITING_NURSE: "urgent",
            _R.CARE_MANAGER: "urgent",
            _R.PHARMACY: "routine",
            _R.CARE_SERVICE: "routine",
        }
    ),
    EventType.ACUTE_CHANGE: _row(
        {
            _R.PRIMARY_PHYSICIAN: "stat",
            _R.BACKUP_PHYSICIAN: "stat",
            _R.VISITING_NURSE: "stat",
            _R.CARE_MANAGER: "urgent",
        }
    ),
    EventType.END_OF_LIFE: _row(
        {
            _R.PRIMARY_PHYSICIAN: "urgent",
            _R.BACKUP_PHYSICIAN: "urgent",
            _R.VISITING_NURSE: "urgent",
            _R.CARE_MANAGER: "urgent",
            _R.PHARMACY: "routine",
            _R.CARE_SERVICE: "routine",
            _R.COMMUNITY_SUPPORT_CENTER: "routine",
        }
    ),
}


class RoutingFileError(ValueError):
    pass


def content_for(table: RoutingTable, event: EventType, role: CareTeamRole) -> str:
    """What the role's notification carries for this event: the table's, else the default."""
    route = table.get(event, {}).get(role)
    return route.content if route is not None else DEFAULT_CONTENT[role]


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
            table[event] = {
                CareTeamRole(role): _route(CareTeamRole(role), value) for role, value in row.items()
            }
        except ValueError as error:
            raise RoutingFileError(f"routing file {path}, {event_name}: {error}") from None
    return table


def _route(role: CareTeamRole, value: Any) -> Route:
    """``"urgent"`` (the first format, still read) or ``{"priority": ..., "content": ...}``."""
    if isinstance(value, str):
        value = {"priority": value}
    if not isinstance(value, dict):
        raise ValueError(f"{role}: expected a priority or an object with priority and content")
    unknown = sorted(set(value) - {"priority", "content"})
    if unknown:
        raise ValueError(f"{role}: unknown key {unknown[0]}")
    priority = value.get("priority")
    if priority not in PRIORITIES:
        raise ValueError(f"{role}: unknown priority {priority}; expected one of {PRIORITIES}")
    content = value.get("content", DEFAULT_CONTENT[role])
    if content not in CONTENT_LEVELS:
        raise ValueError(f"{role}: unknown content {content}; expected one of {CONTENT_LEVELS}")
    return Route(priority, content)
