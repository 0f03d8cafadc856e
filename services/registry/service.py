"""Registry queries and rules: the six FHIR resource types routing reads, stored versioned.

Bodies are validated with ``fhir.resources.R4B`` plus the hub's own rules (the shapes routing
relies on), then stored as the caller wrote them with ``id`` and ``meta`` set by the hub.
Identifiers and references are copied into index rows on every write so that searches, patient
matching and routing look-ups are indexed queries rather than scans of JSON.

Nothing here commits: callers own the transaction. Issues never quote input values, which may
be personal data (names, birth dates, identifiers).
"""

from __future__ import annotations

import copy
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import insert_ignore, utcnow
from schemas.canonical import CARE_TEAM_ROLE_SYSTEM
from schemas.fhir_errors import issues_from_pydantic
from schemas.json_safety import UnsafeJson, check_tree
from schemas.outcome import InvalidMessage, Issue
from services import offload
from services.registry.models import (
    REGISTRY_TYPES,
    PatientKey,
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


# --------------------------------------------------------------------------------------------
# Reads


async def read(
    session: AsyncSession, resource_type: str, resource_id: str
) -> RegistryResource | None:
    if resource_type not in REGISTRY_TYPES or not ID_PATTERN.match(resource_id):
        return None
    return await session.get(RegistryResource, (resource_type, resource_id))


async def search(
    session: AsyncSession,
    resource_type: str,
    params: Mapping[str, str],
    *,
    offset: int = 0,
    limit: int | None = None,
) -> list[RegistryResource]:
    """Resources of ``resource_type`` matching every parameter (AND), ordered by id.

    ``offset``/``limit`` let the views page in SQL instead of loading the whole registry.
    """
    query = _search_query(resource_type, params).order_by(RegistryResource.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


async def search_total(session: AsyncSession, resource_type: str, params: Mapping[str, str]) -> int:
    """How many resources ``search`` would return without paging (Bundle.total)."""
    subquery = _search_query(resource_type, params).subquery()
    return int(await session.scalar(select(func.count()).select_from(subquery)) or 0)


async def match_patient(
    session: AsyncSession, identifiers: Iterable[tuple[str, str]]
) -> str | None:
    """The registry Patient carrying any of ``identifiers`` (system, value), or None.

    Identifiers without a system are ignored: a bare number could belong to anyone. Two
    different patients matching means the registry or the message is wrong; guessing would
    send a person's events to another person's care team, so the caller treats it as unmatched.
    """
    pairs = {(system, value) for system, value in identifiers if system and value}
    if not pairs:
        return None
    query = (
        select(RegistryIdentifier.resource_id)
        .where(RegistryIdentifier.resource_type == "Patient")
        .where(or_(*(_identifier_clause(s, v) for s, v in sorted(pairs))))
        .distinct()
    )
    ids = list((await session.scalars(query)).all())
    if len(ids) > 1:
        # Counts only: the identifiers and patient ids would link a person to the conflict.
        log.warning(
            "patient identifiers match %d registry patients; treated as unmatched", len(ids)
        )
        return None
    return ids[0] if ids else None


async def patient_key(session: AsyncSession, patient_id: str) -> str:
    """Get or create the pseudonymous key (the Kafka key of the patient's events).

    INSERT .. ON CONFLICT DO NOTHING then SELECT, so two writers racing agree on one key.
    """
    key = await session.scalar(select(PatientKey.key).where(PatientKey.patient_id == patient_id))
    if key is not None:
        return key
    await session.execute(
        insert_ignore(
            session,
            PatientKey,
            [{"patient_id": patient_id, "key": uuid.uuid4().hex}],
            ["patient_id"],
        )
    )
    key = await session.scalar(select(PatientKey.key).where(PatientKey.patient_id == patient_id))
    assert key is not None  # inserted or already there
    return key


async def care_teams(session: AsyncSession, patient_id: str) -> list[dict]:
    """CareTeam bodies whose subject is Patient/<patient_id> (any status; routing filters)."""
    return await _bodies_referencing(session, "CareTeam", "subject", f"Patient/{patient_id}")


async def consents(session: AsyncSession, patient_id: str) -> list[dict]:
    """Consent bodies whose patient is Patient/<patient_id> (any status; routing filters)."""
    return await _bodies_referencing(session, "Consent", "patient", f"Patient/{patient_id}")


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

    current = await session.scalar(
        select(RegistryResource.version_id).where(
            RegistryResource.resource_type == resource_type, RegistryResource.id == resource_id
        )
    )
    if posted and current is not None:
        # POST creates; silently overwriting an existing resource would lose data.
        raise _conflict(resource_type, "a resource with this id exists; use PUT to update it")
    now = utcnow()
    version = 1 if current is None else current + 1
    stored = _with_meta(candidate, version, now)
    if current is None:
        await _insert(session, resource_type, resource_id, stored, now)
    else:
        await _update(session, resource_type, resource_id, stored, now, current)
    await _reindex(session, resource_type, resource_id, identifiers, references)
    if resource_type == "Patient":
        await patient_key(session, resource_id)
    row = await session.get(RegistryResource, (resource_type, resource_id), populate_existing=True)
    assert row is not None  # just written in this transaction
    return row, current is None


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
    return _required_reference(body, "Consent", "patient", "Patient")


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
    session: AsyncSession, resource_type: str, resource_id: str, body: dict, now: datetime
) -> None:
    row = {
        "resource_type": resource_type,
        "id": resource_id,
        "version_id": 1,
        "body": body,
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
    body: dict,
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
        .values(version_id=expected_version + 1, body=body, last_updated=now)
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


def _search_query(resource_type: str, params: Mapping[str, str]) -> Select:
    if resource_type not in REGISTRY_TYPES:
        raise InvalidMessage(
            [Issue("error", "not-supported", "not a registry resource type", "resourceType")], 404
        )
    query = select(RegistryResource).where(RegistryResource.resource_type == resource_type)
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
            query = query.where(RegistryResource.id.in_(_identifier_ids(resource_type, value)))
        else:
            index_name, types = reference_params[name]
            targets = _reference_targets(value, types)
            query = query.where(
                RegistryResource.id.in_(_referencing_ids(resource_type, index_name, *targets))
            )
    return query


def _identifier_ids(resource_type: str, token: str) -> Select:
    """Token search: "system|value", "value" (any system), "|value" (no system), "system|"."""
    query = select(RegistryIdentifier.resource_id).where(
        RegistryIdentifier.resource_type == resource_type
    )
    if "|" not in token:
        return query.where(RegistryIdentifier.value == token)
    system, _, value = token.partition("|")
    query = query.where(RegistryIdentifier.system == system)
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
        select(RegistryResource.body)
        .where(RegistryResource.resource_type == resource_type)
        .where(RegistryResource.id.in_(_referencing_ids(resource_type, name, target)))
        .order_by(RegistryResource.id)
    )
    return list((await session.scalars(query)).all())


# --------------------------------------------------------------------------------------------
# Issues


def _invalid(code: str, diagnostics: str, expression: str) -> InvalidMessage:
    return InvalidMessage([Issue("error", code, diagnostics, expression)])


def _conflict(resource_type: str, diagnostics: str) -> InvalidMessage:
    return InvalidMessage([Issue("error", "conflict", diagnostics, f"{resource_type}.id")], 409)


def _safe(name: str) -> str:
    """A parameter name fit to echo (the query string is the caller's, not personal data, but
    an odd key could still carry anything)."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-:.]{0,63}", name) else "*"
