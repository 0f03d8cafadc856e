"""Validation issues and their FHIR OperationOutcome form.

Diagnostics built here and elsewhere in ``schemas`` must never contain personal data: only
element paths, codes and types. Outcomes are returned to callers and end up in logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.canonical import EVENT_ID_SYSTEM

SEVERITIES = frozenset({"fatal", "error", "warning", "information"})

# The full R4 issue-type value set (http://hl7.org/fhir/issue-type), so other modules can use
# e.g. "conflict" or "business-rule" without widening this list later.
ISSUE_TYPES = frozenset(
    {
        "invalid", "structure", "required", "value", "invariant",
        "security", "login", "unknown", "expired", "forbidden", "suppressed",
        "processing", "not-supported", "duplicate", "multiple-matches", "not-found", "deleted",
        "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict",
        "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled",
        "informational",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Issue:
    """One problem (or note) about a message, located by a FHIRPath-like expression."""

    severity: str
    code: str
    diagnostics: str
    expression: str | None = None

    def __post_init__(self) -> None:
        # Fail at construction, not when a client's FHIR parser rejects the outcome later.
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown issue severity {self.severity!r}")
        if self.code not in ISSUE_TYPES:
            raise ValueError(f"unknown issue type {self.code!r}")

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            # R4 deprecates `location` in favour of `expression`, but older R4 clients still
            # read only `location`; sending both costs nothing.
            issue["expression"] = [self.expression]
            issue["location"] = [self.expression]
        return issue


class InvalidMessage(Exception):
    """A message the hub refuses; ``status`` is the HTTP status the intake should answer."""

    def __init__(self, issues: list[Issue], status: int = 400) -> None:
        if not issues:
            raise ValueError("InvalidMessage needs at least one issue")
        self.issues = list(issues)
        self.status = status
        super().__init__("; ".join(_summary(i) for i in self.issues))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def _summary(issue: Issue) -> str:
    where = f" at {issue.expression}" if issue.expression else ""
    return f"{issue.code}{where}: {issue.diagnostics}"


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """FHIR R4 OperationOutcome JSON for ``issues``."""
    if not issues:
        # OperationOutcome.issue is 1..*; an empty list would not be a valid resource.
        issues = [Issue("information", "informational", "no issues detected")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def accepted_outcome(event_id: str, text: str) -> dict[str, Any]:
    """Information-level outcome carrying the hub's event id.

    The id is in the diagnostics for people and in ``details.coding`` for machines, so clients
    need not parse free text.
    """
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "details": {
                    "coding": [{"system": EVENT_ID_SYSTEM, "code": event_id}],
                    "text": text,
                },
                "diagnostics": f"{text} (event id: {event_id})",
            }
        ],
    }


def event_id_from_outcome(outcome: dict[str, Any]) -> str | None:
    """The event id an ``accepted_outcome`` carries, or None (helper for clients and tests)."""
    for issue in outcome.get("issue", []):
        for coding in (issue.get("details") or {}).get("coding", []):
            if coding.get("system") == EVENT_ID_SYSTEM:
                return coding.get("code")
    return None
