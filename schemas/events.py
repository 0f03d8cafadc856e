"""The four hub events, what each requires of its focus, and the CodeSystems the hub publishes.

Rule checks work on the resource JSON (dicts) after the whole Bundle has passed the
fhir.resources R4B model, so datatypes are already known to be right; they only check the
hub's own requirements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from schemas.canonical import CANONICAL_BASE, CARE_TEAM_ROLE_SYSTEM, EVENT_SYSTEM
from schemas.outcome import Issue

__all__ = [
    "CANONICAL_BASE",
    "CARE_TEAM_ROLE_SYSTEM",
    "EVENT_RULES",
    "EVENT_SYSTEM",
    "CareTeamRole",
    "EventRule",
    "EventType",
    "care_team_role_code_system",
    "code_system",
]

ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


class EventType(StrEnum):
    ADMISSION = "admission"
    DISCHARGE = "discharge"
    ACUTE_CHANGE = "acute-change"
    END_OF_LIFE = "end-of-life"


class CareTeamRole(StrEnum):
    PRIMARY_PHYSICIAN = "primary-physician"
    BACKUP_PHYSICIAN = "backup-physician"
    VISITING_NURSE = "visiting-nurse"
    CARE_MANAGER = "care-manager"
    PHARMACY = "pharmacy"
    CARE_SERVICE = "care-service"
    COMMUNITY_SUPPORT_CENTER = "community-support-center"
    EMERGENCY_HOSPITAL = "emergency-hospital"


# A focus check gets the focus resource JSON and its FHIRPath-like location
# (e.g. "Bundle.entry[2].resource") and returns what is wrong with it.
FocusCheck = Callable[[dict[str, Any], str], list[Issue]]


@dataclass(frozen=True)
class EventRule:
    event_type: EventType
    display_ja: str
    display_en: str
    definition: str
    focus_types: tuple[str, ...]
    check_focus: FocusCheck

    def check(self, resource: dict[str, Any], path: str) -> list[Issue]:
        """Type check plus the rule's own check, for one focus resource."""
        rtype = resource.get("resourceType")
        if rtype not in self.focus_types:
            expected = " or ".join(self.focus_types)
            return [
                Issue(
                    "error",
                    "invalid",
                    f"{self.event_type} message focus must be {expected}, not {rtype}",
                    f"{path}.resourceType",
                )
            ]
        return self.check_focus(resource, path)


# --- small helpers -------------------------------------------------------------------------


def _required(path: str, what: str) -> Issue:
    return Issue("error", "required", what, path)


def _value(path: str, what: str) -> Issue:
    return Issue("error", "value", what, path)


def _entered_in_error(resource: dict[str, Any], path: str) -> list[Issue]:
    # A retracted record must not wake up a whole care team.
    if resource.get("status") == "entered-in-error":
        return [_value(f"{path}.status", "focus status must not be entered-in-error")]
    return []


def _has_code(resource: dict[str, Any], path: str) -> list[Issue]:
    code = resource.get("code") or {}
    if not (code.get("coding") or code.get("text")):
        return [_required(f"{path}.code", f"{resource['resourceType']}.code is required")]
    return []


# --- per-event focus checks ------------------------------------------------------------------


def _check_admission(resource: dict[str, Any], path: str) -> list[Issue]:
    issues: list[Issue] = []
    if resource.get("status") != "in-progress":
        issues.append(_value(f"{path}.status", "admission Encounter.status must be in-progress"))
    cls = resource.get("class") or {}
    if cls.get("code") != "IMP" or cls.get("system", ACT_CODE_SYSTEM) != ACT_CODE_SYSTEM:
        issues.append(
            _value(f"{path}.class", f"admission Encounter.class must be {ACT_CODE_SYSTEM}#IMP")
        )
    return issues


def _check_discharge(resource: dict[str, Any], path: str) -> list[Issue]:
    issues: list[Issue] = []
    if resource.get("status") != "finished":
        issues.append(_value(f"{path}.status", "discharge Encounter.status must be finished"))
    disposition = (resource.get("hospitalization") or {}).get("dischargeDisposition")
    if not disposition:
        # Where the person goes decides who must act (home: visiting nurse on the same day).
        issues.append(
            _required(
                f"{path}.hospitalization.dischargeDisposition",
                "discharge Encounter.hospitalization.dischargeDisposition is required",
            )
        )
    return issues


def _check_acute_change(resource: dict[str, Any], path: str) -> list[Issue]:
    issues = _entered_in_error(resource, path)
    if resource["resourceType"] == "Condition":
        issues += _has_code(resource, path)
        issues += _condition_not_refuted(resource, path)
    return issues


def _condition_not_refuted(resource: dict[str, Any], path: str) -> list[Issue]:
    codings = (resource.get("verificationStatus") or {}).get("coding") or []
    if any(c.get("code") in ("refuted", "entered-in-error") for c in codings):
        return [
            _value(
                f"{path}.verificationStatus",
                "Condition.verificationStatus must not be refuted or entered-in-error",
            )
        ]
    return []


def _check_end_of_life(resource: dict[str, Any], path: str) -> list[Issue]:
    if resource["resourceType"] == "Patient":
        # deceasedBoolean false says the opposite of what the event claims.
        if resource.get("deceasedBoolean") is True or resource.get("deceasedDateTime"):
            return []
        return [
            _required(
                f"{path}.deceased[x]",
                "end-of-life Patient focus needs deceasedDateTime or deceasedBoolean true",
            )
        ]
    return _has_code(resource, path) + _condition_not_refuted(resource, path)


EVENT_RULES: dict[EventType, EventRule] = {
    EventType.ADMISSION: EventRule(
        EventType.ADMISSION,
        "入院",
        "Admission",
        "The person was admitted to hospital (Encounter class IMP, in-progress).",
        ("Encounter",),
        _check_admission,
    ),
    EventType.DISCHARGE: EventRule(
        EventType.DISCHARGE,
        "退院",
        "Discharge",
        "The person was discharged (Encounter finished, with dischargeDisposition).",
        ("Encounter",),
        _check_discharge,
    ),
    EventType.ACUTE_CHANGE: EventRule(
        EventType.ACUTE_CHANGE,
        "急変",
        "Acute change",
        "An acute change in the person's condition (Observation, Condition or ClinicalImpression).",
        ("Observation", "Condition", "ClinicalImpression"),
        _check_acute_change,
    ),
    EventType.END_OF_LIFE: EventRule(
        EventType.END_OF_LIFE,
        "看取り",
        "End of life",
        "The person entered terminal care (the terminal-phase Condition) or died "
        "(Patient with deceased[x]).",
        ("Patient", "Condition"),
        _check_end_of_life,
    ),
}

_ROLE_DISPLAYS: dict[CareTeamRole, tuple[str, str]] = {
    CareTeamRole.PRIMARY_PHYSICIAN: ("主治医", "Primary physician"),
    CareTeamRole.BACKUP_PHYSICIAN: ("副主治医", "Backup physician"),
    CareTeamRole.VISITING_NURSE: ("訪問看護ステーション", "Visiting nurse station"),
    CareTeamRole.CARE_MANAGER: ("ケアマネジャー（介護支援専門員）", "Care manager"),
    CareTeamRole.PHARMACY: ("薬局", "Pharmacy"),
    CareTeamRole.CARE_SERVICE: ("介護サービス事業所", "Care service provider"),
    CareTeamRole.COMMUNITY_SUPPORT_CENTER: (
        "地域包括支援センター",
        "Community general support center",
    ),
    CareTeamRole.EMERGENCY_HOSPITAL: ("急変時受入病院", "Emergency (back-up) hospital"),
}


def _code_system(
    cs_id: str, url: str, name: str, title: str, concepts: list[dict[str, Any]]
) -> dict[str, Any]:
    # Displays are Japanese (language ja); the English name goes into a designation so
    # terminology servers and non-Japanese tools still have something readable.
    return {
        "resourceType": "CodeSystem",
        "id": cs_id,
        "url": url,
        "version": "1.0.0",
        "name": name,
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "Renkei Hub",
        "language": "ja",
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": concepts,
    }


def _concept(code: str, ja: str, en: str, definition: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {
        "code": code,
        "display": ja,
        "designation": [{"language": "en", "value": en}],
    }
    if definition:
        concept["definition"] = definition
    return concept


def code_system() -> dict[str, Any]:
    """The R4 CodeSystem of hub event codes (MessageHeader.eventCoding)."""
    concepts = [
        _concept(r.event_type.value, r.display_ja, r.display_en, r.definition)
        for r in EVENT_RULES.values()
    ]
    return _code_system("event", EVENT_SYSTEM, "RenkeiEvent", "連携ハブ イベント種別", concepts)


def care_team_role_code_system() -> dict[str, Any]:
    """The R4 CodeSystem of care-team roles that routing reads from CareTeam.participant."""
    concepts = [_concept(role.value, ja, en) for role, (ja, en) in _ROLE_DISPLAYS.items()]
    return _code_system(
        "care-team-role", CARE_TEAM_ROLE_SYSTEM, "RenkeiCareTeamRole", "連携ハブ ケアチーム役割",
        concepts,
    )  # fmt: skip
