"""Who may do what: every access decision of the hub, in one module.

Two layers, both decided here and nowhere else:

- **Routes.** ``ROUTE_RULES`` names, for every route of the app, the roles that may call it
  (or that it is public). ``authorize`` is installed as a dependency of the whole app, so no
  route can be reached without its rule; a route missing from the table is refused (fail
  closed) and the route-matrix test fails the suite.
- **Resources.** Need to know (DESIGN.md, HTTP surface): patient data — Patient, CareTeam,
  Consent, events — is readable by the region office and by organizations that are current
  members of the patient's active care team, directly or through a PractitionerRole; everyone
  else is told it does not exist (404), and search results leave it out. Registry writes:
  patient data by the region office only; an Organization by the region office or its own
  org-admin; Practitioner and PractitionerRole by the region office or the org-admin of the
  role's organization. Notifications are addressed (services/notifications decides the
  audience); auditors never read or mark them.

HTTP views, routing, deliveries and exports ask this module; none decides access on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.routing.rules import care_team_members
from renkei.db import utcnow
from renkei.settings import Settings
from services.audit.context import access_refused
from services.audit.service import AuditScope
from services.auth.dependencies import current_principal
from services.auth.service import Principal, Role
from services.clients import scopes
from services.errors import FhirError
from services.registry import service as registry
from services.registry.models import REGISTRY_TYPES

PATIENT_DATA_TYPES = ("Patient", "CareTeam", "Consent")
DIRECTORY_TYPES = ("Organization", "Practitioner", "PractitionerRole")

R = Role
ANY_TOKEN = frozenset(Role)
# People and machines working at a care organization (not auditors: they review, not treat).
CARE_WORKERS = frozenset({R.MEMBER, R.ORG_ADMIN, R.SYSTEM})
# Who reads patient data at all (then need to know decides which patients).
PATIENT_READERS = frozenset({R.REGION_ADMIN, R.ORG_ADMIN, R.MEMBER, R.SYSTEM})


@dataclass(frozen=True)
class Rule:
    """The roles that may call a route (``None``: public, no token), and what is decided inside.

    ``scope``: the SMART interaction the route is (resource, one of c r u d s). A system
    client's token (POST /oauth/token) must have been granted it as well as hold the role.
    """

    roles: frozenset[Role] | None
    inside: str = ""
    scope: tuple[str, str] | None = None


PUBLIC = Rule(None, "no token: liveness, readiness, metadata")


def _registry_rules() -> dict[tuple[str, str], Rule]:
    rules: dict[tuple[str, str], Rule] = {}
    for resource_type in REGISTRY_TYPES:
        if resource_type in PATIENT_DATA_TYPES:
            read = Rule(PATIENT_READERS, "need to know: region office or current care team")
            write = Rule(frozenset({R.REGION_ADMIN}), "region office only")
        else:
            read = Rule(ANY_TOKEN, "the region's directory")
            inside = {
                "Organization": "org-admin: its own Organization only",
                "Practitioner": "org-admin: new ones, or those with a role at its organization",
                "PractitionerRole": "org-admin: roles at its own organization only",
            }[resource_type]
            write = Rule(frozenset({R.REGION_ADMIN, R.ORG_ADMIN}), inside)
        base = f"/fhir/{resource_type}"
        rules[("GET", f"{base}/{{resource_id}}")] = replace(read, scope=(resource_type, "r"))
        rules[("GET", base)] = replace(read, scope=(resource_type, "s"))
        rules[("POST", base)] = replace(write, scope=(resource_type, "c"))
        rules[("PUT", f"{base}/{{resource_id}}")] = replace(write, scope=(resource_type, "u"))
    return rules


ROUTE_RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/fhir/metadata"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): Rule(None, "no token: the hub's public signing keys"),
    ("GET", "/.well-known/smart-configuration"): Rule(None, "no token: SMART discovery"),
    ("POST", "/oauth/token"): Rule(None, "no token: the client assertion is the credential"),
    ("POST", "/fhir/$process-message"): Rule(
        CARE_WORKERS, "MessageHeader.sender must be the token's organization", ("Bundle", "c")
    ),
    ("GET", "/fhir/Communication"): Rule(
        CARE_WORKERS, "addressed to the caller only", ("Communication", "s")
    ),
    ("GET", "/fhir/Communication/{notification_id}"): Rule(
        CARE_WORKERS, "addressed to the caller only", ("Communication", "r")
    ),
    ("POST", "/fhir/Communication/{notification_id}/$read"): Rule(
        CARE_WORKERS, "addressed to the caller only", ("Communication", "u")
    ),
    ("POST", "/fhir/Communication/{notification_id}/$acknowledge"): Rule(
        CARE_WORKERS, "addressed to the caller only", ("Communication", "u")
    ),
    ("GET", "/notifications/stream"): Rule(
        CARE_WORKERS, "addressed to the caller only", ("Communication", "s")
    ),
    ("GET", "/fhir/MessageHeader/{event_id}/$status"): Rule(
        frozenset({R.REGION_ADMIN, R.ORG_ADMIN, R.MEMBER, R.SYSTEM}),
        "the message's sender or the region office; withheld recipients: region office only",
        ("MessageHeader", "r"),
    ),
    ("GET", "/admin/unmatched-events"): Rule(frozenset({R.REGION_ADMIN}), "region office only"),
    ("GET", "/admin/break-glass"): Rule(frozenset({R.REGION_ADMIN}), "region office only"),
    ("POST", "/admin/break-glass/{event_id}/$review"): Rule(
        frozenset({R.REGION_ADMIN}), "region office only"
    ),
    ("POST", "/admin/unmatched-events/{event_id}/$link"): Rule(
        frozenset({R.REGION_ADMIN}), "region office only"
    ),
    # Operations, not patient data: the region office runs the hub, and its monitoring scrapes
    # with a system client's token (scope system/Metrics.r, granted to its clients only).
    # Auditors review access to patient data; the hub's load is not theirs to watch.
    ("GET", "/metrics"): Rule(
        frozenset({R.REGION_ADMIN, R.SYSTEM}), "region office only", ("Metrics", "r")
    ),
    # The audit trail: auditors only (they review, they do not treat); which records each
    # sees is audit_scope below.
    ("GET", "/fhir/AuditEvent"): Rule(
        frozenset({R.AUDITOR}),
        "region office: the whole region; others: own agents and own data",
        ("AuditEvent", "s"),
    ),
    ("GET", "/fhir/AuditEvent/{record_id}"): Rule(
        frozenset({R.AUDITOR}),
        "region office: the whole region; others: own agents and own data",
        ("AuditEvent", "r"),
    ),
    **_registry_rules(),
}


def rule_for(method: str, path: str) -> Rule | None:
    return ROUTE_RULES.get((method, path))


async def authorize(request: Request) -> Principal | None:
    """The app-wide dependency: the route's rule, applied before any view code runs.

    Returns the caller (``None`` on a public route). Views that need the caller declare
    ``Depends(caller)``, which reuses this result.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None  # not one of ours (404/405 are answered by the router itself)
    rule = None
    for method in route.methods:
        if method == request.method:
            rule = rule_for(method, route.path)
    if rule is None:
        # Fail closed: a route nobody wrote a rule for is reachable by nobody.
        raise FhirError(403, "forbidden", "no access rule covers this route")
    if rule.roles is None:
        return None
    principal = await current_principal(request)
    try:
        _check_rule(request, rule, principal)
    except FhirError as error:
        # A signed-in caller refused by the rules: recorded (alone), then answered.
        await access_refused(request, principal, route.path, error.issues[0].diagnostics)
        raise
    return principal


def _check_rule(request: Request, rule: Rule, principal: Principal) -> None:
    assert rule.roles is not None
    settings: Settings = request.app.state.hub.settings
    if principal.role == Role.REGION_ADMIN and principal.org_id != settings.region_org:
        raise FhirError(403, "forbidden", "region-admin belongs to the region office only")
    if principal.role not in rule.roles:
        allowed = ", ".join(sorted(role.value for role in rule.roles))
        raise FhirError(403, "forbidden", f"this needs the role {allowed}")
    if principal.client_id is not None and not (
        rule.scope is not None and scopes.allows(principal.scopes, *rule.scope)
    ):
        # A client's token does what it was granted, never more, even where its role could.
        needed = f"system/{rule.scope[0]}.{rule.scope[1]}" if rule.scope else "a scope"
        raise FhirError(403, "forbidden", f"the token's scopes do not include {needed}")


async def caller(principal: Principal | None = Depends(authorize)) -> Principal:
    """The authenticated caller of a route whose rule needs a token."""
    if principal is None:  # a public route asked for a caller: a programming error
        raise FhirError(403, "forbidden", "this route has no caller")
    return principal


# --------------------------------------------------------------------------------------------
# Need to know: which patients a caller may see


@dataclass(frozen=True)
class PatientScope:
    """The patients a caller may see: every one (the region office) or those listed."""

    everyone: bool
    patient_ids: frozenset[str] = frozenset()

    def allows(self, patient_id: str | None) -> bool:
        return self.everyone or (patient_id is not None and patient_id in self.patient_ids)


async def patient_scope(
    session: AsyncSession, principal: Principal, settings: Settings, at: datetime | None = None
) -> PatientScope:
    """Patients whose active care team counts the caller's organization as a current member."""
    if principal.role not in PATIENT_READERS:
        return PatientScope(False)
    if principal.org_id == settings.region_org:
        return PatientScope(True)
    references = {f"Organization/{principal.org_id}"}
    references |= {
        f"PractitionerRole/{role_id}"
        for role_id in await registry.role_ids_at(session, principal.org_id)
    }
    teams = await registry.care_teams_with_members(session, sorted(references))
    now = at or utcnow()
    zone = ZoneInfo(settings.timezone)
    patients = set()
    for team in teams:
        if any(m.reference in references for m in care_team_members([team], now, zone)):
            patient = patient_of("CareTeam", team)
            if patient:
                patients.add(patient)
    return PatientScope(False, frozenset(patients))


def patient_of(resource_type: str, body: dict | None) -> str | None:
    """The registry Patient id a patient-data resource is about (None once forgotten: only
    the region office then learns that it existed, as 410)."""
    if not body:
        return None
    if resource_type == "Patient":
        return body.get("id")
    element = body.get("subject") if resource_type == "CareTeam" else body.get("patient")
    reference = (element or {}).get("reference", "") if isinstance(element, dict) else ""
    return reference.removeprefix("Patient/") if reference.startswith("Patient/") else None


def may_read(scope: PatientScope, resource_type: str, body: dict | None) -> bool:
    """Whether a registry resource is visible in ``scope`` (directory types always are)."""
    if resource_type in DIRECTORY_TYPES:
        return True
    return scope.allows(patient_of(resource_type, body))


def patient_filter(scope: PatientScope, resource_type: str) -> Iterable[str] | None:
    """Patient ids a search must be limited to (``None``: no limit)."""
    if resource_type in DIRECTORY_TYPES or scope.everyone:
        return None
    return scope.patient_ids


# --------------------------------------------------------------------------------------------
# The audit trail: which records an auditor reviews


def audit_scope(principal: Principal, settings: Settings) -> AuditScope:
    """The region office's auditor sees the whole region; another organization's auditor sees
    what its own people and systems did (agent) and who accessed what it sent (source). Anyone
    else sees nothing (the route rule already refused them; this holds for other callers)."""
    if principal.role != Role.AUDITOR:
        return AuditScope(False)
    if principal.org_id == settings.region_org:
        return AuditScope(True)
    return AuditScope(False, principal.org_id)


# Read receipts (GET /fhir/MessageHeader/{event id}/$status)


def may_see_receipts(principal: Principal, sender_org_id: str, settings: Settings) -> bool:
    """The organization that sent the message, and the region office; everyone else is told
    the message does not exist (404)."""
    if principal.role not in PATIENT_READERS:
        return False
    return principal.org_id in (sender_org_id, settings.region_org)


def sees_withheld_recipients(principal: Principal, settings: Settings) -> bool:
    """Who a delivery was withheld from (and under which consent rule) says what the patient
    chose about that organization: the region office sees it, the sender only that, and how
    often, a delivery was withheld by consent."""
    return principal.org_id == settings.region_org


# --------------------------------------------------------------------------------------------
# Registry writes


async def check_write(
    session: AsyncSession,
    principal: Principal,
    resource_type: str,
    resource_id: str | None,
    body: dict,
) -> None:
    """Raise 403 unless ``principal`` may write ``body`` as ``resource_type/resource_id``.

    ``resource_id`` is the URL's (PUT) or the body's (POST; None when the hub picks one). The
    route rule already limited the roles; here org-admins are kept to their own organization.
    Practitioner has no organization of its own: an org-admin may create one, and update one
    that holds a role at its organization.
    """
    if principal.role == Role.REGION_ADMIN:
        return
    if principal.role != Role.ORG_ADMIN or resource_type in PATIENT_DATA_TYPES:
        raise FhirError(403, "forbidden", "the region office keeps this resource")
    own = f"Organization/{principal.org_id}"
    current = await registry.read(session, resource_type, resource_id) if resource_id else None
    if resource_type == "Organization":
        if resource_id != principal.org_id:
            raise FhirError(403, "forbidden", "an org-admin writes its own Organization only")
    elif resource_type == "PractitionerRole":
        for version in (body, current.body if current else None):
            if version is not None and _reference(version.get("organization")) != own:
                raise FhirError(
                    403,
                    "forbidden",
                    "an org-admin writes roles at its own organization only",
                    "PractitionerRole.organization",
                )
    elif resource_type == "Practitioner" and current is not None:
        if own not in await registry.role_organizations(session, current.id):
            raise FhirError(
                403,
                "forbidden",
                "an org-admin updates Practitioners with a role at its organization only",
            )


def _reference(element: object) -> str | None:
    if isinstance(element, dict) and isinstance(element.get("reference"), str):
        return element["reference"]
    return None


# --------------------------------------------------------------------------------------------
# The matrix, as the README shows it (a test keeps the README equal to this table)

_MATRIX_ROLES = (R.REGION_ADMIN, R.ORG_ADMIN, R.MEMBER, R.SYSTEM, R.AUDITOR)


def matrix_markdown() -> str:
    """The role x route matrix as a Markdown table: ✓ allowed, – refused, "public" no token."""
    header = "| route | " + " | ".join(role.value for role in _MATRIX_ROLES) + " | decided inside |"
    lines = [header, "|" + " --- |" * (len(_MATRIX_ROLES) + 2)]
    for (method, path), rule in sorted(ROUTE_RULES.items(), key=lambda item: item[0][::-1]):
        if rule.roles is None:
            cells = ["public"] * len(_MATRIX_ROLES)
        else:
            cells = ["✓" if role in rule.roles else "–" for role in _MATRIX_ROLES]
        route = f"`{method} {path}`".replace("|", "\\|")
        lines.append(f"| {route} | " + " | ".join(cells) + f" | {rule.inside} |")
    return "\n".join(lines)
