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
# MessageHeader extension a sender puts on an acute change to mark it an emergency
# (break-glass): valueString is the reason, required. See schemas/message.py.
BREAK_GLASS_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/break-glass"
# What a notification carries (minimum necessary): valueCode full | summary.
CONTENT_LEVEL_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/content-level"
# HL7 v3 ActReason: BTG ("break the glass") marks data disclosed in an emergency.
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BREAK_THE_GLASS = "BTG"

# Patient-identifier systems an Organization issues (senders are bound to their own ids): the
# JP Core system derived from its 10-digit 医療機関コード, and any it lists in the extension.
INSTITUTION_NO_SYSTEM = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no"
PATIENT_ID_SYSTEM_PREFIX = "urn:oid:1.2.392.100495.20.3.51.1"  # + the 10-digit code
PATIENT_IDENTIFIER_SYSTEM_EXTENSION = (
    f"{CANONICAL_BASE}/StructureDefinition/patient-identifier-system"
)
