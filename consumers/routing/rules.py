"""Routing rules as pure functions: care-team membership, consent, and what is due by when.

No I/O here, so every rule is tested without a database or a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from schemas.events import CARE_TEAM_ROLE_SYSTEM, EVENT_SYSTEM, CareTeamRole, EventType

PRIORITY_RANK = {"routine": 0, "urgent": 1, "stat": 2}


@dataclass(frozen=True)
class Member:
    role: CareTeamRole
    reference: str  # "Organization/x" or "PractitionerRole/y"


@lru_cache(maxsize=4096)  # the same periods are read for every event of a care team
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


# -- consent ------------------------------------------------------------------------------------
#
# R4 Consent, scope patient-privacy, status active. The root provision is the base rule (permit
# unless it says deny) bounded by its period; nested provisions are exceptions to their parent,
# each bounded by its own period:
#   - a nested deny applies to the organizations it names (actor.reference) and the event types
#     it names (code, from the hub's event CodeSystem); with both, that organization for those
#     event types only; with neither, everyone (e.g. "nothing during this period");
#   - nested permits that name actors narrow sharing to those organizations (for the event
#     types they name, or for all if they name none);
#   - a deny wins over a permit at the same level; nested levels are read the same way.
# Several active Consents: the most restrictive wins (any one withholding withholds).

CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"

# Why an event was or was not shared with a recipient: stored with the notification or the
# suppressed delivery, so the audit can say which rule decided.
NO_CONSENT = "no-consent"
CONSENT_NOT_YET_VALID = "consent-not-yet-valid"
CONSENT_EXPIRED = "consent-expired"
CONSENT_DENY = "consent-deny"  # the whole Consent (or a nested deny naming nobody) refuses
CONSENT_DENY_ORGANIZATION = "consent-deny-organization"
CONSENT_DENY_EVENT_TYPE = "consent-deny-event-type"
CONSENT_DENY_ORGANIZATION_EVENT_TYPE = "consent-deny-organization-event-type"
NOT_IN_PERMITTED_ACTORS = "not-in-permitted-actors"
OPT_OUT_DEFAULT = "opt-out-default"
CONSENT_PERMIT = "consent-permit"
BREAK_GLASS = "break-glass"


@dataclass(frozen=True)
class ConsentDecision:
    permitted: bool
    reason: str
    # The Consent that decided (its FHIR id), for the audit record; None when none did (no
    # consent on file, the region's default, break-glass). Not part of the decision's value.
    consent_id: str | None = field(default=None, compare=False)


def consent_decision(
    consents: list[dict[str, Any]],
    org_id: str,
    at: datetime,
    zone: ZoneInfo,
    default: str,
    event_type: EventType,
    recipient: str | None = None,
) -> ConsentDecision:
    """May this patient's event (of ``event_type``) be shared with ``org_id`` at ``at``?

    ``recipient`` is the care-team member ("PractitionerRole/x" or "Organization/y"): a person is
    decided by the organization they work for, and a Consent may also name the person's role.
    Opt-in unless the region says opt-out; a Consent on file that is out of its period shares
    nothing in either mode (the patient's decision was bounded; it must be renewed).
    """
    active = [c for c in consents if _is_active_privacy_consent(c)]
    if not active:
        if default == "opt-out":
            return ConsentDecision(True, OPT_OUT_DEFAULT)
        return ConsentDecision(False, NO_CONSENT)
    in_effect = [c for c in active if within(_provision(c).get("period"), at, zone)]
    if not in_effect:
        only = active[0].get("id") if len(active) == 1 else None
        return ConsentDecision(False, _out_of_period_reason(active, at, zone), only)
    actors = {f"Organization/{org_id}"} | ({recipient} if recipient else set())
    code = event_type.value
    decision = ConsentDecision(True, CONSENT_PERMIT)
    for consent in in_effect:
        root = _provision(consent)
        decision = replace(_evaluate(root, actors, code, at, zone), consent_id=consent.get("id"))
        if not decision.permitted:
            return decision
    return decision


def _provision(consent: dict[str, Any]) -> dict[str, Any]:
    provision = consent.get("provision")
    return provision if isinstance(provision, dict) else {}


def _is_active_privacy_consent(consent: dict[str, Any]) -> bool:
    if consent.get("status") != "active":
        return False
    codings = (consent.get("scope") or {}).get("coding", [])
    return any(
        c.get("code") == "patient-privacy"
        and c.get("system", CONSENT_SCOPE_SYSTEM) == CONSENT_SCOPE_SYSTEM
        for c in codings
    )


def _out_of_period_reason(active: list[dict[str, Any]], at: datetime, zone: ZoneInfo) -> str:
    # Every active Consent is out of its period: say "expired" if one has ended, since that is
    # what the office must act on (renew it); otherwise none has started yet.
    for consent in active:
        end = _parse_instant((_provision(consent).get("period") or {}).get("end"), zone, end=True)
        if end is not None and end <= at:
            return CONSENT_EXPIRED
    return CONSENT_NOT_YET_VALID


def _evaluate(
    provision: dict[str, Any], actors: set[str], code: str, at: datetime, zone: ZoneInfo
) -> ConsentDecision:
    """The decision of a provision that applies; its nested provisions are its exceptions."""
    nested = [p for p in provision.get("provision", []) if isinstance(p, dict)]
    for child in nested:
        if child.get("type") == "deny" and _applies(child, actors, code, at, zone):
            return _evaluate(child, actors, code, at, zone)
    permits = [p for p in nested if p.get("type") == "permit" and _names_code(p, code)]
    # Permits naming actors narrow sharing to them. The set is taken over every such permit,
    # in its period or not, so one that has expired narrows to nobody rather than widening
    # sharing back to the whole team.
    named = [p for p in permits if _actor_references(p)]
    if named:
        for child in named:
            if _applies(child, actors, code, at, zone):
                return _evaluate(child, actors, code, at, zone)
        if provision.get("type") == "deny":
            return ConsentDecision(False, _deny_reason(provision))  # an exception not made
        return ConsentDecision(False, NOT_IN_PERMITTED_ACTORS)
    for child in permits:
        if within(child.get("period"), at, zone):
            return _evaluate(child, actors, code, at, zone)
    if provision.get("type", "permit") == "deny":
        return ConsentDecision(False, _deny_reason(provision))
    return ConsentDecision(True, CONSENT_PERMIT)


def _applies(
    provision: dict[str, Any], actors: set[str], code: str, at: datetime, zone: ZoneInfo
) -> bool:
    if not within(provision.get("period"), at, zone):
        return False
    named = _actor_references(provision)
    if named and not (named & actors):
        return False
    return _names_code(provision, code)


def _actor_references(provision: dict[str, Any]) -> set[str]:
    return {
        ref
        for actor in provision.get("actor", [])
        if isinstance(ref := (actor.get("reference") or {}).get("reference"), str)
    }


def _event_codes(provision: dict[str, Any]) -> set[str]:
    return {
        coding.get("code")
        for concept in provision.get("code", [])
        for coding in concept.get("coding", [])
        if coding.get("system") == EVENT_SYSTEM
    }


def _names_code(provision: dict[str, Any], code: str) -> bool:
    """No code: every event type. Codes of other systems name no hub event, so a provision
    that carries only those does not apply to hub events."""
    if not provision.get("code"):
        return True
    return code in _event_codes(provision)


def _deny_reason(provision: dict[str, Any]) -> str:
    by_actor, by_code = bool(_actor_references(provision)), bool(provision.get("code"))
    if by_actor and by_code:
        return CONSENT_DENY_ORGANIZATION_EVENT_TYPE
    if by_actor:
        return CONSENT_DENY_ORGANIZATION
    if by_code:
        return CONSENT_DENY_EVENT_TYPE
    return CONSENT_DENY


# -- break-glass -------------------------------------------------------------------------------
#
# A sender may mark an acute change as an emergency (MessageHeader extension, schemas/message.py).
# The physicians, the visiting nurse and the emergency hospital then receive it whatever the
# Consent says, and the notification is marked break-glass for the region office to review.
# Why that is lawful: 個人情報保護法 27条1項2号 allows giving personal data to a third party
# without the person's consent "when it is necessary to protect a person's life, body or property
# and it is difficult to obtain the person's consent" — an acute change in someone cared for at
# home, sent by the team member who found it, is that case, and a deny in the Consent does not
# change it (the exception is to consent itself). It reaches only those who must act at once
# (who would treat or admit the person); everyone else still follows the Consent, and every use
# is listed at GET /admin/break-glass so the office can check it was an emergency.
BREAK_GLASS_ROLES = frozenset(
    {
        CareTeamRole.PRIMARY_PHYSICIAN,
        CareTeamRole.BACKUP_PHYSICIAN,
        CareTeamRole.VISITING_NURSE,
        CareTeamRole.EMERGENCY_HOSPITAL,
    }
)
BREAK_GLASS_PRIORITY = "stat"


def break_glass_applies(event_type: EventType, break_glass: bool, role: CareTeamRole) -> bool:
    return break_glass and event_type == EventType.ACUTE_CHANGE and role in BREAK_GLASS_ROLES


def sharing_decision(
    consent: ConsentDecision, event_type: EventType, break_glass: bool, role: CareTeamRole
) -> ConsentDecision:
    """The consent decision, overridden for the break-glass roles of an emergency."""
    if consent.permitted or not break_glass_applies(event_type, break_glass, role):
        return consent
    return ConsentDecision(True, BREAK_GLASS)


def escalation_decision(
    consents: list[dict[str, Any]],
    org_id: str,
    reference: str,
    role: CareTeamRole | None,
    at: datetime,
    zone: ZoneInfo,
    default: str,
    break_glass: bool,
) -> ConsentDecision:
    """May an escalation step of an acute change reach this recipient now?

    The same rules as routing, read again at the step's time (a Consent withdrawn since the
    event stops the escalation too): the Consent, overridden by break-glass for the roles it
    covers (the backup physician and the emergency hospital are; ``role`` None, the region
    office, is not: it is told only when the patient's Consent permits it).
    """
    event_type = EventType.ACUTE_CHANGE
    consent = consent_decision(consents, org_id, at, zone, default, event_type, reference)
    if role is None:
        return consent
    return sharing_decision(consent, event_type, break_glass, role)


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
