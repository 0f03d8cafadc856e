"""The access policy: the role x route matrix walked from the app's own route table, need to
know on patient data, and who may write what (services/auth/policy.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from services.app import create_app
from services.auth import policy
from services.auth.service import Role
from tests.hubtools import load_region

CLINIC = "misawa-home-clinic"  # TEAM_A through a PractitionerRole, TEAM_B directly
TOWADA = "towada-naika-clinic"  # TEAM_A (p01-p05) directly
CARE_PLAN = "misawa-care-plan-1"  # TEAM_A only through its care manager's PractitionerRole
HACHINOHE = "hachinohe-home-clinic"  # TEAM_B (p06-p10)
TEAM_A = {"p01", "p02", "p03", "p04", "p05"}
TEAM_B = {"p06", "p07", "p08", "p09", "p10"}
README = Path(__file__).resolve().parent.parent / "README.md"


def api_routes(routes) -> list[APIRoute]:
    """The app's APIRoutes, through included routers (FastAPI keeps those as branches)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
        else:
            # Starlette's own routes (the OpenAPI document) bypass dependencies: they must be
            # the documented public ones, never data.
            assert route.path in PUBLIC_STARLETTE_ROUTES, route.path
    return found


PUBLIC_STARLETTE_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def app_routes(app) -> list[tuple[str, str]]:
    return sorted(
        (method, route.path) for route in api_routes(app.routes) for method in route.methods
    )


def org_for(role: Role) -> str:
    return "region-office" if role == Role.REGION_ADMIN else CLINIC


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_every_route_has_a_rule_and_every_rule_a_route(api) -> None:
    routes = app_routes(create_app(api.hub))
    assert len(routes) >= 30
    missing = [route for route in routes if policy.rule_for(*route) is None]
    assert missing == [], f"routes without an access rule: {missing}"
    stale = sorted(set(policy.ROUTE_RULES) - set(routes))
    assert stale == [], f"rules for routes that do not exist: {stale}"


async def test_role_route_matrix(api) -> None:
    """Every route x every role (and no token): refused exactly where the rule says."""
    await load_region(api.hub)
    # A live stream that was let in answers 200 and then never ends: as at hub shutdown, it
    # says so and ends at once, which still shows whether the policy let the role in.
    api.hub.notifications_routed.close_streams()
    checked = 0
    for method, path in app_routes(create_app(api.hub)):
        rule = policy.rule_for(method, path)
        url = concrete(path)
        anonymous = await api.client.request(method, url, json={})
        if rule.roles is None:
            assert anonymous.status_code not in (401, 403), (method, path)
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        for role in Role:
            response = await api.client.request(
                method, url, json={}, headers=api.headers(org_for(role), role.value)
            )
            refused = response.status_code == 403 and "needs the role" in response.text
            assert refused == (role not in rule.roles), (method, path, role, response.text)
            assert response.status_code != 401, (method, path, role)
            assert response.status_code < 500, (method, path, role, response.text)
            checked += 1
    assert checked >= 30 * len(Role)


async def test_region_admin_only_at_the_region_office(api) -> None:
    await load_region(api.hub)
    forged = api.headers(CLINIC, "region-admin")
    for method, url in (("GET", "/fhir/Patient/p01"), ("GET", "/admin/unmatched-events")):
        response = await api.client.request(method, url, headers=forged)
        assert response.status_code == 403 and "region office" in response.text
    office = api.headers("region-office", "region-admin")
    assert (await api.client.get("/admin/unmatched-events", headers=office)).status_code == 200


def test_readme_holds_the_matrix() -> None:
    assert policy.matrix_markdown() in README.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Need to know


async def patient_ids(api, org: str, role: str = "member", resource: str = "Patient") -> set[str]:
    response = await api.client.get(
        f"/fhir/{resource}?_count=500", headers=api.headers(org, role)
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["total"] == len(bundle["entry"])
    if resource == "Patient":
        return {e["resource"]["id"] for e in bundle["entry"]}
    field = "subject" if resource == "CareTeam" else "patient"
    return {
        e["resource"][field]["reference"].removeprefix("Patient/") for e in bundle["entry"]
    }


@pytest.mark.parametrize("resource", ["Patient", "CareTeam", "Consent"])
async def test_search_shows_only_the_care_teams_patients(api, resource: str) -> None:
    await load_region(api.hub)
    with_consent = {p for p in TEAM_A | TEAM_B if p != "p03"}  # p03 has no Consent on file
    expected = (lambda ids: ids & with_consent) if resource == "Consent" else (lambda ids: ids)
    assert await patient_ids(api, TOWADA, resource=resource) == expected(TEAM_A)
    assert await patient_ids(api, HACHINOHE, "system", resource) == expected(TEAM_B)
    # Through a PractitionerRole only: the care manager's office sees her patients.
    assert await patient_ids(api, CARE_PLAN, "org-admin", resource) == expected(TEAM_A)
    assert await patient_ids(api, CLINIC, resource=resource) == expected(TEAM_A | TEAM_B)
    assert await patient_ids(api, "region-office", resource=resource) == expected(
        TEAM_A | TEAM_B
    )


async def test_read_outside_the_care_team_is_404(api) -> None:
    await load_region(api.hub)
    towada = api.headers(TOWADA)
    assert (await api.client.get("/fhir/Patient/p01", headers=towada)).status_code == 200
    for url in ("/fhir/Patient/p06", "/fhir/CareTeam/ct-p06", "/fhir/Consent/consent-p06"):
        response = await api.client.get(url, headers=towada)
        assert response.status_code == 404, url
        assert "三沢" not in response.text and "p06" not in response.text
    # A chart-number search cannot confirm that somebody else's patient exists.
    search = await api.client.get(
        "/fhir/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.11310000001|00012350",
        headers=towada,
    )
    assert search.json()["total"] == 0


async def test_membership_ends_with_the_period_or_the_team(api) -> None:
    await load_region(api.hub)
    office = api.headers("region-office", "region-admin")
    team = (await api.client.get("/fhir/CareTeam/ct-p01", headers=office)).json()
    for participant in team["participant"]:
        if participant["member"]["reference"] == f"Organization/{TOWADA}":
            participant["period"] = {"start": "2025-04-01", "end": "2025-05-01"}
    assert (await api.client.put("/fhir/CareTeam/ct-p01", json=team, headers=office)).is_success
    assert await patient_ids(api, TOWADA) == TEAM_A - {"p01"}

    team = (await api.client.get("/fhir/CareTeam/ct-p02", headers=office)).json()
    team["status"] = "inactive"
    assert (await api.client.put("/fhir/CareTeam/ct-p02", json=team, headers=office)).is_success
    assert await patient_ids(api, TOWADA) == TEAM_A - {"p01", "p02"}


async def test_outsider_sees_no_patient_but_the_directory(api) -> None:
    await load_region(api.hub)
    office = api.headers("region-office", "region-admin")
    outsider = {"resourceType": "Organization", "id": "outsider", "name": "外部診療所"}
    assert (
        await api.client.put("/fhir/Organization/outsider", json=outsider, headers=office)
    ).status_code == 201
    assert await patient_ids(api, "outsider") == set()
    outsider_token = api.headers("outsider")
    directory = await api.client.get("/fhir/Organization?_count=100", headers=outsider_token)
    assert directory.json()["total"] == 13  # 11 region organizations, the office, the outsider
    role = await api.client.get("/fhir/PractitionerRole/cm-sato-role", headers=outsider_token)
    assert role.status_code == 200


# --------------------------------------------------------------------------------------------
# Writes


async def put(api, org: str, role: str, resource: dict):
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    return await api.client.put(url, json=resource, headers=api.headers(org, role))


async def test_only_the_region_office_writes_patient_data(api) -> None:
    await load_region(api.hub)
    office = api.headers("region-office", "region-admin")
    consent = (await api.client.get("/fhir/Consent/consent-p02", headers=office)).json()
    consent["provision"].pop("provision")  # drop the pharmacy's deny
    for org, role in (("chuo-pharmacy", "org-admin"), (CLINIC, "member"), (CLINIC, "system")):
        response = await put(api, org, role, consent)
        assert response.status_code == 403, (org, role)
    unchanged = (await api.client.get("/fhir/Consent/consent-p02", headers=office)).json()
    assert unchanged["meta"]["versionId"] == "1" and "provision" in unchanged["provision"]
    assert (await put(api, "region-office", "region-admin", consent)).status_code == 200


async def test_org_admin_writes_its_own_organization_and_roles(api) -> None:
    await load_region(api.hub)
    office = api.headers("region-office", "region-admin")
    own = (await api.client.get(f"/fhir/Organization/{CLINIC}", headers=office)).json()
    own["telecom"] = [{"system": "phone", "value": "0176-00-0000"}]
    assert (await put(api, CLINIC, "org-admin", own)).status_code == 200
    other = (await api.client.get(f"/fhir/Organization/{TOWADA}", headers=office)).json()
    assert (await put(api, CLINIC, "org-admin", other)).status_code == 403
    new_org = {"resourceType": "Organization", "id": "new-clinic", "name": "新規"}
    assert (await put(api, CLINIC, "org-admin", new_org)).status_code == 403

    practitioner = {"resourceType": "Practitioner", "id": "dr-new", "name": [{"text": "新 医師"}]}
    assert (await put(api, CLINIC, "org-admin", practitioner)).status_code == 201
    role = {
        "resourceType": "PractitionerRole",
        "id": "dr-new-role",
        "practitioner": {"reference": "Practitioner/dr-new"},
        "organization": {"reference": f"Organization/{CLINIC}"},
    }
    assert (await put(api, CLINIC, "org-admin", role)).status_code == 201
    # Not at somebody else's organization, and no taking over somebody else's role.
    assert (await put(api, TOWADA, "org-admin", role)).status_code == 403
    stolen = (await api.client.get("/fhir/PractitionerRole/cm-sato-role", headers=office)).json()
    stolen["organization"] = {"reference": f"Organization/{CLINIC}"}
    assert (await put(api, CLINIC, "org-admin", stolen)).status_code == 403
    # A Practitioner is updated by an organization where it holds a role.
    practitioner["name"] = [{"text": "新 医師（改）"}]
    assert (await put(api, CLINIC, "org-admin", practitioner)).status_code == 200
    assert (await put(api, TOWADA, "org-admin", practitioner)).status_code == 403
    for resource_type, body in (("Patient", {"resourceType": "Patient", "id": "px"}),):
        assert (await put(api, CLINIC, "org-admin", body)).status_code == 403, resource_type


# The issue's own words, independent of the table above: the table must say the same.
SPEC = {
    ("GET", "/fhir/Patient/{resource_id}"): {"region-admin", "org-admin", "member", "system"},
    ("PUT", "/fhir/Consent/{resource_id}"): {"region-admin"},
    ("PUT", "/fhir/Organization/{resource_id}"): {"region-admin", "org-admin"},
    ("PUT", "/fhir/PractitionerRole/{resource_id}"): {"region-admin", "org-admin"},
    ("GET", "/fhir/Organization"): {"region-admin", "org-admin", "member", "system", "auditor"},
    ("GET", "/admin/unmatched-events"): {"region-admin"},
    ("GET", "/fhir/Communication"): {"org-admin", "member", "system"},
    ("POST", "/fhir/Communication/{notification_id}/$acknowledge"): {
        "org-admin",
        "member",
        "system",
    },
}


@pytest.mark.parametrize("route", sorted(SPEC))
def test_table_says_what_the_issue_says(route: tuple[str, str]) -> None:
    rule = policy.rule_for(*route)
    assert rule is not None and {role.value for role in rule.roles} == SPEC[route]


def test_the_system_scope_ceiling_grants_only_what_routes_allow_the_system_role() -> None:
    from services.clients.scopes import SYSTEM_CEILING

    allowed = {
        rule.scope
        for rule in policy.ROUTE_RULES.values()
        if rule.roles and Role.SYSTEM in rule.roles and rule.scope
    }
    for resource, letters in SYSTEM_CEILING.items():
        for letter in letters:
            assert (resource, letter) in allowed, (resource, letter)


def test_every_authenticated_care_route_names_its_scope() -> None:
    for route, rule in policy.ROUTE_RULES.items():
        if rule.roles and Role.SYSTEM in rule.roles:
            assert rule.scope is not None, route
