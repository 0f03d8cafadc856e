"""Consent, break-glass and the routing table as pure rules: no database, no broker.

Each Consent shape the router reads (consumers/routing/rules.py), the break-glass override, the
routing file's two formats (consumers/routing/table.py) and the break-glass extension of a
message (schemas/message.py).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from consumers.routing import rules
from consumers.routing.rules import ConsentDecision, consent_decision, sharing_decision
from consumers.routing.table import (
    DEFAULT_CONTENT,
    DEFAULT_ROUTING,
    Route,
    RoutingFileError,
    content_for,
    load_routing,
)
from schemas.canonical import BREAK_GLASS_EXTENSION, EVENT_SYSTEM
from schemas.events import CareTeamRole, EventType
from schemas.message import break_glass_reason, parse_message
from schemas.outcome import InvalidMessage
from services.demo_region import consent, sample_message

TOKYO = ZoneInfo("Asia/Tokyo")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=TOKYO)
PHARMACY, CLINIC, NURSE = "chuo-pharmacy", "misawa-home-clinic", "misawa-visiting-nurse-1"
A, D, ACUTE = EventType.ADMISSION, EventType.DISCHARGE, EventType.ACUTE_CHANGE


def base(**provision: Any) -> dict[str, Any]:
    """The demo region's permit Consent, with the root provision changed as given."""
    resource = consent("p01", "permit")
    resource["provision"].update(provision)
    return resource


def actor(org: str) -> dict[str, Any]:
    return {"reference": {"reference": f"Organization/{org}"}}


def code(*events: EventType) -> list[dict[str, Any]]:
    return [{"coding": [{"system": EVENT_SYSTEM, "code": e.value}]} for e in events]


def decide(
    consents: list[dict],
    org: str = PHARMACY,
    event: EventType = A,
    at: datetime = NOW,
    default: str = "opt-in",
    recipient: str | None = None,
) -> ConsentDecision:
    return consent_decision(consents, org, at, TOKYO, default, event, recipient)


# --- status, scope, default ----------------------------------------------------------------


def test_permit_consent_shares_with_every_organization() -> None:
    assert decide([base()]) == ConsentDecision(True, "consent-permit")
    assert decide([base()], CLINIC, D).permitted


def test_no_consent_opt_in_and_opt_out() -> None:
    assert decide([]) == ConsentDecision(False, "no-consent")
    assert decide([], default="opt-out") == ConsentDecision(True, "opt-out-default")


@pytest.mark.parametrize(
    "status", ["draft", "proposed", "inactive", "rejected", "entered-in-error"]
)
def test_only_an_active_consent_counts(status: str) -> None:
    resource = base()
    resource["status"] = status
    assert decide([resource]) == ConsentDecision(False, "no-consent")
    assert decide([resource], default="opt-out") == ConsentDecision(True, "opt-out-default")


def test_only_patient_privacy_scope_counts() -> None:
    research = base()
    research["scope"]["coding"][0]["code"] = "research"
    assert decide([research]).reason == "no-consent"
    other_system = base()
    other_system["scope"]["coding"][0]["system"] = "http://example.org/scopes"
    assert decide([other_system]).reason == "no-consent"


def test_root_deny_shares_with_nobody_even_in_an_opt_out_region() -> None:
    refusal = base(type="deny")
    assert decide([refusal]) == ConsentDecision(False, "consent-deny")
    assert decide([refusal], default="opt-out") == ConsentDecision(False, "consent-deny")


# --- periods --------------------------------------------------------------------------------


def test_expired_and_not_yet_valid_consent_share_nothing() -> None:
    expired = base(period={"start": "2025-04-01", "end": "2026-11-30"})
    assert decide([expired]) == ConsentDecision(False, "consent-expired")
    # The patient's decision was bounded: an opt-out region does not widen it.
    assert decide([expired], default="opt-out") == ConsentDecision(False, "consent-expired")
    future = base(period={"start": "2027-01-01"})
    assert decide([future]) == ConsentDecision(False, "consent-not-yet-valid")
    # A bare end date covers that whole local day; a dateTime end is exact.
    last_day = base(period={"start": "2025-04-01", "end": "2026-12-02"})
    assert decide([last_day]).permitted
    until_noon = base(period={"end": "2026-12-02T11:59:59+09:00"})
    assert decide([until_noon]).reason == "consent-expired"


def test_a_renewed_consent_beside_the_expired_one_shares() -> None:
    expired = base(period={"start": "2025-04-01", "end": "2026-03-31"})
    renewed = base(period={"start": "2026-04-01"})
    assert decide([expired, renewed]) == ConsentDecision(True, "consent-permit")


# --- nested deny: by organization, by event type, both --------------------------------------


def test_deny_by_organization() -> None:
    deny = base(provision=[{"type": "deny", "actor": [actor(PHARMACY)]}])
    assert decide([deny]) == ConsentDecision(False, "consent-deny-organization")
    assert decide([deny], CLINIC) == ConsentDecision(True, "consent-permit")


def test_a_practitioner_role_member_is_decided_by_its_organization() -> None:
    deny = base(provision=[{"type": "deny", "actor": [actor("misawa-care-plan-1")]}])
    cm = "PractitionerRole/cm-sato-role"
    assert decide([deny], "misawa-care-plan-1", recipient=cm).reason == "consent-deny-organization"
    # A Consent may also name the person's role itself.
    by_role = base(provision=[{"type": "deny", "actor": [{"reference": {"reference": cm}}]}])
    assert not decide([by_role], "misawa-care-plan-1", recipient=cm).permitted
    other = "PractitionerRole/someone-else"
    assert decide([by_role], "misawa-care-plan-1", recipient=other).permitted


def test_deny_by_event_type() -> None:
    deny = base(provision=[{"type": "deny", "code": code(EventType.END_OF_LIFE)}])
    assert decide([deny], CLINIC, EventType.END_OF_LIFE) == ConsentDecision(
        False, "consent-deny-event-type"
    )
    assert decide([deny], CLINIC, A) == ConsentDecision(True, "consent-permit")


def test_deny_with_actor_and_code_denies_that_organization_for_that_event_type_only() -> None:
    deny = base(provision=[{"type": "deny", "actor": [actor(PHARMACY)], "code": code(A)}])
    assert decide([deny], PHARMACY, A) == ConsentDecision(
        False, "consent-deny-organization-event-type"
    )
    assert decide([deny], PHARMACY, D).permitted
    assert decide([deny], CLINIC, A).permitted


def test_codes_of_other_systems_name_no_hub_event() -> None:
    loinc = [{"coding": [{"system": "http://loinc.org", "code": "11506-3"}]}]
    deny = base(provision=[{"type": "deny", "actor": [actor(PHARMACY)], "code": loinc}])
    assert decide([deny]).permitted


def test_nested_deny_period_is_respected() -> None:
    past = {"start": "2026-01-01", "end": "2026-06-30"}
    deny = base(provision=[{"type": "deny", "actor": [actor(PHARMACY)], "period": past}])
    assert decide([deny]).permitted
    assert decide([deny], at=datetime(2026, 3, 1, tzinfo=TOKYO)).reason == (
        "consent-deny-organization"
    )


def test_nested_deny_naming_nobody_is_a_pause() -> None:
    december = {"start": "2026-12-01", "end": "2026-12-31"}
    pause = base(provision=[{"type": "deny", "period": december}])
    assert decide([pause], CLINIC) == ConsentDecision(False, "consent-deny")
    assert decide([pause], CLINIC, at=datetime(2027, 1, 5, tzinfo=TOKYO)).permitted


def test_exception_inside_a_deny() -> None:
    # Withhold from the pharmacy, except discharges (it must know the new prescriptions).
    deny = base(
        provision=[
            {"type": "deny", "actor": [actor(PHARMACY)],
             "provision": [{"type": "permit", "code": code(D)}]}
        ]
    )  # fmt: skip
    assert decide([deny], PHARMACY, A).reason == "consent-deny-organization"
    assert decide([deny], PHARMACY, D) == ConsentDecision(True, "consent-permit")


def test_any_active_consent_that_withholds_withholds() -> None:
    permit, deny = base(), base(provision=[{"type": "deny", "actor": [actor(PHARMACY)]}])
    assert decide([permit, deny]).reason == "consent-deny-organization"
    assert decide([deny, permit]).reason == "consent-deny-organization"


# --- permits that narrow sharing ------------------------------------------------------------


def test_permits_naming_actors_narrow_sharing_to_them() -> None:
    narrow = base(provision=[{"type": "permit", "actor": [actor(CLINIC), actor(NURSE)]}])
    assert decide([narrow], CLINIC) == ConsentDecision(True, "consent-permit")
    assert decide([narrow], NURSE).permitted
    assert decide([narrow], PHARMACY) == ConsentDecision(False, "not-in-permitted-actors")


def test_narrowing_for_some_event_types_only() -> None:
    # Admissions only to the clinic; every other event to the whole team.
    narrow = base(provision=[{"type": "permit", "actor": [actor(CLINIC)], "code": code(A)}])
    assert decide([narrow], PHARMACY, A).reason == "not-in-permitted-actors"
    assert decide([narrow], CLINIC, A).permitted
    assert decide([narrow], PHARMACY, D).permitted


def test_an_expired_narrowing_permit_narrows_to_nobody_rather_than_widening() -> None:
    narrow = base(
        provision=[
            {"type": "permit", "actor": [actor(CLINIC)], "period": {"end": "2026-11-30"}},
            {"type": "permit", "actor": [actor(NURSE)]},
        ]
    )
    assert decide([narrow], NURSE).permitted
    assert decide([narrow], CLINIC).reason == "not-in-permitted-actors"
    only_expired = base(
        provision=[{"type": "permit", "actor": [actor(CLINIC)], "period": {"end": "2026-11-30"}}]
    )
    assert decide([only_expired], PHARMACY).reason == "not-in-permitted-actors"


def test_deny_wins_over_a_permit_naming_the_same_organization() -> None:
    both = base(
        provision=[
            {"type": "permit", "actor": [actor(PHARMACY), actor(CLINIC)]},
            {"type": "deny", "actor": [actor(PHARMACY)]},
        ]
    )
    assert decide([both], PHARMACY).reason == "consent-deny-organization"
    assert decide([both], CLINIC).permitted


def test_root_deny_with_permits_shares_only_with_those_named() -> None:
    only = base(type="deny", provision=[{"type": "permit", "actor": [actor(CLINIC)]}])
    assert decide([only], CLINIC) == ConsentDecision(True, "consent-permit")
    assert decide([only], PHARMACY) == ConsentDecision(False, "consent-deny")


def test_nested_permit_with_its_own_deny() -> None:
    # Share with the clinic only, and not end-of-life events.
    narrow = base(
        provision=[
            {"type": "permit", "actor": [actor(CLINIC)],
             "provision": [{"type": "deny", "code": code(EventType.END_OF_LIFE)}]}
        ]
    )  # fmt: skip
    assert decide([narrow], CLINIC, A).permitted
    assert decide([narrow], CLINIC, EventType.END_OF_LIFE).reason == "consent-deny-event-type"


# --- break-glass -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(rules.BREAK_GLASS_ROLES))
def test_break_glass_overrides_consent_for_the_emergency_roles(role: CareTeamRole) -> None:
    for withheld in (decide([]), decide([base(type="deny")])):
        assert sharing_decision(withheld, ACUTE, True, role) == ConsentDecision(True, "break-glass")
        # Not marked: consent decides.
        assert sharing_decision(withheld, ACUTE, False, role) == withheld
    permitted = decide([base()])
    # Consent already allowed it: the reason stays the consent's own.
    assert sharing_decision(permitted, ACUTE, True, role) == permitted


@pytest.mark.parametrize(
    "role", sorted(set(CareTeamRole) - rules.BREAK_GLASS_ROLES)
)  # fmt: skip
def test_break_glass_does_not_reach_other_roles(role: CareTeamRole) -> None:
    withheld = decide([])
    assert sharing_decision(withheld, ACUTE, True, role) == withheld


def test_break_glass_is_only_for_acute_change() -> None:
    withheld = decide([])
    for event in (A, D, EventType.END_OF_LIFE):
        assert sharing_decision(withheld, event, True, CareTeamRole.PRIMARY_PHYSICIAN) == withheld
    assert rules.break_glass_applies(ACUTE, True, CareTeamRole.EMERGENCY_HOSPITAL)
    assert not rules.break_glass_applies(ACUTE, True, CareTeamRole.CARE_MANAGER)


# --- the routing table and its file ---------------------------------------------------------


def test_default_content_per_role() -> None:
    full = {r for r, level in DEFAULT_CONTENT.items() if level == "full"}
    assert full == {
        CareTeamRole.PRIMARY_PHYSICIAN, CareTeamRole.BACKUP_PHYSICIAN,
        CareTeamRole.VISITING_NURSE, CareTeamRole.EMERGENCY_HOSPITAL,
        CareTeamRole.PHARMACY, CareTeamRole.CARE_MANAGER,
    }  # fmt: skip
    assert set(DEFAULT_CONTENT) == set(CareTeamRole)
    assert DEFAULT_ROUTING[A][CareTeamRole.CARE_SERVICE] == Route("routine", "summary")
    assert DEFAULT_ROUTING[A][CareTeamRole.CARE_MANAGER] == Route("urgent", "full")
    # A role outside the event's row (the emergency hospital of a break-glass acute change)
    # gets its default.
    assert content_for(DEFAULT_ROUTING, ACUTE, CareTeamRole.EMERGENCY_HOSPITAL) == "full"


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_routing_file_old_string_form_and_new_object_form(tmp_path: Path) -> None:
    table = load_routing(
        write(
            tmp_path,
            {
                "admission": {
                    "care-manager": "stat",
                    "care-service": {"priority": "routine", "content": "full"},
                    "pharmacy": {"priority": "urgent", "content": "summary"},
                    "visiting-nurse": {"priority": "routine"},
                }
            },
        )
    )
    assert table[A] == {
        CareTeamRole.CARE_MANAGER: Route("stat", "full"),
        CareTeamRole.CARE_SERVICE: Route("routine", "full"),
        CareTeamRole.PHARMACY: Route("urgent", "summary"),
        CareTeamRole.VISITING_NURSE: Route("routine", "full"),
    }
    assert table[D] == DEFAULT_ROUTING[D]  # events not in the file keep their row


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"admission": {"pharmacy": "soon"}}, "unknown priority"),
        ({"admission": {"pharmacy": {"priority": "urgent", "content": "all"}}}, "unknown content"),
        ({"admission": {"pharmacy": {"content": "full"}}}, "unknown priority"),
        ({"admission": {"pharmacy": {"priority": "urgent", "colour": "red"}}}, "unknown key"),
        ({"admission": {"pharmacy": 3}}, "expected a priority"),
        ({"admission": {"butler": "urgent"}}, "butler"),
        ({"birthday": {}}, "birthday"),
        ([], "expected an object"),
    ],
)
def test_routing_file_errors_name_the_problem(tmp_path: Path, content: Any, says: str) -> None:
    with pytest.raises(RoutingFileError, match=says):
        load_routing(write(tmp_path, content))


# --- the break-glass extension of a message -------------------------------------------------


def marked(event: EventType, *extensions: dict[str, Any]) -> bytes:
    bundle = copy.deepcopy(sample_message(event))
    bundle["entry"][0]["resource"]["extension"] = list(extensions)
    return json.dumps(bundle).encode()


def glass(reason: Any = "意識レベル低下、家族と連絡つかず") -> dict[str, Any]:
    ext: dict[str, Any] = {"url": BREAK_GLASS_EXTENSION}
    if reason is not None:
        ext["valueString"] = reason
    return ext


def test_break_glass_is_parsed_with_its_reason() -> None:
    message = parse_message(marked(ACUTE, glass()))
    assert message.break_glass_reason == "意識レベル低下、家族と連絡つかず"
    assert break_glass_reason(message.bundle) == message.break_glass_reason
    plain = parse_message(marked(ACUTE))
    assert plain.break_glass_reason is None and break_glass_reason(plain.bundle) is None
    # Other extensions are left alone.
    other = parse_message(marked(ACUTE, {"url": "http://example.org/x", "valueString": "y"}))
    assert other.break_glass_reason is None


def assert_refused(raw: bytes, code: str, where: str, status: int = 422) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(raw)
    assert caught.value.status == status
    issues = [(i.code, i.expression) for i in caught.value.issues]
    assert (code, where) in issues, issues
    # The reason (free text, may name the person) is never echoed.
    assert all("意識" not in i.diagnostics for i in caught.value.issues)


@pytest.mark.parametrize("event", [A, D, EventType.END_OF_LIFE])
def test_break_glass_on_other_events_is_refused(event: EventType) -> None:
    assert_refused(marked(event, glass()), "business-rule", "Bundle.entry[0].resource.extension[0]")


@pytest.mark.parametrize("reason", [None, "   "])
def test_break_glass_without_a_reason_is_refused(reason: Any) -> None:
    where = "Bundle.entry[0].resource.extension[0].valueString"
    assert_refused(marked(ACUTE, glass(reason)), "required", where)
    # An empty string is not a FHIR string at all: the datatype stage answers first (400).
    assert_refused(marked(ACUTE, glass("")), "value", where, status=400)


def test_break_glass_twice_or_too_long_is_refused() -> None:
    assert_refused(
        marked(ACUTE, glass(), glass()), "invalid", "Bundle.entry[0].resource.extension[1]"
    )
    assert_refused(
        marked(ACUTE, glass("x" * 1001)), "too-long",
        "Bundle.entry[0].resource.extension[0].valueString",
    )  # fmt: skip


def test_consent_default_setting_is_opt_in_or_opt_out() -> None:
    from pydantic import ValidationError

    from renkei.settings import Settings

    assert Settings().consent_default == "opt-in"
    assert Settings(consent_default="opt-out").consent_default == "opt-out"
    with pytest.raises(ValidationError):
        Settings(consent_default="optout")


def test_break_glass_extension_is_published_as_a_structure_definition() -> None:
    from fhir.resources.R4B.structuredefinition import StructureDefinition

    from schemas.break_glass import structure_definition

    definition = structure_definition()
    StructureDefinition.model_validate(definition)
    assert definition["url"] == BREAK_GLASS_EXTENSION
    [value] = [e for e in definition["differential"]["element"] if e["path"].endswith("value[x]")]
    assert value["type"] == [{"code": "string"}] and value["min"] == 1
