"""Stored audit records as FHIR R4 AuditEvents, shaped after IHE Basic Audit Log Patterns.

One table (``SHAPES``) says, for every AuditAction, the event type, the subtypes, the FHIR
action code and the BALP profile; the search (``type``, ``subtype``, ``action``) reads the same
table backwards, so what GET /fhir/AuditEvent shows and what it finds by never disagree.

- REST interactions (reads, searches, writes, the message intake): type ``rest`` and the
  ``restful-interaction`` subtype; patient reads and searches carry the BALP PatientRead /
  PatientQuery / PatientCreate ... profiles. Searches are action E with the query entity (role
  24, ``query`` = base64 of the parameter *names* only), as BALP's Query pattern has it.
- Routing decisions: the consent decision as an authorization event (BALP AuthZconsent, IHE
  AuthZ-Consent): type DICOM 110113, subtype AuthZ-Consent, the Consent as an entity; the
  break-glass use with purposeOfEvent BTG.
- Tokens and sign-in: DICOM 110114 User Authentication, Login / Logout.
- Every event also carries the hub's own code for the record (``audit-action``) as a subtype:
  the exact kind, searchable as ``subtype=routing.break-glass``.

Agents: the client (a system client's id, or a hub worker) as the application, the user
(PractitionerRole) as the requestor with the token's jti in ``policy`` (BALP
OAUTHaccessTokenUse: ``urn:ietf:params:oauth:jti:<jti>``), and the user's Organization;
``network`` is the caller's address. The hub is the ``source`` (observer).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from schemas.audit import AuditAction, AuditEntity, AuditRecord
from schemas.canonical import ACT_REASON_SYSTEM, BREAK_THE_GLASS, CANONICAL_BASE, EVENT_ID_SYSTEM

DICOM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
AUTHZ_SUBTYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
USER_AGENT_TYPES = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit"
ACTION_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/audit-action"
HUB_ROLE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/role"
CLIENT_ID_SYSTEM = f"{CANONICAL_BASE}/client-id"
SOURCE_ORG_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/audit-source-organization"
DETAIL_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/audit-detail"
JTI_PREFIX = "urn:ietf:params:oauth:jti:"
HUB_OBSERVER = {"display": "Renkei Hub"}


@dataclass(frozen=True)
class Shape:
    type: tuple[str, str, str]  # system, code, display
    subtype: tuple[str, str, str] | None
    action: str  # C R U D E
    profile: str | None = None  # BALP profile name, when the record is about a patient
    basic_profile: str | None = None  # BALP profile name otherwise


REST = (EVENT_TYPE, "rest", "Restful Operation")
SECURITY_ALERT = (DICOM, "110113", "Security Alert")
USER_AUTHENTICATION = (DICOM, "110114", "User Authentication")
EXPORT = (DICOM, "110106", "Export")
SECURITY_ATTRIBUTES = (DICOM, "110137", "User Security Attributes Changed")


def _rest(code: str) -> tuple[str, str, str]:
    return (RESTFUL, code, code)


AUTHZ_CONSENT = (AUTHZ_SUBTYPE, "AuthZ-Consent", "Authorization decision by Consent")
LOGIN = (DICOM, "110122", "Login")
LOGOUT = (DICOM, "110123", "Logout")

A = AuditAction
SHAPES: dict[AuditAction, Shape] = {
    A.MESSAGE_ACCEPTED: Shape(REST, _rest("operation"), "C", "PatientCreate", "Create"),
    A.MESSAGE_REFUSED: Shape(REST, _rest("operation"), "C", "PatientCreate", "Create"),
    A.EVENT_LINKED: Shape(REST, _rest("update"), "U", "PatientUpdate", "Update"),
    A.ROUTING_DELIVERED: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    A.ROUTING_WITHHELD: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    A.ROUTING_BREAK_GLASS: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    # An escalation step is a delivery decision like routing's, taken by the hub's timer.
    A.ESCALATION_FIRED: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    A.ESCALATION_WITHHELD: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    A.ESCALATION_SKIPPED: Shape(SECURITY_ALERT, AUTHZ_CONSENT, "E", None, "AuthZconsent"),
    A.BREAK_GLASS_REVIEWED: Shape(REST, _rest("update"), "U", "PatientUpdate", "Update"),
    A.NOTIFICATION_LISTED: Shape(REST, _rest("search-type"), "E", "PatientQuery", "Query"),
    A.NOTIFICATION_READ: Shape(REST, _rest("read"), "R", "PatientRead", "Read"),
    A.NOTIFICATION_ACKNOWLEDGED: Shape(REST, _rest("update"), "U", "PatientUpdate", "Update"),
    # A live stream opened: a standing query of the caller's notifications.
    A.STREAM_OPENED: Shape(REST, _rest("search-type"), "E", "PatientQuery", "Query"),
    # The sender read who received, read and acknowledged its message.
    A.RECEIPTS_READ: Shape(REST, _rest("operation"), "R", "PatientRead", "Read"),
    A.PATIENT_READ: Shape(REST, _rest("read"), "R", "PatientRead", "Read"),
    A.PATIENT_QUERY: Shape(REST, _rest("search-type"), "E", "PatientQuery", "Query"),
    A.RESOURCE_CREATED: Shape(REST, _rest("create"), "C", "PatientCreate", "Create"),
    A.RESOURCE_UPDATED: Shape(REST, _rest("update"), "U", "PatientUpdate", "Update"),
    A.RESOURCE_DELETED: Shape(REST, _rest("delete"), "D", "PatientDelete", "Delete"),
    A.PATIENT_FORGOTTEN: Shape(REST, _rest("delete"), "D", "PatientDelete", "Delete"),
    A.TOKEN_ISSUED: Shape(USER_AUTHENTICATION, LOGIN, "E"),
    A.TOKEN_REFUSED: Shape(USER_AUTHENTICATION, LOGIN, "E"),
    A.SIGNIN_FAILED: Shape(USER_AUTHENTICATION, LOGIN, "E"),
    A.TOKEN_REVOKED: Shape(USER_AUTHENTICATION, LOGOUT, "E"),
    A.CLIENT_ADDED: Shape(SECURITY_ATTRIBUTES, None, "C"),
    A.CLIENT_REVOKED: Shape(SECURITY_ATTRIBUTES, None, "D"),
    A.KEYS_ROTATED: Shape(SECURITY_ALERT, None, "E"),
    # A signed-in caller the route rules refused (outcome 4): an access-control alert.
    A.ACCESS_REFUSED: Shape(SECURITY_ALERT, None, "E"),
    A.AUDIT_QUERIED: Shape(REST, _rest("search-type"), "E", None, "Query"),
    A.AUDIT_EXPORTED: Shape(EXPORT, None, "R"),
    A.AUDIT_ARCHIVED: Shape(EXPORT, None, "E"),
}


def subtype_codes(action: AuditAction) -> set[str]:
    """The codes ``subtype=`` finds this action by: the interaction and the hub's own code."""
    shape = SHAPES[action]
    return {str(action)} | ({shape.subtype[1]} if shape.subtype else set())


def _coding(triple: tuple[str, str, str]) -> dict[str, str]:
    system, code, display = triple
    return {"system": system, "code": code, "display": display}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _agents(record: AuditRecord) -> list[dict[str, Any]]:
    agent = record.agent
    role = {"coding": [{"system": HUB_ROLE_SYSTEM, "code": agent.role}]}
    network = {"address": agent.network, "type": "2"} if agent.network else None
    # The requestor is the most specific actor known: the person, else the client, else the
    # organization (an org-level token).
    person = agent.practitioner is not None
    agents: list[dict[str, Any]] = []
    if agent.client is not None:
        client: dict[str, Any] = {
            "type": {"coding": [_coding((DICOM, "110150", "Application"))]},
            "who": {
                "identifier": {"system": CLIENT_ID_SYSTEM, "value": agent.client},
                "display": agent.client,
            },
            "requestor": not person,
        }
        if not person:
            client["role"] = [role]
            if agent.token:
                client["policy"] = [JTI_PREFIX + agent.token]
            if network:
                client["network"] = network
        agents.append(client)
    if person:
        user: dict[str, Any] = {
            "type": {"coding": [{"system": USER_AGENT_TYPES, "code": "UserOauthAgent"}]},
            "who": {"reference": f"PractitionerRole/{agent.practitioner}"},
            "role": [role],
            "requestor": True,
        }
        if agent.token:
            user["policy"] = [JTI_PREFIX + agent.token]
        if network:
            user["network"] = network
        agents.append(user)
    provider = {"system": ROLE_CLASS, "code": "PROV", "display": "healthcare provider"}
    organization: dict[str, Any] = {
        "type": {"coding": [provider]},
        "who": {"reference": f"Organization/{agent.org}"},
        "requestor": not agents,
    }
    if not agents:
        organization["role"] = [role]
        if agent.token:
            organization["policy"] = [JTI_PREFIX + agent.token]
        if network:
            organization["network"] = network
    agents.append(organization)
    return agents


def _entity(entity: AuditEntity) -> dict[str, Any]:
    resource_type, _, resource_id = entity.reference.partition("/")
    shown: dict[str, Any] = {"role": {"system": OBJECT_ROLE, "code": entity.role}}
    if entity.query is not None:  # BALP's query entity: a system object, role 24
        shown["type"] = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
    elif resource_type == "Patient":
        shown["type"] = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
    else:
        # R4's entity.type binding takes resource types: "entity-type=Consent" finds them.
        shown["type"] = {"system": RESOURCE_TYPES, "code": resource_type}
    if resource_id:
        what: dict[str, Any] = {"reference": entity.reference}
        if resource_type == "Bundle":  # a message: the event id, as the break-glass review has
            what["identifier"] = {"system": EVENT_ID_SYSTEM, "value": resource_id}
        shown["what"] = what
    if entity.query is not None:
        shown["query"] = _b64(entity.query)
        shown["description"] = resource_type  # what was searched
    return shown


def to_audit_event(record: AuditRecord) -> dict[str, Any]:
    """One stored record as an R4 AuditEvent (the id is the record's)."""
    shape = SHAPES[record.action]
    patient_profile = record.patient is not None and shape.profile is not None
    profile = shape.profile if patient_profile else shape.basic_profile
    subtypes = [_coding(shape.subtype)] if shape.subtype else []
    subtypes.append({"system": ACTION_SYSTEM, "code": str(record.action)})
    entities = [_entity(e) for e in record.entities]
    if record.patient is not None and f"Patient/{record.patient}" not in {
        e.reference for e in record.entities
    }:
        entities.insert(0, _entity(AuditEntity(f"Patient/{record.patient}", role="1")))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": _coding(shape.type),
        "subtype": subtypes,
        "action": shape.action,
        "recorded": record.recorded.isoformat(),
        "outcome": str(record.outcome),
        "agent": _agents(record),
        "source": {
            "observer": HUB_OBSERVER,
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if profile is not None:
        event["meta"] = {"profile": [f"{BALP}.{profile}"]}
    if record.reason is not None:
        event["outcomeDesc"] = record.reason
    if record.action == AuditAction.ROUTING_BREAK_GLASS:
        event["purposeOfEvent"] = [
            {"coding": [{"system": ACT_REASON_SYSTEM, "code": BREAK_THE_GLASS,
                         "display": "break the glass"}]}
        ]  # fmt: skip
    extensions = []
    if record.source_org is not None:
        # Whose data it was: the sender of the routed, listed or read message.
        extensions.append(
            {"url": SOURCE_ORG_EXTENSION,
             "valueReference": {"reference": f"Organization/{record.source_org}"}}
        )  # fmt: skip
    if record.detail:
        extensions.append(
            {
                "url": DETAIL_EXTENSION,
                "extension": [
                    {"url": key, "valueString": json.dumps(value, ensure_ascii=False)}
                    for key, value in sorted(record.detail.items())
                ],
            }
        )
    if extensions:
        event["extension"] = extensions
    if entities:
        event["entity"] = entities
    return event
