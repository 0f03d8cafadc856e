"""Canonical URLs the hub publishes.

Kept in its own module so that both ``outcome`` and ``events`` can use them without importing
each other (``events`` needs ``Issue`` from ``outcome``).
"""

from __future__ import annotations

CANONICAL_BASE = "https://renkei-hub.example.jp/fhir"
EVENT_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/event"
CARE_TEAM_ROLE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/care-team-role"
# Identifier system of the hub's event ids, used in accepted OperationOutcomes so a client can
# read the id without parsing free text.
EVENT_ID_SYSTEM = f"{CANONICAL_BASE}/event-id"
