"""Routing rules as pure functions: care-team membership, consent, and what is due by when.

No I/O here, so every rule is tested without a database or a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from schemas.events import CARE_TEAM_ROLE_SYSTEM, CareTeamRole, EventType

PRIORITY_RANK = {"routine": 0, "urgent": 1, "stat": 2}


@dataclass(frozen=True)
class Member:
    role: CareTeamRole
    reference: str  # "Organization/x" or "PractitionerRole/y"


def _parse_instant(value: str | None, zone: ZoneInfo, end: bool) -> datetime | None:
    """FHIR date or dateTime -> aware datetime (a bare date covers the whole local day)."""
    if not value:
        return None
    if len(value) <= 10:
        parts = [int(p) for p in value.split("-")] + [1, 1]
        day = datetime(parts[0], parts[1], parts[2], tzinfo=zone)
        return day + timedelta(days=1) if end else day
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def within(period: dict[str, Any] | None, at: datetime, zone: ZoneInfo) -> bool:
    if not period:
        return True
    start = _parse_instant(period.get("start"), zone, end=False)
    end = _parse_instant(period.get("end"), zone, end=True)
    return (start is None or start <= at) and (end is None or at < end)


def care_team_members(
    care_teams: list[dict[str, Any]], at: datetime, zone: ZoneInfo
) -> list[Member]:
    """Members of the patient's active care teams at ``at``, with their routing role."""
    members: list[Member] = []
    for team in care_teams:
        if team.get("status") != "active" or not within(team.get("period"), at, zone):
            continue
        for participant in team.get("participant", []):
            if not within(participant.get("period"), at, zone):
                continue
            reference = (participant.get("member") or {}).get("reference", "")
            role = _role(participant)
            if role and reference.startswith(("Organization/", "PractitionerRole/")):
                members.append(Member(role, reference))
    return members


def _role(participant: dict[str, Any]) -> CareTeamRole | None:
    for concept in participant.get("role", [])[:1]:
        for coding in concept.get("coding", [])[:1]:
            if coding.get("system") == CARE_TEAM_ROLE_SYSTEM:
                try:
                    return CareTeamRole(coding.get("code"))
                except ValueError:
                    return None
    return None


@dataclass(frozen=True)
class ConsentDecision:
    permitted: bool
    reason: str  # "consent-permit", "opt-out-default", "no-consent", "consent-deny"


def consent_decision(
    consents: list[dict[str, Any]], org_id: str, at: datetime, zone: ZoneInfo, default: str
) -> ConsentDecision:
    """May this patient's event be shared with ``org_id``? Opt-in unless the region says opt-out."""
    active = [c for c in consents if _is_active_privacy_consent(c, at, zone)]
    if not active:
        if default == "opt-out":
            return ConsentDecision(True, "opt-out-default")
        return ConsentDecision(False, "no-consent")
    permitted = False
    for consent in active:
        provision = consent.get("provision") or {}
        if provision.get("type", "permit") == "deny":
            return ConsentDecision(False, "consent-deny")
        for nested in provision.get("provision", []):
            if nested.get("type") != "deny" or not within(nested.get("period"), at, zone):
                continue
            actors = {(a.get("reference") or {}).get("reference") for a in nested.get("actor", [])}
            if f"Organization/{org_id}" in actors:
                return ConsentDecision(False, "consent-deny")
        permitted = True
    return ConsentDecision(permitted, "consent-permit")


def _is_active_privacy_consent(consent: dict[str, Any], at: datetime, zone: ZoneInfo) -> bool:
    if consent.get("status") != "active":
        return False
    codings = (consent.get("scope") or {}).get("coding", [])
    if not any(c.get("code") == "patient-privacy" for c in codings):
        return False
    return within((consent.get("provision") or {}).get("period"), at, zone)


# -- what is due, and by when -----------------------------------------------------------------

# Business hours end at 17:00 local time: a care manager told of an admission after that has
# until the end of the next day for 入院時情報連携加算(I).
AFTER_HOURS = time(17, 0)


@dataclass(frozen=True)
class Due:
    at: datetime | None
    text_ja: str
    text_en: str


def _end_of_day(moment: datetime, zone: ZoneInfo, days: int = 0) -> datetime:
    local = moment.astimezone(zone)
    return datetime.combine(local.date() + timedelta(days=days + 1), time(0), tzinfo=zone)


def due_for(
    event: EventType, role: CareTeamRole, priority: str, occurred: datetime, zone: ZoneInfo
) -> Due:
    """The clock the 2024 fee revision sets for this role and event (DESIGN.md, Routing)."""
    local = occurred.astimezone(zone)
    if event == EventType.ADMISSION and role == CareTeamRole.CARE_MANAGER:
        days = 1 if local.time() >= AFTER_HOURS else 0
        return Due(
            _end_of_day(occurred, zone, days),
            "入院時情報提供: 病院へ本日中（時間外は翌日）に提供すると入院時情報連携加算(I)、"
            "2日以内で(II)",
            "Send admission information to the hospital today (after hours: tomorrow) for "
            "the admission liaison add-on (I); within 2 days for (II)",
        )
    if event == EventType.DISCHARGE and role == CareTeamRole.VISITING_NURSE:
        return Due(
            _end_of_day(occurred, zone),
            "退院当日の初回訪問で初回加算(I)",
            "First visit on the discharge day (initial visit add-on I)",
        )
    if event == EventType.DISCHARGE and role == CareTeamRole.CARE_MANAGER:
        return Due(
            _end_of_day(occurred, zone),
            "退院当日中にケアプランとサービス再開の調整",
            "Arrange the care plan and resume services on the discharge day",
        )
    if priority == "stat":
        return Due(
            occurred + timedelta(minutes=30), "至急確認（30分以内）", "Respond within 30 minutes"
        )
    if event == EventType.END_OF_LIFE:
        return Due(
            _end_of_day(occurred, zone),
            "看取り期: ターミナルケア加算は死亡前14日以内の訪問を数える",
            "End of life: terminal-care fees count visits in the 14 days before death",
        )
    if priority == "urgent":
        return Due(_end_of_day(occurred, zone), "本日中に確認", "Review today")
    return Due(None, "確認してください", "For your information")
