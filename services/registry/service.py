"""Registry queries and rules: the six FHIR resource types routing reads, stored versioned.

Bodies are validated with ``fhir.resources.R4B`` plus the hub's own rules (the shapes routing
relies on), then stored as the caller wrote them with ``id`` and ``meta`` set by the hub.
Identifiers and references are copied into index rows on every write so that searches, patient
matching and routing look-ups are indexed queries rather than scans of JSON.

Patient data (Patient, CareTeam, Consent) is sealed with the patient's data key and its
identifiers are stored as blind indexes (renkei.crypto); reads and searches here decrypt, so
this module is the one place that knows. Directory types stay in clear.

Nothing here commits: callers own the transaction. Issues never quote input values, which may
be personal data (names, birth dates, identifiers).
"""

from __future__ import annotations

import copy
import logging
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.crypto import KeyDestroyed, dumps, keyring_of
from renkei.db import insert_ignore, utcnow
from schemas.canonical import (
    CARE_TEAM_ROLE_SYSTEM,
    EVENT_SYSTEM,
    INSTITUTION_NO_SYSTEM,
    PATIENT_ID_SYSTEM_PREFIX,
    PATIENT_IDENTIFIER_SYSTEM_EXTENSION,
)
from schemas.events import EventType
from schemas.fhir_errors import issues_from_pydantic
from schemas.json_safety import UnsafeJson, check_tree
from schemas.outcome import InvalidMessage, Issue
from services import offload
from services.registry.models import (
    PATIENT_DATA,
    REGISTRY_TYPES,
    RegistryIdentifier,
    RegistryReference,
    RegistryResource,
)

log = logging.getLogger(__name__)

CARE_TEAM_ROLES = frozenset(
    {
        "primary-physician",
        "backup-physician",
        "visiting-nurse",
        "care-manager",
        "pharmacy",
        "care-service",
        "community-support-center",
        "emergency-hospital",
    }
)

EVENT_CODES = frozenset(event.value for event in EventType)

# FHIR R4 id datatype.
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# A literal reference "Type/id", relative or at the end of an absolute URL, optionally
# versioned. Indexed as "Type/id" so relative and absolute forms search alike.
_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]{1,39})/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)

# Column sizes of the index tables (services/registry/models.py): longer values are refused
# with an issue rather than failing on PostgreSQL (SQLite would silently accept them).
MAX_SYSTEM = 255
MAX_VALUE = 255
MAX_TARGET = 200
# Index rows per resource: a person or an office has a handful of numbers.
MAX_IDENTIFIERS = 50

# Search parameters per type: name -> the index row name and the resource types a bare id
# ("x" instead of "Patient/x") stands for. ``identifier`` and ``_id`` apply to every type.
_REFERENCE_PARAMS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "Organization": {},
    "Practitioner": {},
    "PractitionerRole": {
        "organization": ("organization", ("Organization",)),
        "practitioner": ("practitioner", ("Practitioner",)),
    },
    "Patient": {"organization": ("organization", ("Organization",))},
    "CareTeam": {
        "patient": ("patient", ("Patient",)),
        "subject": ("subject", ("Patient",)),
        "participant": ("participant", ("Organization", "PractitionerRole", "Practitioner")),
    },
    "Consent": {"patient": ("patient", ("Patient",))},
}
# The search parameters each type takes besides identifier and _id (for /openapi.json).
SEARCH_PARAMETERS = {t: frozenset(params) for t, params in _REFERENCE_PARAMS.items()}
# Handled by the views (paging), tolerated here so callers may pass the query string as is.
_PAGING_PARAMS = frozenset({"_count", "_offset"})


@dataclass(frozen=True)
class StoredResource:
    """A registry resource as callers see it: the body decrypted (None once forgotten)."""

    resource_type: str
    id: str
    version_id: int
    body: dict | None
    last_updated: datetime
    forgotten: bool = False


def _aad(resource_type: str, resource_id: str) -> str:
    return f"registry_resource|{resource_type}|{resource_id}|body"


async def _opened(session: AsyncSession, row: RegistryResource) -> StoredResource:
    body = row.body
    forgotten = row.forgotten_at is not None
    if row.body_sealed is not None and not forgotten:
        try:
            body = await keyring_of(session).open_json(
                session, row.body_sealed, _aad(row.resource_type, row.id)
            )
        except KeyDestroyed:
            body, forgotten = None, True
    elif forgotten:
        body = None
    return StoredResource(
        row.resource_type, row.id, row.version_id, body, row.last_updated, forgotten
    )


def owner_patient(resource_type: str, body: dict) -> str | None:
    """The patient whose data key seals a patient-data resource."""
    element = {"Patient": None, "CareTeam": "subject", "Consent": "patient"}[resource_type]
    if element is None:
        return body["id"]
    target = _target(body.get(element), ("Patient",))
    return target.removeprefix("Patient/") if target else None


# --------------------------------------------------------------------------------------------
# Reads


async def read(
    session: AsyncSession, resource_type: str, resource_id: str
) -> StoredResource | None:
    """The resource, decrypted; ``forgotten`` set (body None) once its patient was forgotten."""
    if resource_type not in REGISTRY_TYPES or not ID_PATTERN.match(resource_id):
        return None
    row = await session.get(RegistryResource, (resource_type, resource_id))
    return None if row is None else await _opened(session, row)


async def read_many(
    session: AsyncSession, resource_type: str, resource_ids: Iterable[str]
) -> dict[str, StoredResource]:
    """Several resources of one type in one query (a page of notifications names its patients)."""
    ids = sorted({i for i in resource_ids if ID_PATTERN.match(i)})
    if resource_type not in REGISTRY_TYPES or not ids:
        return {}
    rows = await session.scalars(
        select(RegistryResource).where(
            RegistryResource.resource_type == resource_type, RegistryResource.id.in_(ids)
        )
    )
    return {row.id: await _opened(session, row) for row in rows.all()}


async def search(
    session: AsyncSession,
    resource_type: str,
    params: Mapping[str, str],
    *,
    offset: int = 0,
    limit: int | None = None,
    patients: Collection[str] | None = None,
) -> list[RegistryResource]:
    """Resources of ``resource_type`` matching every parameter (AND), ordered by id.

    ``offset``/``limit`` let the views page in SQL instead of loading the whole registry.
    ``patients``: only resources about these Patient ids (the caller's need to know).
    """
    query = await _search_query(session, resource_type, params, patients)
    query = query.order_by(RegistryResource.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [await _opened(session, row) for row in (await session.scalars(query)).all()]


async def search_total(
    session: AsyncSession,
    resource_type: str,
    params: Mapping[str, str],
    patients: Collection[str] | None = None,
) -> int:
    """How many resources ``search`` would return without paging (Bundle.total)."""
    subquery = (await _search_query(session, resource_type, params, patients)).subquery()
    return int(await session.scalar(select(func.count()).select_from(subquery)) or 0)


async def patients_with(
    session: AsyncSession, identifiers: Iterable[tuple[str, str]]
) -> list[StoredResource]:
    """The registry Patients carrying any of ``identifiers`` (system, value), decrypted.

    Identifiers without a system are ignored: a bare number could belong to anyone. More than
    one Patient means the registry or the message is wrong; the caller must not guess.
    """
    holders, patients = await patients_by_identifier(session, identifiers)
    found = set().union(*holders.values()) if holders else set()
    return [patients[patient_id] for patient_id in sorted(found)]


async def patients_by_identifier(
    session: AsyncSession, identifiers: Iterable[tuple[str, str]]
) -> tuple[dict[tuple[str, str], set[str]], dict[str, StoredResource]]:
    """For many identifiers at once (a batch of messages): who holds each, and the Patients.

    Two queries through the blind index, whatever the number of identifiers: the identifiers
    themselves are not in the database. Identifiers nobody holds are absent from the first map.
    """
    keyring = keyring_of(session)
    blinded = {
        (system, keyring.blind(system, value)): (system, value)
        for system, value in identifiers
        if system and value
    }
    if not blinded:
        return {}, {}
    rows = await session.execute(
        select(RegistryIdentifier.resource_id, RegistryIdentifier.system, RegistryIdentifier.value)
        .where(RegistryIdentifier.resource_type == "Patient")
        .where(or_(*(_identifier_clause(s, v) for s, v in sorted(blinded))))
    )
    holders: dict[tuple[str, str], set[str]] = {}
    for patient_id, system, value in rows:
        if (original := blinded.get((system, value))) is not None:
            holders.setdefault(original, set()).add(patient_id)
    found = set().union(*holders.values()) if holders else set()
    return holders, await read_many(session, "Patient", found)


async def match_patient(
    session: AsyncSession, identifiers: Iterable[tuple[str, str]]
) -> str | None:
    """The one registry Patient carrying any of ``identifiers``, or None (none, or several)."""
    found = await patients_with(session, identifiers)
    if len(found) > 1:
        # Counts only: the identifiers and patient ids would link a person to the conflict.
        log.warning(
            "patient identifiers match %d registry patients; treated as unmatched", len(found)
        )
    return found[0].id if len(found) == 1 else None


async def patient_key(session: AsyncSession, patient_id: str) -> str:
    """The pseudonymous key (the Kafka key of the patient's records): an HMAC of the id under
    the hub's own key, the same in every process, never the id or an identifier."""
    return keyring_of(session).patient_key(patient_id)


def issued_systems(organization: dict | None) -> frozenset[str]:
    """The patient-identifier systems an Organization issues: JP Core's system of its 10-digit
    医療機関コード, plus those its extension lists (介護保険事業所番号, 利用者番号, ...)."""
    if not organization:
        return frozenset()
    systems = {
        f"{PATIENT_ID_SYSTEM_PREFIX}{identifier['value']}"
        for identifier in organization.get("identifier") or []
        if identifier.get("system") == INSTITUTION_NO_SYSTEM
        and re.fullmatch(r"[0-9]{10}", str(identifier.get("value") or ""))
    }
    systems |= {
        extension["valueUri"]
        for extension in organization.get("extension") or []
        if extension.get("url") == PATIENT_IDENTIFIER_SYSTEM_EXTENSION
        and isinstance(extension.get("valueUri"), str)
    }
    return frozenset(systems)


def patient_name(patient: StoredResource | None) -> str | None:
    """How the registry names the patient (official name first), None if it cannot say."""
    if patient is None or patient.body is None:
        return None
    names = patient.body.get("name") or []
    names = sorted(names, key=lambda n: 0 if n.get("use") == "official" else 1)
    for name in names:
        if name.get("text"):
            return name["text"]
        parts = [name.get("family", ""), *name.get("given", [])]
        if any(parts):
            return " ".join(p for p in parts if p)
    return None


async def care_teams(session: AsyncSession, patient_id: str) -> list[dict]:
    """CareTeam bodies whose subject is Patient/<patient_id> (any status; routing filters)."""
    return await _bodies_referencing(session, "CareTeam", "subject", f"Patient/{patient_id}")


async def consents(session: AsyncSession, patient_id: str) -> list[dict]:
    """Consent bodies whose patient is Patient/<patient_id> (any status; routing filters)."""
    return await _bodies_referencing(session, "Consent", "patient", f"Patient/{patient_id}")


async def care_teams_of(session: AsyncSession, patient_ids: Iterable[str]) -> dict[str, list[dict]]:
    """``care_teams`` of several patients in one query (the router routes a batch at once)."""
    return await _bodies_referencing_many(session, "CareTeam", "subject", patient_ids)


async def consents_of(session: AsyncSession, patient_ids: Iterable[str]) -> dict[str, list[dict]]:
    """``consents`` of several patients in one query."""
    return await _bodies_referencing_many(session, "Consent", "patient", patient_ids)


async def practitioner_role_ids(
    session: AsyncSession, org_id: str, practitioner_id: str
) -> list[str]:
    """PractitionerRole ids at Organization/<org_id> that are, or point at, ``practitioner_id``.

    A token's practitioner may name either the PractitionerRole (the person at this
    organization) or the Practitioner; both are accepted.
    """
    at_org = _referencing_ids("PractitionerRole", "organization", f"Organization/{org_id}")
    of_practitioner = _referencing_ids(
        "PractitionerRole", "practitioner", f"Practitioner/{practitioner_id}"
    )
    query = (
        select(RegistryResource.id)
        .where(RegistryResource.resource_type == "PractitionerRole")
        .where(RegistryResource.id.in_(at_org))
        .where(
            or_(RegistryResource.id == practitioner_id, RegistryResource.id.in_(of_practitioner))
        )
        .order_by(RegistryResource.id)
    )
    return list((await session.scalars(query)).all())


async def role_ids_at(session: AsyncSession, org_id: str) -> list[str]:
    """Ids of the PractitionerRoles at Organization/<org_id> (need to know goes through them)."""
    query = _referencing_ids("PractitionerRole", "organization", f"Organization/{org_id}")
    return list((await session.scalars(query)).all())


async def role_organizations(session: AsyncSession, practitioner_id: str) -> set[str]:
    """ "Organization/x" of every PractitionerRole of Practitioner/<practitioner_id>."""
    roles = _referencing_ids("PractitionerRole", "practitioner", f"Practitioner/{practitioner_id}")
    query = select(RegistryReference.target).where(
        RegistryReference.resource_type == "PractitionerRole",
        RegistryReference.name == "organization",
        RegistryReference.resource_id.in_(roles),
    )
    return set((await session.scalars(query)).all())


async def care_teams_with_members(session: AsyncSession, references: list[str]) -> list[dict]:
    """CareTeam bodies with any of ``references`` as a participant (any status or period)."""
    if not references:
        return []
    query = (
        select(RegistryResource)
        .where(RegistryResource.resource_type == "CareTeam")
        .where(RegistryResource.forgotten_at.is_(None))
        .where(RegistryResource.id.in_(_referencing_ids("CareTeam", "participant", *references)))
        .order_by(RegistryResource.id)
    )
    opened = [await _opened(session, row) for row in (await session.scalars(query)).all()]
    return [resource.body for resource in opened if resource.body is not None]


# --------------------------------------------------------------------------------------------
# Writes


async def ensure_region_office(session: AsyncSession, org_id: str, name: str) -> None:
    """Create the region office's Organization if it is missing (the hub's first start).

    It is the only organization whose tokens may carry the region-admin role; an existing
    resource is left as the region wrote it.
    """
    if await read(session, "Organization", org_id) is not None:
        return
    body = {
        "resourceType": "Organization",
        "id": org_id,
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "govt",
                    }
                ]
            }
        ],
        "name": name,
    }
    try:
        await write(session, "Organization", body, org_id)
    except InvalidMessage:
        return  # a concurrent first start created it (409): that is the same outcome


async def write(
    session: AsyncSession,
    resource_type: str,
    body: dict,
    resource_id: str | None = None,
) -> tuple[RegistryResource, bool]:
    """Create (``resource_id`` None: POST) or update-as-create (PUT /Type/id).

    Returns (stored row, created). Raises InvalidMessage: 400 for an invalid body, 409 when the
    id of a POST already exists or a concurrent write got there first. Does not commit.
    """
    if resource_type not in REGISTRY_TYPES:
        raise InvalidMessage(
            [Issue("error", "not-supported", "not a registry resource type", "resourceType")], 404
        )
    if not isinstance(body, dict):
        raise _invalid("structure", "the body must be a JSON object", resource_type)
    posted = resource_id is None
    # Validation is CPU work (fhir.resources over the whole body): off the event loop.
    resource_id, candidate, identifiers, references = await offload.run_cpu(
        _prepare, resource_type, body, resource_id
    )

    existing = (
        await session.execute(
            select(RegistryResource.version_id, RegistryResource.forgotten_at).where(
                RegistryResource.resource_type == resource_type, RegistryResource.id == resource_id
            )
        )
    ).first()
    current = existing.version_id if existing is not None else None
    if posted and current is not None:
        # POST creates; silently overwriting an existing resource would lose data.
        raise _conflict(resource_type, "a resource with this id exists; use PUT to update it")
    if existing is not None and existing.forgotten_at is not None:
        raise _gone(resource_type)
    now = utcnow()
    version = 1 if current is None else current + 1
    stored = _with_meta(candidate, version, now)
    columns = await _columns(session, resource_type, resource_id, stored)
    if resource_type in PATIENT_DATA:
        keyring = keyring_of(session)
        identifiers = {(s, keyring.blind(s, v)) for s, v in identifiers}
    if current is None:
        await _insert(session, resource_type, resource_id, columns, now)
    else:
        await _update(session, resource_type, resource_id, columns, now, current)
    await _reindex(session, resource_type, resource_id, identifiers, references)
    row = StoredResource(resource_type, resource_id, version, stored, now)
    return row, current is None


async def _columns(
    session: AsyncSession, resource_type: str, resource_id: str, stored: dict
) -> dict[str, Any]:
    """The body columns: clear for the directory, sealed under the patient's key otherwise."""
    if resource_type not in PATIENT_DATA:
        return {"body": stored, "body_sealed": None}
    owner = owner_patient(resource_type, stored)
    assert owner is not None  # the rules require the reference
    keyring = keyring_of(session)
    try:
        ref = await keyring.patient_dek(session, owner)
    except KeyDestroyed:
        raise _gone(resource_type) from None
    sealed = keyring.seal(ref, dumps(stored), _aad(resource_type, resource_id))
    return {"body": {}, "body_sealed": sealed}


def _prepare(
    resource_type: str, body: dict, resource_id: str | None
) -> tuple[str, dict, set[tuple[str, str]], set[tuple[str, str]]]:
    """(id, body with id, identifier index, reference index) of a valid body; else raises."""
    try:
        # Bodies from the views were checked when parsed; others (CLI, demo) are checked here.
        check_tree(body)
    except UnsafeJson as error:
        raise _invalid(error.code, error.reason, resource_type) from None
    resource_id = _resolve_id(resource_type, body, resource_id)
    candidate = {**body, "id": resource_id}
    _validate(resource_type, candidate)
    identifiers, references = _index_entries(resource_type, candidate)
    return resource_id, candidate, identifiers, references


def _resolve_id(resource_type: str, body: dict, resource_id: str | None) -> str:
    """The id to store under: the URL's (PUT), else the body's, else a new uuid4 (POST)."""
    body_id = body.get("id")
    if resource_id is not None:
        if not ID_PATTERN.match(resource_id):
            raise _invalid(
                "value", "the id in the URL is not a valid FHIR id", f"{resource_type}.id"
            )
        if body_id is not None and body_id != resource_id:
            raise _invalid(
                "invalid", "the id in the body does not match the URL", f"{resource_type}.id"
            )
        return resource_id
    if body_id is None:
        return str(uuid.uuid4())
    if not isinstance(body_id, str) or not ID_PATTERN.match(body_id):
        raise _invalid("value", "invalid id", f"{resource_type}.id")
    return body_id


def _validate(resource_type: str, body: dict) -> None:
    """FHIR R4 structure and datatypes (fhir.resources R4B), then the hub's routing rules."""
    if body.get("resourceType") != resource_type:
        raise _invalid("invalid", f"resourceType must be {resource_type}", "resourceType")
    try:
        get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as error:
        raise InvalidMessage(issues_from_pydantic(error.errors(), root=resource_type)) from None
    except Exception:  # fhir.resources raises assorted errors on odd input
        # Whatever it was, its text may quote the input, so say nothing specific.
        raise _invalid("structure", f"not a valid FHIR R4 {resource_type}", resource_type) from None
    issues = _RULES[resource_type](body)
    if issues:
        raise InvalidMessage(issues)


def _careteam_rules(body: dict) -> list[Issue]:
    issues = _required_reference(body, "CareTeam", "subject", "Patient")
    for i, participant in enumerate(body.get("participant") or []):
        roles = participant.get("role") or []
        codings = (roles[0].get("coding") or []) if roles else []
        if not codings:
            continue  # routing ignores a participant without a role; R4 allows it
        where = f"CareTeam.participant[{i}].role[0].coding[0]"
        coding = codings[0]
        if coding.get("system") != CARE_TEAM_ROLE_SYSTEM:
            issues.append(
                Issue(
                    "error", "code-invalid", f"role system must be {CARE_TEAM_ROLE_SYSTEM}", where
                )
            )
        elif coding.get("code") not in CARE_TEAM_ROLES:
            issues.append(
                Issue(
                    "error",
                    "code-invalid",
                    "unknown care-team role code; expected one of "
                    + ", ".join(sorted(CARE_TEAM_ROLES)),
                    f"{where}.code",
                )
            )
    return issues


def _consent_rules(body: dict) -> list[Issue]:
    issues = _required_reference(body, "Consent", "patient", "Patient")
    provision = body.get("provision")
    if isinstance(provision, dict):
        issues += _provision_event_codes(provision, "Consent.provision")
    return issues


def _provision_event_codes(provision: dict, where: str) -> list[Issue]:
    """An event code in a provision must be one the hub routes: a typo would otherwise make
    a deny silently apply to nothing."""
    issues: list[Issue] = []
    for c, concept in enumerate(provision.get("code") or []):
        for k, coding in enumerate(concept.get("coding") or []):
            if coding.get("system") == EVENT_SYSTEM and coding.get("code") not in EVENT_CODES:
                issues.append(
                    Issue(
                        "error", "code-invalid",
                        "unknown event code; expected one of " + ", ".join(sorted(EVENT_CODES)),
                        f"{where}.code[{c}].coding[{k}].code",
                    )
                )  # fmt: skip
    for n, nested in enumerate(provision.get("provision") or []):
        issues += _provision_event_codes(nested, f"{where}.provision[{n}]")
    return issues


def _practitioner_role_rules(body: dict) -> list[Issue]:
    return _required_reference(body, "PractitionerRole", "organization", "Organization")


def _no_rules(_body: dict) -> list[Issue]:
    return []


_RULES = {
    "Organization": _no_rules,
    "Practitioner": _no_rules,
    "PractitionerRole": _practitioner_role_rules,
    "Patient": _no_rules,
    "CareTeam": _careteam_rules,
    "Consent": _consent_rules,
}


def _required_reference(body: dict, resource_type: str, element: str, target: str) -> list[Issue]:
    """Routing looks these up by reference; without one the resource would silently do nothing."""
    if _target(body.get(element), (target,)) is None:
        return [
            Issue(
                "error",
                "required",
                f"{element} must reference {target}/<id>",
                f"{resource_type}.{element}",
            )
        ]
    return []


# --------------------------------------------------------------------------------------------
# Index extraction


def _index_entries(
    resource_type: str, body: dict
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(identifier (system, value) pairs, reference (name, "Type/id") pairs) of a valid body."""
    issues: list[Issue] = []
    identifiers: set[tuple[str, str]] = set()
    if len(body.get("identifier") or []) > MAX_IDENTIFIERS:
        where = f"{resource_type}.identifier"
        text = f"more than {MAX_IDENTIFIERS} identifiers"
        raise InvalidMessage([Issue("error", "too-costly", text, where)])
    for i, identifier in enumerate(body.get("identifier") or []):
        system, value = identifier.get("system") or "", identifier.get("value")
        if not value:
            continue  # an identifier without a value cannot be searched or matched
        where = f"{resource_type}.identifier[{i}]"
        if len(system) > MAX_SYSTEM:
            issues.append(
                Issue("error", "too-long", f"longer than {MAX_SYSTEM}", f"{where}.system")
            )
        elif len(value) > MAX_VALUE:
            issues.append(Issue("error", "too-long", f"longer than {MAX_VALUE}", f"{where}.value"))
        else:
            identifiers.add((system, value))
    if issues:
        raise InvalidMessage(issues)
    references = {
        (name, target)
        for name, element, types in _reference_elements(resource_type, body)
        if (target := _target(element, types)) is not None
    }
    return identifiers, references


def _reference_elements(
    resource_type: str, body: dict
) -> Iterable[tuple[str, Any, tuple[str, ...]]]:
    """(index name, Reference element, accepted target types) for each indexed reference."""
    if resource_type == "CareTeam":
        # Indexed under both names: FHIR's CareTeam search has `subject` and `patient`.
        yield "subject", body.get("subject"), ("Patient",)
        yield "patient", body.get("subject"), ("Patient",)
        for participant in body.get("participant") or []:
            yield "participant", participant.get("member"), ()
    elif resource_type == "Consent":
        yield "patient", body.get("patient"), ("Patient",)
    elif resource_type == "PractitionerRole":
        yield "organization", body.get("organization"), ("Organization",)
        yield "practitioner", body.get("practitioner"), ("Practitioner",)
    elif resource_type == "Patient":
        yield "organization", body.get("managingOrganization"), ("Organization",)
        for practitioner in body.get("generalPractitioner") or []:
            yield "organization", practitioner, ("Organization",)


def _target(reference: Any, types: tuple[str, ...]) -> str | None:
    """'Type/id' of a Reference element when it is literal and of one of ``types`` (any if ())."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    match = _REFERENCE.search(reference["reference"])
    if match is None or (types and match["type"] not in types):
        return None
    target = f"{match['type']}/{match['id']}"
    return target if len(target) <= MAX_TARGET else None


# --------------------------------------------------------------------------------------------
# Storage


def _with_meta(body: dict, version: int, now: datetime) -> dict:
    """A copy of ``body`` with meta.versionId / meta.lastUpdated set by the hub."""
    stored = copy.deepcopy(body)
    meta = dict(stored.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = _instant(now)
    stored["meta"] = meta
    return stored


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _insert(
    session: AsyncSession, resource_type: str, resource_id: str, columns: dict, now: datetime
) -> None:
    row = {
        "resource_type": resource_type,
        "id": resource_id,
        "version_id": 1,
        **columns,
        "last_updated": now,
    }
    # ON CONFLICT DO NOTHING + RETURNING: a concurrent create of the same id answers 409
    # instead of a 500 from the primary key violation.
    statement = insert_ignore(session, RegistryResource, [row], ["resource_type", "id"])
    inserted = (await session.execute(statement.returning(RegistryResource.id))).first()
    if inserted is None:
        raise _conflict(resource_type, "the resource was created concurrently; retry")


async def _update(
    session: AsyncSession,
    resource_type: str,
    resource_id: str,
    columns: dict,
    now: datetime,
    expected_version: int,
) -> None:
    # Optimistic: only if nobody bumped the version since we read it, so two concurrent PUTs
    # cannot both become version N+1.
    statement = (
        update(RegistryResource)
        .where(
            RegistryResource.resource_type == resource_type,
            RegistryResource.id == resource_id,
            RegistryResource.version_id == expected_version,
        )
        .values(version_id=expected_version + 1, **columns, last_updated=now)
        .returning(RegistryResource.id)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(statement)).first() is None:
        raise _conflict(resource_type, "the resource was updated concurrently; retry")


async def _reindex(
    session: AsyncSession,
    resource_type: str,
    resource_id: str,
    identifiers: set[tuple[str, str]],
    references: set[tuple[str, str]],
) -> None:
    """Replace the resource's index rows with those of its new body."""
    key = {"resource_type": resource_type, "resource_id": resource_id}
    for table in (RegistryIdentifier, RegistryReference):
        await session.execute(
            delete(table).where(
                table.resource_type == resource_type, table.resource_id == resource_id
            )
        )
    if identifiers:
        await session.execute(
            insert(RegistryIdentifier),
            [{**key, "system": s, "value": v} for s, v in sorted(identifiers)],
        )
    if references:
        await session.execute(
            insert(RegistryReference),
            [{**key, "name": n, "target": t} for n, t in sorted(references)],
        )


# --------------------------------------------------------------------------------------------
# Search helpers


async def _search_query(
    session: AsyncSession,
    resource_type: str,
    params: Mapping[str, str],
    patients: Collection[str] | None = None,
) -> Select:
    if resource_type not in REGISTRY_TYPES:
        raise InvalidMessage(
            [Issue("error", "not-supported", "not a registry resource type", "resourceType")], 404
        )
    query = select(RegistryResource).where(
        RegistryResource.resource_type == resource_type, RegistryResource.forgotten_at.is_(None)
    )
    if patients is not None:
        query = query.where(_about_patients(resource_type, patients))
    reference_params = _REFERENCE_PARAMS[resource_type]
    for name, value in params.items():
        if name in _PAGING_PARAMS:
            continue
        if name not in reference_params and name not in ("identifier", "_id"):
            raise InvalidMessage(
                [
                    Issue(
                        "error",
                        "not-supported",
                        f"unknown search parameter {_safe(name)}",
                        _safe(name),
                    )
                ]
            )
        if not value:
            raise InvalidMessage(
                [Issue("error", "invalid", f"empty value for search parameter {name}", name)]
            )
        if name == "_id":
            query = query.where(RegistryResource.id == value)
        elif name == "identifier":
            ids = await _identifier_ids(session, resource_type, value)
            query = query.where(RegistryResource.id.in_(ids))
        else:
            index_name, types = reference_params[name]
            targets = _reference_targets(value, types)
            query = query.where(
                RegistryResource.id.in_(_referencing_ids(resource_type, index_name, *targets))
            )
    return query


def _about_patients(resource_type: str, patients: Collection[str]):
    """The resources of a patient-data type that are about one of ``patients``."""
    if resource_type == "Patient":
        return RegistryResource.id.in_(sorted(patients))
    name = "subject" if resource_type == "CareTeam" else "patient"
    targets = [f"Patient/{p}" for p in sorted(patients)]
    return RegistryResource.id.in_(_referencing_ids(resource_type, name, *targets))


async def _identifier_ids(session: AsyncSession, resource_type: str, token: str) -> Select:
    """Token search: "system|value", "value" (any system), "|value" (no system), "system|".

    For patient data the stored value is the blind index of (system, value): "value" alone is
    looked up under each system the type's index holds (a handful: one per sender).
    """
    query = select(RegistryIdentifier.resource_id).where(
        RegistryIdentifier.resource_type == resource_type
    )
    blinded = resource_type in PATIENT_DATA
    if "|" not in token:
        if not blinded:
            return query.where(RegistryIdentifier.value == token)
        systems = await session.scalars(
            select(RegistryIdentifier.system)
            .where(RegistryIdentifier.resource_type == resource_type)
            .distinct()
        )
        keyring = keyring_of(session)
        return query.where(
            RegistryIdentifier.value.in_([keyring.blind(s, token) for s in systems.all()])
        )
    system, _, value = token.partition("|")
    query = query.where(RegistryIdentifier.system == system)
    if value and blinded:
        value = keyring_of(session).blind(system, value)
    return query.where(RegistryIdentifier.value == value) if value else query


def _identifier_clause(system: str, value: str):
    return and_(RegistryIdentifier.system == system, RegistryIdentifier.value == value)


def _reference_targets(value: str, types: tuple[str, ...]) -> list[str]:
    """``Patient/x`` (or an absolute URL ending so) as is; a bare ``x`` for each type it means."""
    match = _REFERENCE.search(value)
    if match is not None:
        return [f"{match['type']}/{match['id']}"]
    return [f"{t}/{value}" for t in types]


def _referencing_ids(resource_type: str, name: str, *targets: str) -> Select:
    return select(RegistryReference.resource_id).where(
        RegistryReference.resource_type == resource_type,
        RegistryReference.name == name,
        RegistryReference.target.in_(targets),
    )


async def _bodies_referencing(
    session: AsyncSession, resource_type: str, name: str, target: str
) -> list[dict]:
    query = (
        select(RegistryResource)
        .where(RegistryResource.resource_type == resource_type)
        .where(RegistryResource.forgotten_at.is_(None))
        .where(RegistryResource.id.in_(_referencing_ids(resource_type, name, target)))
        .order_by(RegistryResource.id)
    )
    opened = [await _opened(session, row) for row in (await session.scalars(query)).all()]
    return [resource.body for resource in opened if resource.body is not None]


async def _bodies_referencing_many(
    session: AsyncSession, resource_type: str, name: str, patient_ids: Iterable[str]
) -> dict[str, list[dict]]:
    """Patient id -> the bodies (by id) whose ``name`` reference is that patient."""
    ids = sorted(set(patient_ids))
    found: dict[str, list[dict]] = {i: [] for i in ids}
    if not ids:
        return found
    query = (
        select(RegistryReference.target, RegistryResource)
        .join(
            RegistryResource,
            (RegistryResource.resource_type == RegistryReference.resource_type)
            & (RegistryResource.id == RegistryReference.resource_id),
        )
        .where(
            RegistryReference.resource_type == resource_type,
            RegistryReference.name == name,
            RegistryReference.target.in_([f"Patient/{i}" for i in ids]),
            RegistryResource.forgotten_at.is_(None),
        )
        .order_by(RegistryResource.id)
    )
    for target, row in (await session.execute(query)).all():
        opened = await _opened(session, row)
        bodies = found.get(target.removeprefix("Patient/"))
        if opened.body is not None and bodies is not None:
            bodies.append(opened.body)
    return found


# --------------------------------------------------------------------------------------------
# Issues


def _invalid(code: str, diagnostics: str, expression: str) -> InvalidMessage:
    return InvalidMessage([Issue("error", code, diagnostics, expression)])


def _gone(resource_type: str) -> InvalidMessage:
    return InvalidMessage(
        [Issue("error", "deleted", "this patient's data was erased (forgotten)", resource_type)],
        410,
    )


def _conflict(resource_type: str, diagnostics: str) -> InvalidMessage:
    return InvalidMessage([Issue("error", "conflict", diagnostics, f"{resource_type}.id")], 409)


def _safe(name: str) -> str:
    """A parameter name fit to echo (the query string is the caller's, not personal data, but
    an odd key could still carry anything)."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-:.]{0,63}", name) else "*"
