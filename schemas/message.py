"""Parse and validate an incoming FHIR R4 message Bundle.

Three stages, each stopping the parse when it finds something:

1. bytes -> JSON object -> Bundle of type message whose first entry is a MessageHeader and
   whose entries are all resources of known types (400, first problem only: later checks
   would only produce noise);
2. the whole Bundle through the fhir.resources R4B model: FHIR datatypes and cardinalities
   (400, every error pydantic reports, capped);
3. the hub's rules: event code, sender, focus, Patient (422, all problems found).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from schemas.canonical import BREAK_GLASS_EXTENSION
from schemas.events import EVENT_RULES, EVENT_SYSTEM, EventType
from schemas.fhir_errors import issues_from_pydantic
from schemas.json_safety import UnsafeJson, load_json
from schemas.outcome import InvalidMessage, Issue

__all__ = ["ParsedMessage", "PatientIdentifier", "break_glass_reason", "parse_message"]

STRUCTURAL = 400
RULE_BROKEN = 422

HEADER = "Bundle.entry[0].resource"
# FHIR id datatype; the sender id becomes a registry key, so hold it to the same shape.
_ORG_REFERENCE = re.compile(r"^Organization/([A-Za-z0-9\-.]{1,64})$")
# FHIR id datatype: at most 64 characters (fhir.resources checks only the characters).
MAX_ID_LENGTH = 64
# A person has a handful of numbers (chart numbers, insurance, care-insurance); 20 is plenty.
MAX_PATIENT_IDENTIFIERS = 20
_ABSTRACT_TYPES = frozenset({"Resource", "DomainResource"})


@dataclass(frozen=True)
class PatientIdentifier:
    system: str
    value: str


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str
    event_type: EventType
    sender_org_id: str
    patient: dict[str, Any]
    patient_identifiers: tuple[PatientIdentifier, ...]
    focus: tuple[dict[str, Any], ...]
    occurred_at: datetime | None
    bundle: dict[str, Any]
    # Set when the sender marked an acute change as an emergency (break-glass): the reason.
    break_glass_reason: str | None = None


@dataclass(frozen=True)
class _Entry:
    index: int
    full_url: str | None
    resource: dict[str, Any]

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}].resource"

    @property
    def type(self) -> str:
        return self.resource["resourceType"]


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a message Bundle; raise InvalidMessage (with .status 400 or 422) if it is bad."""
    bundle = _load_json(raw)
    entries = _check_structure(bundle)
    model = _check_datatypes(bundle)
    return _check_rules(bundle, entries, _aware(model.timestamp))


# --- stage 1: JSON and Bundle shape ---------------------------------------------------------


def _err(code: str, diagnostics: str, expression: str | None = None) -> Issue:
    return Issue("error", code, diagnostics, expression)


def _structural(code: str, diagnostics: str, expression: str | None = None) -> InvalidMessage:
    return InvalidMessage([_err(code, diagnostics, expression)], STRUCTURAL)


def _load_json(raw: bytes) -> dict[str, Any]:
    raw = bytes(raw)  # also accept bytearray / memoryview from the web layer
    if not raw.strip():
        raise _structural("required", "request body is empty")
    try:
        data = load_json(raw)
    except UnsafeJson as exc:
        raise _structural(exc.code, exc.reason) from None
    if not isinstance(data, dict):
        raise _structural("structure", "JSON body must be an object (a FHIR resource)")
    return data


def _check_structure(bundle: dict[str, Any]) -> list[_Entry]:
    if bundle.get("resourceType") != "Bundle":
        raise _structural("structure", "resource must be a Bundle", "resourceType")
    if bundle.get("type") != "message":
        raise _structural("value", "Bundle.type must be message", "Bundle.type")
    raw_entries = bundle.get("entry")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise _structural("required", "a message Bundle needs entries", "Bundle.entry")
    entries = [_entry(i, e) for i, e in enumerate(raw_entries)]
    if entries[0].type != "MessageHeader":
        raise _structural(
            "structure",
            "the first entry of a message Bundle must be a MessageHeader",
            "Bundle.entry[0].resource.resourceType",
        )
    return entries


def _entry(index: int, entry: Any) -> _Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise _structural("structure", "entry must be an object", where)
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise _structural("required", "entry needs a resource object", f"{where}.resource")
    rtype = resource.get("resourceType")
    if not _is_resource_type(rtype):
        raise _structural(
            "structure",
            "resource needs a resourceType naming a FHIR R4 resource",
            f"{where}.resource.resourceType",
        )
    full_url = entry.get("fullUrl")
    return _Entry(index, full_url if isinstance(full_url, str) else None, resource)


def _is_resource_type(name: Any) -> bool:
    # fhir.resources resolves entry resources by this name and fails with KeyError/TypeError
    # for anything unknown, and silently falls back to the base Resource when it is missing.
    if not isinstance(name, str) or name in _ABSTRACT_TYPES:
        return False
    try:
        cls = get_fhir_model_class(name)
    except (ValueError, KeyError):
        return False
    return issubclass(cls, Resource)


# --- stage 2: FHIR datatypes ----------------------------------------------------------------


def _check_datatypes(bundle: dict[str, Any]) -> Bundle:
    try:
        return Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise InvalidMessage(issues_from_pydantic(exc.errors()), STRUCTURAL) from None
    except Exception:  # fhir.resources raises assorted errors on odd input
        # Whatever it was, its text may quote the input, so say nothing specific.
        raise _structural("structure", "Bundle is not valid FHIR R4", "Bundle") from None


def _aware(ts: datetime | None) -> datetime | None:
    # FHIR instant always has a zone; swap pydantic's TzInfo for a stdlib timezone so the
    # value compares, pickles and serialises like any other datetime.
    if ts is None or ts.utcoffset() is None:
        return None
    return ts.replace(tzinfo=timezone(ts.utcoffset()))  # type: ignore[arg-type]


# --- stage 3: the hub's rules ---------------------------------------------------------------


class _References:
    """Resolves references inside the Bundle: by fullUrl, and "Type/id" by type and id."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._by_key: dict[str, _Entry] = {}
        for entry in entries:
            if entry.full_url:
                self._by_key.setdefault(entry.full_url, entry)
            rid = entry.resource.get("id")
            if isinstance(rid, str):
                self._by_key.setdefault(f"{entry.type}/{rid}", entry)

    def resolve(self, reference: str | None) -> _Entry | None:
        return self._by_key.get(reference) if reference else None


def _check_rules(
    bundle: dict[str, Any], entries: list[_Entry], occurred_at: datetime | None
) -> ParsedMessage:
    header = entries[0].resource
    issues: list[Issue] = []
    refs = _References(entries)
    message_id = _message_id(header, issues)
    event_type = _event_type(header, issues)
    sender_org_id = _sender(header, issues)
    patient = _patient(entries, issues)
    identifiers = _identifiers(patient, issues) if patient else ()
    focus = _focus(header, refs, event_type, patient, issues)
    break_glass = _break_glass(header, event_type, issues)
    if issues:
        raise InvalidMessage(issues, RULE_BROKEN)
    # All None cases produced an issue above; the asserts document that for type checkers.
    assert message_id and event_type and sender_org_id and patient
    return ParsedMessage(
        message_id=message_id,
        event_type=event_type,
        sender_org_id=sender_org_id,
        patient=patient.resource,
        patient_identifiers=identifiers,
        focus=tuple(e.resource for e in focus),
        occurred_at=occurred_at,
        bundle=bundle,
        break_glass_reason=break_glass,
    )


def _message_id(header: dict[str, Any], issues: list[Issue]) -> str | None:
    # The id is what makes a re-post recognisable as a repeat of the same message.
    message_id = header.get("id")
    if not message_id:
        issues.append(_err("required", "MessageHeader.id is required", f"{HEADER}.id"))
        return None
    if len(message_id) > MAX_ID_LENGTH:
        # FHIR caps ids at 64 characters; the event table keeps the id (128) as a key.
        text = f"MessageHeader.id is longer than {MAX_ID_LENGTH} characters"
        issues.append(_err("too-long", text, f"{HEADER}.id"))
        return None
    return message_id


def _event_type(header: dict[str, Any], issues: list[Issue]) -> EventType | None:
    coding = header.get("eventCoding")
    where = f"{HEADER}.eventCoding"
    if not coding:
        text = f"MessageHeader.eventCoding from {EVENT_SYSTEM} is required"
        issues.append(_err("required", text, where))
        return None
    if coding.get("system") != EVENT_SYSTEM:
        text = f"eventCoding.system must be {EVENT_SYSTEM}"
        issues.append(_err("code-invalid", text, f"{where}.system"))
        return None
    try:
        return EventType(coding.get("code"))
    except ValueError:
        known = ", ".join(t.value for t in EventType)
        text = f"unknown event code; expected one of {known}"
        issues.append(_err("code-invalid", text, f"{where}.code"))
        return None


def _sender(header: dict[str, Any], issues: list[Issue]) -> str | None:
    where = f"{HEADER}.sender"
    sender = header.get("sender")
    if not sender:
        issues.append(_err("required", "MessageHeader.sender is required", where))
        return None
    # Relative "Organization/id" only: the id must be a key the registry knows.
    match = _ORG_REFERENCE.match(sender.get("reference") or "")
    if not match:
        text = "MessageHeader.sender.reference must be Organization/<id>"
        issues.append(_err("value", text, f"{where}.reference"))
        return None
    return match.group(1)


# The reason is free text written in an emergency; a bound keeps one sender from storing a
# document in it.
MAX_BREAK_GLASS_REASON = 1000


def _break_glass(
    header: dict[str, Any], event_type: EventType | None, issues: list[Issue]
) -> str | None:
    """The break-glass reason, if the sender marked the message as an emergency.

    ``{"url": BREAK_GLASS_EXTENSION, "valueString": "<why>"}`` on the MessageHeader. Only an
    acute change may carry it (the other events can wait for consent), and only with a reason
    (the region office reviews every use).
    """
    marks = [
        (i, ext)
        for i, ext in enumerate(header.get("extension") or [])
        if isinstance(ext, dict) and ext.get("url") == BREAK_GLASS_EXTENSION
    ]
    if not marks:
        return None
    found = len(issues)
    for i, _ext in marks[1:]:
        issues.append(_err("invalid", "only one break-glass extension is allowed",
                           f"{HEADER}.extension[{i}]"))  # fmt: skip
    index, ext = marks[0]
    where = f"{HEADER}.extension[{index}]"
    if event_type is not None and event_type != EventType.ACUTE_CHANGE:
        issues.append(
            _err("business-rule", "break-glass is only for acute-change messages", where)
        )
    reason = ext.get("valueString")
    if not isinstance(reason, str) or not reason.strip():
        issues.append(
            _err("required", "break-glass needs its reason in valueString", f"{where}.valueString")
        )
    elif len(reason) > MAX_BREAK_GLASS_REASON:
        text = f"break-glass reason is longer than {MAX_BREAK_GLASS_REASON} characters"
        issues.append(_err("too-long", text, f"{where}.valueString"))
    return reason.strip() if len(issues) == found and isinstance(reason, str) else None


def break_glass_reason(bundle: dict[str, Any]) -> str | None:
    """The reason of a stored (already validated) message marked break-glass, else None."""
    entries = bundle.get("entry") or [{}]
    header = entries[0].get("resource") or {}
    for ext in header.get("extension") or []:
        if ext.get("url") == BREAK_GLASS_EXTENSION and isinstance(ext.get("valueString"), str):
            return ext["valueString"].strip()
    return None


def _patient(entries: list[_Entry], issues: list[Issue]) -> _Entry | None:
    patients = [e for e in entries if e.type == "Patient"]
    if not patients:
        issues.append(_err("required", "a message Bundle needs a Patient entry", "Bundle.entry"))
        return None
    # One message is about one person; with two Patients routing could not tell whose team.
    for extra in patients[1:]:
        issues.append(_err("invalid", "only one Patient entry is allowed", extra.path))
    return patients[0]


def _identifiers(patient: _Entry, issues: list[Issue]) -> tuple[PatientIdentifier, ...]:
    found = tuple(
        PatientIdentifier(i["system"], i["value"])
        for i in patient.resource.get("identifier") or []
        if i.get("system") and i.get("value")
    )
    if not found:
        # The hub matches the person on identifiers only, never on name or birth date.
        text = "Patient needs an identifier with system and value"
        issues.append(_err("required", text, f"{patient.path}.identifier"))
    elif len(found) > MAX_PATIENT_IDENTIFIERS:
        # Each one is a term of the matching query; thousands would be a query no database
        # plans (SQLite refuses the expression tree).
        text = f"Patient has more than {MAX_PATIENT_IDENTIFIERS} identifiers"
        issues.append(_err("too-costly", text, f"{patient.path}.identifier"))
    return found


def _focus(
    header: dict[str, Any],
    refs: _References,
    event_type: EventType | None,
    patient: _Entry | None,
    issues: list[Issue],
) -> list[_Entry]:
    focus_refs = header.get("focus") or []
    if not focus_refs:
        issues.append(_err("required", "MessageHeader.focus is required", f"{HEADER}.focus"))
        return []
    resolved: list[_Entry] = []
    for i, ref in enumerate(focus_refs):
        where = f"{HEADER}.focus[{i}].reference"
        target = refs.resolve(ref.get("reference"))
        if target is None:
            issues.append(_unresolved(ref, where))
            continue
        resolved.append(target)
        if event_type is not None:
            issues += EVENT_RULES[event_type].check(target.resource, target.path)
        if patient is not None:
            issues += _subject_is_patient(target, refs, patient)
    return resolved


def _unresolved(ref: dict[str, Any], where: str) -> Issue:
    if not ref.get("reference"):
        return _err("required", "focus needs a reference to a Bundle entry", where)
    return Issue(
        "error",
        "not-found",
        "focus reference matches no entry of the Bundle (by fullUrl or Type/id)",
        where,
    )


def _subject_is_patient(target: _Entry, refs: _References, patient: _Entry) -> list[Issue]:
    # The event is routed to the team of the Bundle's Patient; a focus about someone else
    # (or about a Patient the hub cannot see) would notify the wrong people.
    reference = (target.resource.get("subject") or {}).get("reference")
    if reference is None or refs.resolve(reference) is patient:
        return []
    return [
        Issue(
            "error",
            "invalid",
            "focus subject must reference the Patient entry of this Bundle",
            f"{target.path}.subject.reference",
        )
    ]
