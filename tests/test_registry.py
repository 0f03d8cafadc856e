"""Registry: service rules and queries, and the FHIR REST surface over a real database."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from schemas.canonical import CARE_TEAM_ROLE_SYSTEM
from schemas.outcome import InvalidMessage
from services.registry import service

INSTITUTION = "urn:oid:1.2.392.100495.20.3.51.1"  # JP Core style: + 10-digit institution code
CLINIC_PATIENTS = f"{INSTITUTION}1311234567"
HOSPITAL_PATIENTS = f"{INSTITUTION}1319876543"
FHIR_JSON = "application/fhir+json"

# Personal data in the bodies below; no error answer may contain any of it.
NAME = "山田"
GIVEN = "花子"
MRN = "00012345"


# --------------------------------------------------------------------------------------------
# Sample resources


def organization(oid: str, code: str = "1311234567") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": oid,
        "identifier": [
            {
                "system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no",
                "value": code,
            }
        ],  # noqa: E501
        "name": f"組織 {oid}",
    }


def practitioner(pid: str) -> dict[str, Any]:
    return {"resourceType": "Practitioner", "id": pid, "name": [{"family": "佐藤"}]}


def practitioner_role(rid: str, org: str, practitioner_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": rid,
        "organization": {"reference": f"Organization/{org}"},
    }
    if practitioner_id:
        body["practitioner"] = {"reference": f"Practitioner/{practitioner_id}"}
    return body


def patient(pid: str, *identifiers: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": s, "value": v} for s, v in identifiers],
        "name": [{"family": NAME, "given": [GIVEN]}],
        "birthDate": "1940-04-01",
        **extra,
    }


def care_team(tid: str, patient_id: str, *members: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "id": tid,
        "status": "active",
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [
            {
                "role": [{"coding": [{"system": CARE_TEAM_ROLE_SYSTEM, "code": role}]}],
                "member": {"reference": member},
            }
            for role, member in members
        ],
    }


def consent(cid: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }  # noqa: E501
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": {"type": "permit"},
    }


SAMPLES = {
    "Organization": lambda rid: organization(rid),
    "Practitioner": lambda rid: practitioner(rid),
    "PractitionerRole": lambda rid: practitioner_role(rid, "clinic", "dr"),
    "Patient": lambda rid: patient(rid, (CLINIC_PATIENTS, MRN)),
    "CareTeam": lambda rid: care_team(rid, "p1", ("primary-physician", "Organization/clinic")),
    "Consent": lambda rid: consent(rid, "p1"),
}


async def write_all(sessions, *bodies: dict[str, Any]) -> None:
    async with sessions() as session:
        for body in bodies:
            await service.write(session, body["resourceType"], body, body["id"])
        await session.commit()


def assert_no_personal_data(text: str, *values: str) -> None:
    for value in (NAME, GIVEN, MRN, *values):
        assert value not in text


# --------------------------------------------------------------------------------------------
# Service: create, read, update-as-create, versions


@pytest.mark.parametrize("resource_type", sorted(SAMPLES))
async def test_write_read_update_bumps_version(db_sessions, resource_type: str) -> None:
    body = SAMPLES[resource_type]("r1")
    async with db_sessions() as session:
        row, created = await service.write(session, resource_type, body, "r1")
        await session.commit()
    assert created and row.version_id == 1
    assert row.body["meta"]["versionId"] == "1"
    assert row.body["meta"]["lastUpdated"].endswith("Z")

    async with db_sessions() as session:
        row, created = await service.write(session, resource_type, body, "r1")
        await session.commit()
    assert not created and row.version_id == 2
    assert row.body["meta"]["versionId"] == "2"

    async with db_sessions() as session:
        stored = await service.read(session, resource_type, "r1")
    assert stored is not None and stored.version_id == 2
    assert stored.body["id"] == "r1" and stored.body["resourceType"] == resource_type
    assert stored.last_updated.tzinfo is not None


async def test_post_assigns_uuid_and_keeps_other_meta(db_sessions) -> None:
    body = organization("ignored")
    del body["id"]
    body["meta"] = {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Organization"]}
    async with db_sessions() as session:
        row, created = await service.write(session, "Organization", body)
        await session.commit()
    assert created and len(row.id) == 36
    assert row.body["meta"]["profile"] and row.body["meta"]["versionId"] == "1"
    assert "meta" not in body or "versionId" not in body["meta"]  # the caller's dict untouched


async def test_post_with_existing_id_is_a_conflict(db_sessions) -> None:
    await write_all(db_sessions, organization("clinic"))
    async with db_sessions() as session:
        with pytest.raises(InvalidMessage) as raised:
            await service.write(session, "Organization", organization("clinic"))
    assert raised.value.status == 409


async def test_put_body_id_must_match_url(db_sessions) -> None:
    async with db_sessions() as session:
        with pytest.raises(InvalidMessage) as raised:
            await service.write(session, "Organization", organization("a"), "b")
    assert raised.value.status == 400
    assert raised.value.issues[0].expression == "Organization.id"


async def test_concurrent_writes_never_lose_a_version(db_sessions) -> None:
    """Racing PUTs of one id: each either lands as its own version or is refused with 409."""

    async def put(n: int) -> int | None:
        body = {**organization("o1"), "name": f"version from writer {n}"}
        async with db_sessions() as session:
            try:
                row, _created = await service.write(session, "Organization", body, "o1")
                await session.commit()
                return row.version_id
            except InvalidMessage as error:
                assert error.status == 409
                return None

    versions = [v for v in await asyncio.gather(*(put(n) for n in range(6))) if v is not None]
    assert versions and sorted(versions) == list(range(1, len(versions) + 1))
    async with db_sessions() as session:
        row = await service.read(session, "Organization", "o1")
    assert row is not None and row.version_id == len(versions)
    assert row.body["meta"]["versionId"] == str(len(versions))


async def test_read_missing_and_unknown(db_sessions) -> None:
    async with db_sessions() as session:
        assert await service.read(session, "Organization", "nope") is None
        assert await service.read(session, "Observation", "x") is None
        assert await service.read(session, "Organization", "bad id!") is None


# --------------------------------------------------------------------------------------------
# Service: search and index


async def test_search_by_identifier(db_sessions) -> None:
    await write_all(
        db_sessions,
        patient("p1", (CLINIC_PATIENTS, MRN)),
        patient("p2", (HOSPITAL_PATIENTS, MRN), (CLINIC_PATIENTS, "999")),
    )
    async with db_sessions() as session:

        async def ids(params: dict[str, str]) -> list[str]:
            return [r.id for r in await service.search(session, "Patient", params)]

        assert await ids({"identifier": f"{CLINIC_PATIENTS}|{MRN}"}) == ["p1"]
        assert await ids({"identifier": MRN}) == ["p1", "p2"]  # any system, ordered by id
        assert await ids({"identifier": f"{CLINIC_PATIENTS}|"}) == ["p1", "p2"]
        assert await ids({"identifier": f"|{MRN}"}) == []  # no system: none stored
        assert await ids({"identifier": "nobody"}) == []
        assert await ids({"_id": "p2"}) == ["p2"]
        assert await ids({}) == ["p1", "p2"]
        assert await service.search_total(session, "Patient", {"identifier": MRN}) == 2


async def test_update_rewrites_index(db_sessions) -> None:
    await write_all(db_sessions, patient("p1", (CLINIC_PATIENTS, MRN)))
    await write_all(db_sessions, patient("p1", (CLINIC_PATIENTS, "777")))
    async with db_sessions() as session:
        assert await service.search(session, "Patient", {"identifier": MRN}) == []
        assert [r.id for r in await service.search(session, "Patient", {"identifier": "777"})] == [
            "p1"
        ]


async def test_search_by_patient_and_subject(db_sessions) -> None:
    await write_all(
        db_sessions,
        care_team("t1", "p1", ("primary-physician", "Organization/clinic")),
        care_team("t2", "p2", ("care-manager", "PractitionerRole/cm")),
        consent("c1", "p1"),
    )
    async with db_sessions() as session:

        async def ids(resource_type: str, params: dict[str, str]) -> list[str]:
            return [r.id for r in await service.search(session, resource_type, params)]

        assert await ids("CareTeam", {"patient": "Patient/p1"}) == ["t1"]
        assert await ids("CareTeam", {"subject": "p2"}) == ["t2"]
        assert await ids("CareTeam", {"participant": "PractitionerRole/cm"}) == ["t2"]
        assert await ids("CareTeam", {"participant": "clinic"}) == ["t1"]
        assert await ids("Consent", {"patient": "p1"}) == ["c1"]
        assert await ids("Consent", {"patient": "https://elsewhere/fhir/Patient/p1"}) == ["c1"]
        assert await ids("Consent", {"patient": "p2"}) == []


async def test_search_by_organization_and_practitioner(db_sessions) -> None:
    await write_all(
        db_sessions,
        practitioner_role("r1", "clinic", "dr1"),
        practitioner_role("r2", "clinic", "dr2"),
        practitioner_role("r3", "station", "dr1"),
        patient(
            "p1", (CLINIC_PATIENTS, MRN), managingOrganization={"reference": "Organization/clinic"}
        ),
    )
    async with db_sessions() as session:

        async def ids(resource_type: str, params: dict[str, str]) -> list[str]:
            return [r.id for r in await service.search(session, resource_type, params)]

        assert await ids("PractitionerRole", {"organization": "Organization/clinic"}) == [
            "r1",
            "r2",
        ]
        assert await ids("PractitionerRole", {"practitioner": "dr1"}) == ["r1", "r3"]
        assert await ids("PractitionerRole", {"organization": "clinic", "practitioner": "dr1"}) == [
            "r1"
        ]
        assert await ids("Patient", {"organization": "clinic"}) == ["p1"]


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        ("Patient", {"name": NAME}),
        ("Organization", {"patient": "p1"}),
        ("Patient", {"identifier:exact": "x"}),
    ],
)
async def test_search_unknown_parameter_is_refused(db_sessions, resource_type, params) -> None:
    async with db_sessions() as session:
        with pytest.raises(InvalidMessage) as raised:
            await service.search(session, resource_type, params)
    issue = raised.value.issues[0]
    assert raised.value.status == 400 and issue.code == "not-supported"
    assert issue.expression == next(iter(params))
    assert_no_personal_data(str(raised.value))


async def test_search_tolerates_paging_params(db_sessions) -> None:
    async with db_sessions() as session:
        assert await service.search(session, "Patient", {"_count": "5", "_offset": "0"}) == []


# --------------------------------------------------------------------------------------------
# Service: patient matching, keys, routing look-ups


async def test_match_patient_on_any_identifier(db_sessions) -> None:
    await write_all(
        db_sessions,
        patient("p1", (CLINIC_PATIENTS, "111"), (HOSPITAL_PATIENTS, "222")),
        patient("p2", (CLINIC_PATIENTS, "333")),
    )
    async with db_sessions() as session:
        assert await service.match_patient(session, [(HOSPITAL_PATIENTS, "222")]) == "p1"
        assert (
            await service.match_patient(session, [("urn:other", "9"), (CLINIC_PATIENTS, "111")])
            == "p1"
        )  # noqa: E501
        both_of_one = [(CLINIC_PATIENTS, "111"), (HOSPITAL_PATIENTS, "222")]
        assert await service.match_patient(session, both_of_one) == "p1"
        assert await service.match_patient(session, [(CLINIC_PATIENTS, "nobody")]) is None
        assert await service.match_patient(session, []) is None
        # A value without a system is no evidence of identity.
        assert await service.match_patient(session, [("", "111")]) is None


async def test_match_patient_conflict_is_unmatched(db_sessions, caplog) -> None:
    await write_all(
        db_sessions,
        patient("p1", (CLINIC_PATIENTS, "111")),
        patient("p2", (HOSPITAL_PATIENTS, "222")),
    )
    caplog.set_level(logging.WARNING, logger="services.registry.service")
    async with db_sessions() as session:
        found = await service.match_patient(
            session, [(CLINIC_PATIENTS, "111"), (HOSPITAL_PATIENTS, "222")]
        )
    assert found is None
    assert "2 registry patients" in caplog.text
    for value in ("111", "222", "p1", "p2"):
        assert value not in caplog.text.replace("2 registry", "")


async def test_patient_key_stable_and_pseudonymous(db_sessions) -> None:
    await write_all(db_sessions, patient("p1", (CLINIC_PATIENTS, MRN)))
    async with db_sessions() as session:
        key = await service.patient_key(session, "p1")  # created with the Patient
        await session.commit()
    await write_all(db_sessions, patient("p1", (CLINIC_PATIENTS, "other")))
    async with db_sessions() as session:
        assert await service.patient_key(session, "p1") == key  # updates keep it
        other = await service.patient_key(session, "unregistered")
        await session.commit()
    assert len(key) == 32 and "p1" not in key and other != key


async def test_care_teams_consents_and_practitioner_roles(db_sessions) -> None:
    await write_all(
        db_sessions,
        care_team("t1", "p1", ("primary-physician", "Organization/clinic")),
        care_team("t2", "p1", ("visiting-nurse", "PractitionerRole/nurse")),
        care_team("t3", "p2"),
        consent("c1", "p1"),
        practitioner_role("nurse", "station", "n1"),
        practitioner_role("nurse-2", "station", "n2"),
        practitioner_role("elsewhere", "clinic", "n1"),
    )
    async with db_sessions() as session:
        assert [t["id"] for t in await service.care_teams(session, "p1")] == ["t1", "t2"]
        assert [c["id"] for c in await service.consents(session, "p1")] == ["c1"]
        assert await service.consents(session, "p2") == []
        assert await service.practitioner_role_ids(session, "station", "n1") == ["nurse"]
        assert await service.practitioner_role_ids(session, "station", "nurse-2") == ["nurse-2"]
        assert await service.practitioner_role_ids(session, "clinic", "nurse") == []


# --------------------------------------------------------------------------------------------
# Service: validation and rules


async def invalid(sessions, resource_type: str, body: dict, resource_id: str | None = None):
    async with sessions() as session:
        with pytest.raises(InvalidMessage) as raised:
            await service.write(session, resource_type, body, resource_id)
    assert raised.value.status == 400
    return raised.value.issues


async def test_invalid_datatype_located_without_value(db_sessions) -> None:
    issues = await invalid(db_sessions, "Patient", patient("p1", birthDate="1940-13-45"))
    assert [i.expression for i in issues] == ["Patient.birthDate"]
    assert "1940-13-45" not in str(issues)


async def test_unknown_element_located(db_sessions) -> None:
    body = {**patient("p1"), "nickname": NAME}
    issues = await invalid(db_sessions, "Patient", body)
    assert issues[0].expression == "Patient.nickname" and issues[0].code == "structure"
    assert_no_personal_data(str(issues))


async def test_care_team_role_rules(db_sessions) -> None:
    body = care_team(
        "t1", "p1", ("primary-physician", "Organization/a"), ("doctor", "Organization/b")
    )
    issues = await invalid(db_sessions, "CareTeam", body)
    assert [i.expression for i in issues] == ["CareTeam.participant[1].role[0].coding[0].code"]
    assert issues[0].code == "code-invalid" and "doctor" not in issues[0].diagnostics

    body = care_team("t1", "p1", ("primary-physician", "Organization/a"))
    body["participant"][0]["role"][0]["coding"][0]["system"] = "http://snomed.info/sct"
    issues = await invalid(db_sessions, "CareTeam", body)
    assert issues[0].expression == "CareTeam.participant[0].role[0].coding[0]"


async def test_participant_without_role_is_allowed(db_sessions) -> None:
    body = care_team("t1", "p1")
    body["participant"] = [{"member": {"reference": "Organization/a"}}]
    await write_all(db_sessions, body)


@pytest.mark.parametrize(
    ("resource_type", "body", "expression"),
    [
        (
            "CareTeam",
            {**care_team("t", "p"), "subject": {"reference": "Group/g"}},
            "CareTeam.subject",
        ),
        (
            "CareTeam",
            {k: v for k, v in care_team("t", "p").items() if k != "subject"},
            "CareTeam.subject",
        ),  # noqa: E501
        ("Consent", {**consent("c", "p"), "patient": {"display": NAME}}, "Consent.patient"),
        (
            "PractitionerRole",
            {**practitioner_role("r", "o"), "organization": {"reference": "Practitioner/x"}},
            "PractitionerRole.organization",
        ),
    ],
)
async def test_required_references(db_sessions, resource_type, body, expression) -> None:
    issues = await invalid(db_sessions, resource_type, body)
    assert [i.expression for i in issues] == [expression]
    assert_no_personal_data(str(issues))


async def test_wrong_resource_type_and_identifier_too_long(db_sessions) -> None:
    issues = await invalid(db_sessions, "Patient", organization("o"), "o")
    assert issues[0].expression == "resourceType"
    issues = await invalid(db_sessions, "Patient", patient("p1", (CLINIC_PATIENTS, "9" * 300)))
    assert issues[0].expression == "Patient.identifier[0].value" and issues[0].code == "too-long"


# --------------------------------------------------------------------------------------------
# HTTP


def admin(api) -> dict[str, str]:
    return api.headers("region-office", role="region-admin")


def member(api) -> dict[str, str]:
    # A registered organization (tokens of unknown ones are refused): the region office.
    return api.headers("region-office", role="member")


def office(api) -> dict[str, str]:
    """A person at the region office: reads every patient (need to know: tests/test_policy.py)."""
    return api.headers("region-office", role="member")


def assert_outcome(response, status: int, expression: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if expression is not None:
        expressions = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
        assert expression in expressions, expressions
    return outcome


async def test_http_create_read(api) -> None:
    body = patient("ignored", (CLINIC_PATIENTS, MRN))
    del body["id"]
    created = await api.client.post("/fhir/Patient", json=body, headers=admin(api))
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith(FHIR_JSON)
    stored = created.json()
    new_id = stored["id"]
    assert created.headers["location"] == f"/fhir/Patient/{new_id}/_history/1"
    assert created.headers["etag"] == 'W/"1"'
    assert stored["meta"]["versionId"] == "1"

    read = await api.client.get(f"/fhir/Patient/{new_id}", headers=office(api))
    assert read.status_code == 200 and read.json() == stored
    assert read.headers["etag"] == 'W/"1"' and "last-modified" in read.headers

    missing = await api.client.get("/fhir/Patient/nobody", headers=office(api))
    assert_outcome(missing, 404)


@pytest.mark.parametrize("resource_type", sorted(SAMPLES))
async def test_http_update_as_create_then_update(api, resource_type: str) -> None:
    body = SAMPLES[resource_type]("r1")
    url = f"/fhir/{resource_type}/r1"
    first = await api.client.put(url, json=body, headers=admin(api))
    assert first.status_code == 201, first.text
    second = await api.client.put(url, json=body, headers=admin(api))
    assert second.status_code == 200
    assert second.headers["location"] == f"{url}/_history/2"
    assert second.headers["etag"] == 'W/"2"'
    assert second.json()["meta"]["versionId"] == "2"
    read = await api.client.get(url, headers=office(api))
    assert read.json()["meta"]["versionId"] == "2"


async def test_http_post_existing_id_conflicts(api) -> None:
    await api.client.put("/fhir/Organization/o1", json=organization("o1"), headers=admin(api))
    again = await api.client.post("/fhir/Organization", json=organization("o1"), headers=admin(api))
    assert_outcome(again, 409)


async def test_http_search_bundle(api) -> None:
    for pid, value in (("p1", "111"), ("p2", "222")):
        body = patient(pid, (CLINIC_PATIENTS, value))
        await api.client.put(f"/fhir/Patient/{pid}", json=body, headers=admin(api))
    response = await api.client.get(
        "/fhir/Patient", params={"identifier": f"{CLINIC_PATIENTS}|222"}, headers=office(api)
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1
    (entry,) = bundle["entry"]
    # From the settings (default http://{host}:{port}), not the request's Host header.
    assert entry["fullUrl"] == "http://127.0.0.1:8000/fhir/Patient/p2"
    assert entry["resource"]["id"] == "p2" and entry["search"] == {"mode": "match"}
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert parse_qs(urlsplit(self_link).query)["identifier"] == [f"{CLINIC_PATIENTS}|222"]

    by_value = await api.client.get("/fhir/Patient?identifier=111", headers=office(api))
    assert [e["resource"]["id"] for e in by_value.json()["entry"]] == ["p1"]


async def test_http_search_paging(api) -> None:
    for n in range(5):
        await api.client.put(
            f"/fhir/Organization/o{n}", json=organization(f"o{n}"), headers=admin(api)
        )
    # The region office is created by the hub at start: six organizations in all.
    seen: list[str] = []
    url: str | None = "/fhir/Organization?_count=2"
    pages = 0
    while url:
        bundle = (await api.client.get(url, headers=member(api))).json()
        assert bundle["total"] == 6
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if pages:
            assert "previous" in links
        url = links.get("next")
        pages += 1
    assert seen == ["o0", "o1", "o2", "o3", "o4", "region-office"] and pages == 3
    last = (
        await api.client.get("/fhir/Organization?_count=2&_offset=4", headers=member(api))
    ).json()
    assert "next" not in {link["relation"] for link in last["link"]}

    capped = (await api.client.get("/fhir/Organization?_count=100000", headers=member(api))).json()
    assert len(capped["entry"]) == 6
    only_total = (await api.client.get("/fhir/Organization?_count=0", headers=member(api))).json()
    assert only_total["total"] == 6 and only_total["entry"] == []
    bad = await api.client.get("/fhir/Organization?_count=-1", headers=member(api))
    assert_outcome(bad, 400, "_count")


async def test_http_search_unknown_parameter(api) -> None:
    response = await api.client.get(f"/fhir/Patient?name={NAME}", headers=member(api))
    outcome = assert_outcome(response, 400, "name")
    assert outcome["issue"][0]["code"] == "not-supported"
    assert_no_personal_data(response.text)


async def test_http_invalid_date_is_located_without_personal_data(api) -> None:
    body = patient("p1", (CLINIC_PATIENTS, MRN), birthDate="1940-13-45")
    response = await api.client.put("/fhir/Patient/p1", json=body, headers=admin(api))
    assert_outcome(response, 400, "Patient.birthDate")
    assert_no_personal_data(response.text, "1940-13-45")


async def test_http_unknown_care_team_role(api) -> None:
    body = care_team("t1", "p1", ("family-doctor", "Organization/clinic"))
    response = await api.client.post("/fhir/CareTeam", json=body, headers=admin(api))
    assert_outcome(response, 400, "CareTeam.participant[0].role[0].coding[0].code")
    assert "family-doctor" not in response.text


async def test_http_wrong_resource_type_in_url(api) -> None:
    body = patient("p1", (CLINIC_PATIENTS, MRN))
    response = await api.client.put("/fhir/Organization/p1", json=body, headers=admin(api))
    assert_outcome(response, 400, "resourceType")
    assert_no_personal_data(response.text)


@pytest.mark.parametrize(
    "content",
    [
        b'{"resourceType": "Patient", "name": [{"family": "\xe5\xb1\xb1\xe7\x94\xb0"',  # truncated
        json.dumps([patient("p1")]).encode(),
        b"\xff\xfe not utf-8",
        b"",
    ],
)
async def test_http_body_not_a_json_object(api, content: bytes) -> None:
    headers = {**admin(api), "content-type": FHIR_JSON}
    response = await api.client.post("/fhir/Patient", content=content, headers=headers)
    assert_outcome(response, 400)
    assert_no_personal_data(response.text)


async def test_http_body_too_large(api) -> None:
    api.hub.settings.max_message_bytes = 1000
    body = {**organization("o1"), "name": "x" * 2000}
    response = await api.client.put("/fhir/Organization/o1", json=body, headers=admin(api))
    assert_outcome(response, 413)


async def test_http_auth(api) -> None:
    body = organization("o1")
    forbidden = await api.client.put("/fhir/Organization/o1", json=body, headers=member(api))
    assert_outcome(forbidden, 403)
    forbidden = await api.client.post("/fhir/Organization", json=body, headers=member(api))
    assert_outcome(forbidden, 403)
    for method, url in (
        ("GET", "/fhir/Organization/o1"),
        ("GET", "/fhir/Organization"),
        ("POST", "/fhir/Organization"),
        ("PUT", "/fhir/Organization/o1"),
    ):
        unauthenticated = await api.client.request(method, url, json=body)
        assert_outcome(unauthenticated, 401)
        bad = await api.client.request(
            method, url, json=body, headers={"Authorization": "Bearer not-a-token"}
        )
        assert_outcome(bad, 401)
    # Nothing was written by the refused calls.
    read = await api.client.get("/fhir/Organization/o1", headers=member(api))
    assert_outcome(read, 404)


async def test_http_unknown_type_is_404(api) -> None:
    assert_outcome(await api.client.get("/fhir/Observation/x", headers=member(api)), 404)
    assert_outcome(await api.client.get("/fhir/Observation", headers=member(api)), 404)
    response = await api.client.post("/fhir/Observation", json={}, headers=admin(api))
    assert response.status_code in (404, 405)
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_http_registry_routes_do_not_shadow_metadata(api) -> None:
    response = await api.client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"
