"""Tests for schemas/: message parsing and validation, outcomes, events, topics, envelope."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.operationoutcome import OperationOutcome

from schemas import (
    ALL_TOPICS,
    AUDIT_TOPIC,
    CARE_TEAM_ROLE_SYSTEM,
    DLQ_TOPIC,
    EVENT_ID_SYSTEM,
    EVENT_RULES,
    EVENT_SYSTEM,
    EVENT_TOPICS,
    NOTIFICATION_TOPIC,
    SCHEMA_VERSION,
    EnvelopeError,
    EventEnvelope,
    EventType,
    InvalidMessage,
    Issue,
    accepted_outcome,
    care_team_role_code_system,
    code_system,
    event_topic,
    operation_outcome,
    parse_message,
)
from schemas.fhir_errors import fhirpath
from schemas.outcome import event_id_from_outcome
from schemas.topics import event_type_of_topic
from tests.fixtures_messages import (
    SAMPLE_NAMES,
    SAMPLE_PERSONAL_DATA,
    SAMPLES_DIR,
    encode,
    header,
    index_of,
    resource_at,
    sample,
)

H = "Bundle.entry[0].resource"

# --- the samples ------------------------------------------------------------------------------

EXPECTED = {
    "admission": (EventType.ADMISSION, "misawa-general-hospital", "mh-admission", "Encounter"),
    "discharge": (EventType.DISCHARGE, "misawa-general-hospital", "mh-discharge", "Encounter"),
    "acute-change": (
        EventType.ACUTE_CHANGE,
        "misawa-visiting-nurse-1",
        "mh-acute-change",
        "Observation",
    ),
    "end-of-life": (EventType.END_OF_LIFE, "misawa-home-clinic", "mh-end-of-life", "Patient"),
}


def test_samples_are_in_the_repo() -> None:
    # CI clones the repo elsewhere: the copy under schemas/samples must be what we read.
    assert SAMPLES_DIR.name == "samples" and SAMPLES_DIR.parent.name == "schemas"
    assert sorted(p.stem for p in SAMPLES_DIR.glob("*.json")) == sorted(SAMPLE_NAMES)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_parses(name: str) -> None:
    event_type, sender, message_id, focus_type = EXPECTED[name]
    raw = (SAMPLES_DIR / f"{name}.json").read_bytes()
    msg = parse_message(raw)
    assert msg.event_type is event_type
    assert msg.sender_org_id == sender
    assert msg.message_id == message_id
    assert [f["resourceType"] for f in msg.focus] == [focus_type]
    assert msg.patient["resourceType"] == "Patient"
    assert [(i.system, i.value) for i in msg.patient_identifiers] == [
        ("urn:oid:1.2.392.100495.20.3.51.11310000001", "00012345")
    ]
    assert msg.occurred_at == datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    assert msg.occurred_at.utcoffset() == timedelta(hours=9)
    assert msg.bundle == json.loads(raw)


def test_focus_resolves_by_type_and_id_as_well_as_full_url() -> None:
    bundle = sample("admission")
    resource_at(bundle, 2)["id"] = "enc-1"
    header(bundle)["focus"] = [{"reference": "Encounter/enc-1"}]
    msg = parse_message(encode(bundle))
    assert msg.focus[0]["id"] == "enc-1"


def test_acute_change_accepts_condition_and_clinical_impression_focus() -> None:
    bundle = sample("acute-change")
    patient_url = bundle["entry"][1]["fullUrl"]
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:cond",
            "resource": {
                "resourceType": "Condition",
                "code": {"text": "肺炎疑い"},
                "subject": {"reference": patient_url},
            },
        }
    )
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:ci",
            "resource": {
                "resourceType": "ClinicalImpression",
                "status": "completed",
                "subject": {"reference": "Patient/p"},
            },
        }
    )
    header(bundle)["focus"] += [{"reference": "urn:uuid:cond"}, {"reference": "urn:uuid:ci"}]
    msg = parse_message(encode(bundle))
    assert [f["resourceType"] for f in msg.focus] == [
        "Observation",
        "Condition",
        "ClinicalImpression",
    ]


def test_parse_accepts_byte_order_mark() -> None:
    raw = b"\xef\xbb\xbf" + (SAMPLES_DIR / "admission.json").read_bytes()
    assert parse_message(raw).event_type is EventType.ADMISSION


# --- bad input: raw bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "expression"),
    [
        pytest.param(b"", "required", None, id="empty"),
        pytest.param(b"  \n", "required", None, id="whitespace"),
        pytest.param("三沢".encode("shift_jis") + b"{}", "structure", None, id="not-utf8"),
        pytest.param(b'{"resourceType": "Bundle",', "structure", None, id="not-json"),
        pytest.param(b"[1, 2]", "structure", None, id="json-array"),
        pytest.param(b'"Bundle"', "structure", None, id="json-string"),
        pytest.param(b'{"a": 1, "a": 2}', "structure", None, id="duplicate-key"),
        pytest.param(b'{"a": NaN}', "structure", None, id="nan"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "structure", None, id="deep-nesting"),
        pytest.param(b'{"resourceType": "Patient"}', "structure", "resourceType", id="patient"),
    ],
)
def test_unparseable_body_is_400(raw: bytes, code: str, expression: str | None) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(raw)
    assert info.value.status == 400
    assert len(info.value.issues) == 1
    issue = info.value.issues[0]
    assert (issue.severity, issue.code, issue.expression) == ("error", code, expression)


def test_not_utf8_error_does_not_echo_bytes() -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(b'{"name": "' + "三沢".encode("shift_jis") + b'"}')
    assert "byte offset 10" in info.value.issues[0].diagnostics
    assert "\\x" not in json.dumps(info.value.outcome())


# --- bad input: Bundle mutations ----------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _set(path: list[Any], value: Any) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        target = bundle
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        target = bundle
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        for m in mutations:
            m(bundle)

    return mutate


def _swap_first_two(bundle: dict[str, Any]) -> None:
    bundle["entry"][0], bundle["entry"][1] = bundle["entry"][1], bundle["entry"][0]


def _drop_patient(bundle: dict[str, Any]) -> None:
    del bundle["entry"][index_of(bundle, "Patient")]


def _second_patient(bundle: dict[str, Any]) -> None:
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:other",
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:x", "value": "1"}],
            },
        }
    )


def _condition_focus_without_code(bundle: dict[str, Any]) -> None:
    bundle["entry"][2] = {
        "fullUrl": bundle["entry"][2]["fullUrl"],
        "resource": {"resourceType": "Condition", "subject": {"reference": "Patient/p"}},
    }


MH = ["entry", 0, "resource"]
PT = ["entry", 1, "resource"]
FOCUS = ["entry", 2, "resource"]

# (sample, mutation, status, issue code, expression)
BAD_BUNDLES: dict[str, tuple[str, Mutation, int, str, str]] = {
    # structural: 400, a single issue
    "bundle-type": ("admission", _set(["type"], "collection"), 400, "value", "Bundle.type"),
    "no-entry": ("admission", _delete(["entry"]), 400, "required", "Bundle.entry"),
    "empty-entry": ("admission", _set(["entry"], []), 400, "required", "Bundle.entry"),
    "header-not-first": (
        "admission", _swap_first_two, 400, "structure", f"{H}.resourceType",
    ),
    "entry-not-object": ("admission", _set(["entry", 1], "x"), 400, "structure", "Bundle.entry[1]"),
    "entry-without-resource": (
        "admission", _delete(["entry", 1, "resource"]), 400, "required",
        "Bundle.entry[1].resource",
    ),
    "unknown-resource-type": (
        "admission", _set([*PT, "resourceType"], "Person2"), 400, "structure",
        "Bundle.entry[1].resource.resourceType",
    ),
    "datatype-resource-type": (
        "admission", _set([*PT, "resourceType"], "HumanName"), 400, "structure",
        "Bundle.entry[1].resource.resourceType",
    ),
    "missing-resource-type": (
        "admission", _delete([*PT, "resourceType"]), 400, "structure",
        "Bundle.entry[1].resource.resourceType",
    ),
    "invalid-birth-date": (
        "admission", _set([*PT, "birthDate"], "1931-13-45"), 400, "value",
        "Bundle.entry[1].resource.birthDate",
    ),
    "invalid-timestamp": (
        "admission", _set(["timestamp"], "2026-11-20"), 400, "value", "Bundle.timestamp",
    ),
    "invalid-period": (
        "discharge", _set([*FOCUS, "period", "end"], "yesterday"), 400, "value",
        "Bundle.entry[2].resource.period.end",
    ),
    "unknown-element": (
        "admission", _set([*PT, "nickname"], "x"), 400, "structure",
        "Bundle.entry[1].resource.nickname",
    ),
    "no-event-at-all": (
        "admission", _delete([*MH, "eventCoding"]), 400, "required", f"{H}.event[x]",
    ),
    "fhir-required-missing": (
        "admission", _delete([*FOCUS, "status"]), 400, "required",
        "Bundle.entry[2].resource.status",
    ),
    # the hub's rules: 422
    "event-uri-instead-of-coding": (
        "admission",
        _both(_delete([*MH, "eventCoding"]), _set([*MH, "eventUri"], "urn:x:admission")),
        422, "required", f"{H}.eventCoding",
    ),
    "event-system": (
        "admission", _set([*MH, "eventCoding", "system"], "urn:other"), 422, "code-invalid",
        f"{H}.eventCoding.system",
    ),
    "event-code": (
        "admission", _set([*MH, "eventCoding", "code"], "transfer"), 422, "code-invalid",
        f"{H}.eventCoding.code",
    ),
    "no-message-id": ("admission", _delete([*MH, "id"]), 422, "required", f"{H}.id"),
    "no-sender": ("admission", _delete([*MH, "sender"]), 422, "required", f"{H}.sender"),
    "sender-not-organization": (
        "admission", _set([*MH, "sender", "reference"], "Practitioner/dr-1"), 422, "value",
        f"{H}.sender.reference",
    ),
    "sender-absolute-url": (
        "admission", _set([*MH, "sender", "reference"], "https://x.example/Organization/a"),
        422, "value", f"{H}.sender.reference",
    ),
    "no-focus": ("admission", _delete([*MH, "focus"]), 422, "required", f"{H}.focus"),
    "focus-without-reference": (
        "admission", _set([*MH, "focus"], [{"display": "encounter"}]), 422, "required",
        f"{H}.focus[0].reference",
    ),
    "focus-not-in-bundle": (
        "admission", _set([*MH, "focus", 0, "reference"], "urn:uuid:elsewhere"), 422,
        "not-found", f"{H}.focus[0].reference",
    ),
    "focus-type-id-not-in-bundle": (
        "admission", _set([*MH, "focus", 0, "reference"], "Encounter/nope"), 422,
        "not-found", f"{H}.focus[0].reference",
    ),
    "admission-focus-patient": (
        "admission", _set([*MH, "focus", 0, "reference"], "Patient/p"), 422, "invalid",
        "Bundle.entry[1].resource.resourceType",
    ),
    "admission-not-in-progress": (
        "admission", _set([*FOCUS, "status"], "finished"), 422, "value",
        "Bundle.entry[2].resource.status",
    ),
    "admission-not-inpatient": (
        "admission", _set([*FOCUS, "class", "code"], "AMB"), 422, "value",
        "Bundle.entry[2].resource.class",
    ),
    "discharge-not-finished": (
        "discharge", _set([*FOCUS, "status"], "in-progress"), 422, "value",
        "Bundle.entry[2].resource.status",
    ),
    "discharge-without-disposition": (
        "discharge", _delete([*FOCUS, "hospitalization"]), 422, "required",
        "Bundle.entry[2].resource.hospitalization.dischargeDisposition",
    ),
    "acute-change-focus-encounter": (
        "admission",
        _set([*MH, "eventCoding", "code"], "acute-change"),
        422, "invalid", "Bundle.entry[2].resource.resourceType",
    ),
    "acute-change-entered-in-error": (
        "acute-change", _set([*FOCUS, "status"], "entered-in-error"), 422, "value",
        "Bundle.entry[2].resource.status",
    ),
    "acute-change-condition-without-code": (
        "acute-change", _condition_focus_without_code, 422, "required",
        "Bundle.entry[2].resource.code",
    ),
    "end-of-life-not-deceased": (
        "end-of-life", _delete(["entry", 1, "resource", "deceasedDateTime"]), 422, "required",
        "Bundle.entry[1].resource.deceased[x]",
    ),
    "end-of-life-deceased-false": (
        "end-of-life",
        _both(
            _delete(["entry", 1, "resource", "deceasedDateTime"]),
            _set(["entry", 1, "resource", "deceasedBoolean"], False),
        ),
        422, "required", "Bundle.entry[1].resource.deceased[x]",
    ),
    "no-patient": ("discharge", _drop_patient, 422, "required", "Bundle.entry"),
    "two-patients": ("admission", _second_patient, 422, "invalid", "Bundle.entry[3].resource"),
    "patient-without-identifier": (
        "admission", _delete([*PT, "identifier"]), 422, "required",
        "Bundle.entry[1].resource.identifier",
    ),
    "patient-identifier-without-value": (
        "admission", _delete([*PT, "identifier", 0, "value"]), 422, "required",
        "Bundle.entry[1].resource.identifier",
    ),
    "focus-subject-other-patient": (
        "acute-change", _set([*FOCUS, "subject", "reference"], "Patient/someone-else"), 422,
        "invalid", "Bundle.entry[2].resource.subject.reference",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundle(case: str) -> None:
    name, mutate, status, code, expression = BAD_BUNDLES[case]
    bundle = sample(name)
    mutate(bundle)
    with pytest.raises(InvalidMessage) as info:
        parse_message(encode(bundle))
    exc = info.value
    assert exc.status == status
    found = [(i.code, i.expression) for i in exc.issues]
    assert (code, expression) in found
    assert all(i.severity == "error" for i in exc.issues)
    if status == 400 and case != "invalid-birth-date":
        # Structural problems stop the parse at the first one.
        assert len(exc.issues) == 1, found
    # The outcome the intake will return is a valid R4 OperationOutcome.
    OperationOutcome.model_validate(exc.outcome())


def test_rule_problems_are_collected_together() -> None:
    bundle = sample("discharge")
    header(bundle)["eventCoding"]["system"] = "urn:other"
    del header(bundle)["sender"]
    del resource_at(bundle, 1)["identifier"]
    with pytest.raises(InvalidMessage) as info:
        parse_message(encode(bundle))
    assert info.value.status == 422
    assert {i.expression for i in info.value.issues} == {
        f"{H}.eventCoding.system",
        f"{H}.sender",
        "Bundle.entry[1].resource.identifier",
    }


def test_datatype_errors_are_all_reported_before_rules() -> None:
    bundle = sample("admission")
    resource_at(bundle, 1)["birthDate"] = "1931-13-45"
    resource_at(bundle, 2)["period"]["start"] = "soon"
    header(bundle)["eventCoding"]["code"] = "unknown"  # a 422 problem: must not be reported
    with pytest.raises(InvalidMessage) as info:
        parse_message(encode(bundle))
    assert info.value.status == 400
    assert [(i.expression, i.diagnostics) for i in info.value.issues] == [
        ("Bundle.entry[1].resource.birthDate", "invalid date"),
        ("Bundle.entry[2].resource.period.start", "invalid dateTime"),
    ]


def test_choice_conflict_points_at_choice_element() -> None:
    bundle = sample("end-of-life")
    resource_at(bundle, 1)["deceasedBoolean"] = True
    with pytest.raises(InvalidMessage) as info:
        parse_message(encode(bundle))
    issue = info.value.issues[0]
    assert (info.value.status, issue.expression) == (400, "Bundle.entry[1].resource.deceased[x]")
    assert "deceasedBoolean" in issue.diagnostics and "deceasedDateTime" in issue.diagnostics


# --- no personal data in errors -----------------------------------------------------------------


def _outcome_text(bundle: dict[str, Any]) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse_message(encode(bundle))
    # Everything a caller or a log could see: outcome JSON and the exception text.
    return json.dumps(info.value.outcome(), ensure_ascii=False) + str(info.value)


def test_invalid_date_outcome_has_no_personal_data() -> None:
    bundle = sample("admission")
    resource_at(bundle, 1)["birthDate"] = "1931-13-45"
    text = _outcome_text(bundle)
    assert "Bundle.entry[1].resource.birthDate" in text
    assert "invalid date" in text
    for personal in (*SAMPLE_PERSONAL_DATA, "1931-13-45", "1931"):
        assert personal not in text, personal


@pytest.mark.parametrize(
    ("mutate", "leak"),
    [
        pytest.param(_set([*PT, "name", 0, "given"], "花子"), "花子", id="given-not-array"),
        pytest.param(_set([*PT, "gender"], 1936), "1936", id="gender-number"),
        pytest.param(_set([*PT, "deceasedBoolean"], "三沢"), "三沢", id="boolean-text"),
        pytest.param(_set([*PT, "三沢花子"], "x"), "三沢花子", id="unknown-key"),
        pytest.param(_set([*PT, "id"], "三沢 花子"), "三沢", id="invalid-id"),
        pytest.param(_delete([*PT, "resourceType"]), "00012345", id="no-resource-type"),
        pytest.param(_set([*PT, "name"], {"text": "三沢"}), "三沢", id="name-not-array"),
        pytest.param(_set([*PT, "address", 0], "青森県"), "青森県", id="address-string"),
    ],
)
def test_datatype_errors_do_not_echo_input(mutate: Mutation, leak: str) -> None:
    bundle = sample("acute-change")
    mutate(bundle)
    text = _outcome_text(bundle)
    assert "Bundle.entry[1]" in text
    assert leak not in text
    assert "00012345" not in text and "1936-05-12" not in text


def test_fhirpath_translation() -> None:
    assert fhirpath(("entry", 1, "resource", "name", 0, "given")) == (
        "Bundle.entry[1].resource.name[0].given"
    )
    assert fhirpath(()) == "Bundle"
    assert fhirpath(("entry", 0, "resource", "root")) == "Bundle.entry[0].resource"
    assert fhirpath(("entry", "三沢")) == "Bundle.entry.*"


# --- outcomes -----------------------------------------------------------------------------------


def test_operation_outcome_has_expression_and_location() -> None:
    outcome = operation_outcome(
        [
            Issue("error", "value", "invalid date", "Bundle.entry[1].resource.birthDate"),
            Issue("warning", "informational", "no location"),
        ]
    )
    OperationOutcome.model_validate(outcome)
    first, second = outcome["issue"]
    assert first == {
        "severity": "error",
        "code": "value",
        "diagnostics": "invalid date",
        "expression": ["Bundle.entry[1].resource.birthDate"],
        "location": ["Bundle.entry[1].resource.birthDate"],
    }
    assert "expression" not in second and "location" not in second


def test_operation_outcome_of_no_issues_is_still_valid() -> None:
    outcome = operation_outcome([])
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["severity"] == "information"


def test_accepted_outcome_carries_event_id() -> None:
    outcome = accepted_outcome("evt-123", "accepted")
    OperationOutcome.model_validate(outcome)
    issue = outcome["issue"][0]
    assert issue["severity"] == "information"
    assert "evt-123" in issue["diagnostics"]
    assert issue["details"]["coding"] == [{"system": EVENT_ID_SYSTEM, "code": "evt-123"}]
    assert event_id_from_outcome(outcome) == "evt-123"
    assert event_id_from_outcome(operation_outcome([])) is None


@pytest.mark.parametrize(("severity", "code"), [("bad", "value"), ("error", "wrong")])
def test_issue_rejects_unknown_codes(severity: str, code: str) -> None:
    with pytest.raises(ValueError):
        Issue(severity, code, "x")


def test_invalid_message_needs_issues() -> None:
    with pytest.raises(ValueError):
        InvalidMessage([])
    exc = InvalidMessage([Issue("error", "value", "bad", "Bundle.type")], status=422)
    assert exc.status == 422 and "Bundle.type" in str(exc)


# --- events and code systems ----------------------------------------------------------------------


def test_event_code_system_is_valid_r4() -> None:
    cs = code_system()
    CodeSystem.model_validate(cs)
    assert (cs["url"], cs["status"], cs["content"]) == (EVENT_SYSTEM, "active", "complete")
    concepts = {c["code"]: c for c in cs["concept"]}
    assert list(concepts) == [t.value for t in EventType]
    assert concepts["acute-change"]["display"] == "急変"
    assert concepts["end-of-life"]["display"] == "看取り"
    assert concepts["admission"]["designation"] == [{"language": "en", "value": "Admission"}]
    assert cs["count"] == 4


def test_care_team_role_code_system_is_valid_r4() -> None:
    cs = care_team_role_code_system()
    CodeSystem.model_validate(cs)
    assert cs["url"] == CARE_TEAM_ROLE_SYSTEM
    displays = {c["code"]: c["display"] for c in cs["concept"]}
    assert set(displays) == {
        "primary-physician", "backup-physician", "visiting-nurse", "care-manager", "pharmacy",
        "care-service", "community-support-center", "emergency-hospital",
    }  # fmt: skip
    assert displays["primary-physician"] == "主治医"
    assert displays["community-support-center"] == "地域包括支援センター"


def test_event_rules_cover_every_event() -> None:
    assert set(EVENT_RULES) == set(EventType)
    assert EVENT_RULES[EventType.ADMISSION].focus_types == ("Encounter",)
    assert EVENT_RULES[EventType.END_OF_LIFE].focus_types == ("Patient", "Condition")
    assert EVENT_RULES[EventType.DISCHARGE].display_ja == "退院"
    ok = {"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"}}
    assert EVENT_RULES[EventType.ADMISSION].check(ok, "X") == []
    issues = EVENT_RULES[EventType.ADMISSION].check({**ok, "status": "planned"}, "X")
    assert [i.expression for i in issues] == ["X.status"]


# --- topics -------------------------------------------------------------------------------------


def test_topics() -> None:
    assert event_topic(EventType.ACUTE_CHANGE) == "renkei.event.acute-change"
    assert EVENT_TOPICS == (
        "renkei.event.admission",
        "renkei.event.discharge",
        "renkei.event.acute-change",
        "renkei.event.end-of-life",
    )
    assert (NOTIFICATION_TOPIC, AUDIT_TOPIC, DLQ_TOPIC) == (
        "renkei.notification",
        "renkei.audit",
        "renkei.dlq",
    )
    assert len(ALL_TOPICS) == len(set(ALL_TOPICS)) == 7
    assert event_type_of_topic("renkei.event.end-of-life") is EventType.END_OF_LIFE
    with pytest.raises(ValueError):
        event_type_of_topic(AUDIT_TOPIC)


# --- envelope -----------------------------------------------------------------------------------


def _envelope(**overrides: Any) -> EventEnvelope:
    msg = parse_message(encode(sample("admission")))
    fields: dict[str, Any] = {
        "event_id": "0c7d6b7e-1111-4f00-8000-000000000001",
        "event_type": msg.event_type,
        "patient_key": "pk_7f3a9c",
        "schema_version": SCHEMA_VERSION,
        "sender_org_id": msg.sender_org_id,
        "occurred_at": msg.occurred_at,
        "accepted_at": datetime(2026, 11, 20, 1, 0, 5, 123456, tzinfo=UTC),
        "message_id": msg.message_id,
        "payload": msg.bundle,
    }
    return EventEnvelope(**{**fields, **overrides})


def test_envelope_round_trips() -> None:
    env = _envelope()
    back = EventEnvelope.from_bytes(env.to_bytes())
    assert back == env
    assert back.event_type is EventType.ADMISSION
    assert back.occurred_at is not None and back.occurred_at.utcoffset() == timedelta(hours=9)
    doc = json.loads(env.to_bytes())
    assert doc["accepted_at"] == "2026-11-20T01:00:05.123456+00:00"
    assert doc["payload"]["resourceType"] == "Bundle"  # payload kept apart from the metadata


def test_envelope_without_occurred_at_round_trips() -> None:
    env = _envelope(occurred_at=None)
    assert EventEnvelope.from_bytes(env.to_bytes()).occurred_at is None


def test_envelope_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        _envelope(accepted_at=datetime(2026, 11, 20, 1, 0))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"[]",
        b'{"event_id": "x"}',
        json.dumps({**json.loads(_envelope().to_bytes()), "schema_version": 99}).encode(),
        json.dumps({**json.loads(_envelope().to_bytes()), "event_type": "transfer"}).encode(),
    ],
)
def test_envelope_from_bytes_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        EventEnvelope.from_bytes(raw)


def test_envelope_headers_carry_no_patient_data() -> None:
    env = _envelope()
    headers = env.headers("k0123")
    assert headers == [
        ("renkei-event-id", b"0c7d6b7e-1111-4f00-8000-000000000001"),
        ("renkei-event-type", b"admission"),
        ("renkei-schema-version", b"2"),
        ("renkei-key-id", b"k0123"),
    ]
    flat = b"".join(k.encode() + v for k, v in headers)
    for secret in (env.patient_key, *SAMPLE_PERSONAL_DATA, "Patient"):
        assert secret.encode() not in flat


def test_envelope_timezone_survives_non_utc_accepted_at() -> None:
    jst = timezone(timedelta(hours=9))
    env = _envelope(accepted_at=datetime(2026, 11, 20, 10, 0, tzinfo=jst))
    assert EventEnvelope.from_bytes(env.to_bytes()).accepted_at.utcoffset() == timedelta(hours=9)
