"""Every action of the hub leaves exactly one audit record, with who, what, whose and why.

Driven through the real HTTP surface (and the router's service, the CLI as a process), read
back from the outbox as the audit writer will (tests/audit_emitted.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jwt
from sqlalchemy import select

from consumers.routing.service import route_events
from consumers.routing.table import DEFAULT_ROUTING
from schemas.audit import AuditAction, AuditAgent, AuditEntity, AuditOutcome, AuditRecord
from schemas.events import EventType
from services.audit.context import SigninFailures
from services.auth.service import Role, issue_token
from services.demo_region import PATIENTS
from services.intake.models import Event
from services.notifications.models import Notification
from tests.audit_emitted import audit_records, only_record, record_count
from tests.hubtools import (
    HOSPITAL,
    accept,
    load_region,
    message,
    notifications_of,
    suppressed_of,
    wait_routed,
)
from tests.test_cli import run_cli
from tests.test_clients import ask, assertion, ec_key, register, token_url
from tests.test_consent_end_to_end import REASON, day_service_knows, emergency
from tests.test_no_personal_data import SECRETS

PHARMACY = "chuo-pharmacy"
REGION = "region-office"
QUEUE = "/admin/unmatched-events"


def bearer(hub, org: str, role: str = "member", practitioner: str | None = None):  # noqa: ANN001
    token = issue_token(hub.settings.keys_dir, org, Role(role), practitioner)
    claims = jwt.decode(token, options={"verify_signature": False})
    return {"Authorization": f"Bearer {token}"}, claims["jti"]


def assert_session(record: AuditRecord) -> None:
    """Made under a token: its login time and the session's age are in the record."""
    issued = datetime.fromisoformat(record.detail["token_issued_at"])
    assert issued.tzinfo is not None and issued <= datetime.now(UTC)
    assert 0 <= record.detail["token_age_seconds"] < 120


async def route_all(hub) -> None:  # noqa: ANN001
    """What the router would do (these tests run without a broker): route every accepted
    event in one batch, as the router's transaction does."""
    async with hub.sessions() as session:
        events = list(
            await session.scalars(
                select(Event).where(Event.status == "accepted", Event.routed_at.is_(None))
            )
        )
        await route_events(
            session, events, DEFAULT_ROUTING, ZoneInfo("Asia/Tokyo"), "opt-in",
            region_org=hub.settings.region_org,
        )  # fmt: skip
        await session.commit()


# -- intake ---------------------------------------------------------------------------------


async def test_an_accepted_message_is_one_record_and_its_repeat_none(api) -> None:
    hub = api.hub
    await load_region(hub)
    bundle = message(EventType.ADMISSION, "p01")
    auth, jti = bearer(hub, HOSPITAL, "system")
    response = await api.client.post("/fhir/$process-message", json=bundle, headers=auth)
    assert response.status_code == 202, response.text
    event_id = response.json()["issue"][0]["details"]["coding"][0]["code"]
    record = await only_record(hub.sessions, AuditAction.MESSAGE_ACCEPTED)
    assert record.outcome == AuditOutcome.SUCCESS
    assert record.agent == AuditAgent(HOSPITAL, "system", token=jti, network="127.0.0.1")
    assert (record.patient, record.source_org) == ("p01", HOSPITAL)
    assert record.entities == (
        AuditEntity(f"Bundle/{event_id}", role="3"),
        AuditEntity("Patient/p01", role="1"),
    )
    assert record.detail["event_type"] == "admission"
    assert_session(record)
    before = await record_count(hub.sessions)
    again = await api.client.post("/fhir/$process-message", json=bundle, headers=auth)
    assert again.status_code == 200
    # The repeat is the same acceptance, answered again: no second message.accepted.
    assert await record_count(hub.sessions) == before


async def test_an_unmatched_message_is_accepted_without_a_patient(api) -> None:
    hub = api.hub
    await load_region(hub)
    bundle = message(EventType.ADMISSION, "p01")
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"][0]["value"] = "99999999"
    event_id = await accept(hub, api.client, bundle)
    record = await only_record(hub.sessions, AuditAction.MESSAGE_ACCEPTED)
    assert record.patient is None and record.detail["status"] == "unmatched"
    assert record.entities == (AuditEntity(f"Bundle/{event_id}", role="3"),)

    admin, _ = bearer(hub, REGION, "region-admin")
    listing = await api.client.get(QUEUE, params={"_count": "10"}, headers=admin)
    assert listing.status_code == 200
    query = await only_record(hub.sessions, AuditAction.PATIENT_QUERY)
    assert query.entities[0] == AuditEntity("Basic", role="24", query="_count")
    assert AuditEntity(f"Bundle/{event_id}", role="3") in query.entities

    linked = await api.client.post(
        f"{QUEUE}/{event_id}/$link", json={"patient": "Patient/p01"}, headers=admin
    )
    assert linked.status_code == 200, linked.text
    record = await only_record(hub.sessions, AuditAction.EVENT_LINKED)
    assert (record.patient, record.source_org, record.agent.org) == ("p01", HOSPITAL, REGION)
    assert AuditEntity("Patient/p01", role="1") in record.entities
    assert_session(record)


async def test_a_refused_message_is_recorded_with_the_reason(api) -> None:
    hub = api.hub
    await load_region(hub)
    auth, jti = bearer(hub, PHARMACY, "system")  # not the message's sender
    bundle = message(EventType.ADMISSION, "p01")
    response = await api.client.post("/fhir/$process-message", json=bundle, headers=auth)
    assert response.status_code == 403
    record = await only_record(hub.sessions, AuditAction.MESSAGE_REFUSED)
    assert record.outcome == AuditOutcome.MINOR_FAILURE
    assert (record.agent.org, record.agent.token, record.source_org) == (PHARMACY, jti, PHARMACY)
    assert record.reason == (
        "MessageHeader.sender is not the organization of the bearer token "
        "(Bundle.entry[0].resource.sender)"
    )
    assert record.patient is None and record.entities == ()
    assert record.detail["status"] == 403
    assert_session(record)

    broken = await api.client.post(
        "/fhir/$process-message", content=b'{"resourceType": "Bundle"}', headers=auth
    )
    assert broken.status_code == 400
    records = await audit_records(hub.sessions, AuditAction.MESSAGE_REFUSED)
    assert len(records) == 2 and records[1].reason
    assert not await audit_records(hub.sessions, AuditAction.MESSAGE_ACCEPTED)


async def test_a_bad_bearer_token_is_one_signin_failed_per_address_per_second(api) -> None:
    hub = api.hub
    await load_region(hub)
    bad = {"Authorization": "Bearer not.a.token"}
    bundle = message(EventType.ADMISSION, "p01")
    assert (
        await api.client.post("/fhir/$process-message", json=bundle, headers=bad)
    ).status_code == 401
    record = await only_record(hub.sessions, AuditAction.SIGNIN_FAILED)
    assert record.agent == AuditAgent("unknown", "unknown", network="127.0.0.1")
    assert record.outcome == AuditOutcome.MINOR_FAILURE
    assert record.reason == "DecodeError" and record.detail == {"route": "/fhir/$process-message"}
    assert b"not.a.token" not in record.to_bytes()
    # A flood from the same address within the second: no more records (and no message.refused).
    for _ in range(5):
        assert (await api.client.get("/fhir/Patient", headers=bad)).status_code == 401
    assert len(await audit_records(hub.sessions)) == 1
    # No token at all is not a sign-in attempt.
    assert (await api.client.get("/fhir/Patient")).status_code == 401
    assert len(await audit_records(hub.sessions)) == 1


def test_the_signin_throttle_admits_one_per_address_per_window() -> None:
    failures = SigninFailures(every=3600)
    assert failures.admit("10.0.0.1") and failures.admit("10.0.0.2")
    assert not failures.admit("10.0.0.1")
    assert failures.suppressed == 1
    assert SigninFailures(every=0).admit("a") and SigninFailures(every=0).admit("a")


async def test_a_revoked_token_is_a_signin_failure_naming_the_check(api) -> None:
    from services.auth.verifier import revoke_token

    hub = api.hub
    await load_region(hub)
    auth, jti = bearer(hub, PHARMACY)
    async with hub.sessions() as session:
        await revoke_token(session, jti)
        await session.commit()
    hub.tokens.revoked_token(jti)
    assert (await api.client.get("/fhir/Patient", headers=auth)).status_code == 401
    record = await only_record(hub.sessions, AuditAction.SIGNIN_FAILED)
    assert record.reason == "revoked" and record.agent.org == "unknown"


# -- routing and the inbox ------------------------------------------------------------------


async def test_each_recipient_decision_is_one_record(api) -> None:
    hub = api.hub
    await load_region(hub)
    event_id = await accept(hub, api.client, message(EventType.ADMISSION, "p02"))
    before = await record_count(hub.sessions)
    await route_all(hub)
    records = (await audit_records(hub.sessions))[before:]
    async with hub.sessions() as session:
        notifications = {
            n.recipient: n.id
            for n in await session.scalars(
                select(Notification).where(Notification.event_id == event_id)
            )
        }
    delivered = [r for r in records if r.action == AuditAction.ROUTING_DELIVERED]
    withheld = [r for r in records if r.action == AuditAction.ROUTING_WITHHELD]
    assert len(records) == len(delivered) + len(withheld)
    assert {r.detail["recipient"]: r for r in delivered}.keys() == notifications.keys()
    for r in delivered:
        assert r.agent == AuditAgent(REGION, "system", client="hub:router")
        assert (r.patient, r.source_org, r.outcome) == ("p02", HOSPITAL, AuditOutcome.SUCCESS)
        nid = notifications[r.detail["recipient"]]
        assert AuditEntity(f"Communication/{nid}", role="4") in r.entities
        assert AuditEntity(f"Bundle/{event_id}", role="3") in r.entities
        assert r.reason == "consent-permit"
    # p02's Consent withholds everything from the pharmacy: it names the rule and the Consent.
    [pharmacy] = withheld
    assert pharmacy.detail["recipient"] == f"Organization/{PHARMACY}"
    assert pharmacy.outcome == AuditOutcome.MINOR_FAILURE
    assert pharmacy.reason == "consent-deny-organization"
    assert AuditEntity("Consent/consent-p02", role="4") in pharmacy.entities
    assert not any(e.reference.startswith("Communication/") for e in pharmacy.entities)
    # Routed again (a redelivery): nothing new, so nothing recorded twice.
    count = await record_count(hub.sessions)
    await route_all(hub)
    assert await record_count(hub.sessions) == count


async def test_break_glass_deliveries_are_recorded_as_such(api) -> None:
    hub = api.hub
    await load_region(hub)
    await day_service_knows(api, "p03")  # p03 has no Consent on file
    await accept(hub, api.client, emergency("p03"))
    before = await record_count(hub.sessions)
    await route_all(hub)
    records = (await audit_records(hub.sessions))[before:]
    glass = [r for r in records if r.action == AuditAction.ROUTING_BREAK_GLASS]
    assert len(glass) == 4 and all(r.reason == "break-glass" for r in glass)
    assert all(r.source_org == "sakura-day-service" for r in glass)
    withheld = [r for r in records if r.action == AuditAction.ROUTING_WITHHELD]
    assert [r.reason for r in withheld] == ["no-consent"]
    assert all(REASON.encode() not in r.to_bytes() for r in records)


async def test_the_inbox_records_listing_reading_and_acknowledging(api) -> None:
    hub = api.hub
    await load_region(hub)
    event_id = await accept(hub, api.client, message(EventType.ADMISSION, "p01"))
    await route_all(hub)
    auth, jti = bearer(hub, PHARMACY)
    before = await record_count(hub.sessions)
    listing = await api.client.get(
        "/fhir/Communication", params={"status": "in-progress"}, headers=auth
    )
    assert listing.status_code == 200, listing.text
    [entry] = listing.json()["entry"]
    nid = entry["resource"]["id"]
    record = await only_record(hub.sessions, AuditAction.NOTIFICATION_LISTED, before)
    assert (record.patient, record.source_org, record.agent.token) == ("p01", HOSPITAL, jti)
    assert record.entities == (
        AuditEntity("Communication", role="24", query="status"),
        AuditEntity(f"Communication/{nid}", role="4"),
        AuditEntity("Patient/p01", role="1"),
    )
    assert_session(record)

    for path, action in (
        (f"/fhir/Communication/{nid}", AuditAction.NOTIFICATION_READ),
        (f"/fhir/Communication/{nid}/$acknowledge", AuditAction.NOTIFICATION_ACKNOWLEDGED),
    ):
        before = await record_count(hub.sessions)
        call = api.client.get if action == AuditAction.NOTIFICATION_READ else api.client.post
        assert (await call(path, headers=auth)).status_code == 200
        record = await only_record(hub.sessions, action, before)
        assert (record.patient, record.source_org) == ("p01", HOSPITAL)
        assert record.entities[0] == AuditEntity(f"Communication/{nid}", role="4")
        assert record.agent.org == PHARMACY
    before = await record_count(hub.sessions)
    assert (
        await api.client.post(f"/fhir/Communication/{nid}/$read", headers=auth)
    ).status_code == 200
    receipt = await only_record(hub.sessions, AuditAction.NOTIFICATION_READ, before)
    assert receipt.detail["receipt"] == "read"
    async with hub.sessions() as session:
        assert (await session.get(Notification, nid)).acknowledged_at is not None
    assert event_id


# -- the registry ---------------------------------------------------------------------------


async def test_a_page_of_several_patients_is_one_record_per_patient(api) -> None:
    """IHE BALP: a query that returned several patients is one AuditEvent per patient, so
    "who saw patient X" (GET /fhir/AuditEvent?patient=X) finds every page that showed X."""
    hub = api.hub
    await load_region(hub)
    admin, _ = bearer(hub, REGION, "region-admin")
    before = await record_count(hub.sessions)
    found = await api.client.get("/fhir/Patient", params={"_count": "3"}, headers=admin)
    assert found.status_code == 200
    shown = [e["resource"]["id"] for e in found.json()["entry"]]
    assert len(shown) == 3
    records = (await audit_records(hub.sessions, AuditAction.PATIENT_QUERY))
    assert await record_count(hub.sessions) - before == 3 == len(records)
    assert sorted(r.patient for r in records) == sorted(shown)
    for r in records:
        assert r.entities == (
            AuditEntity("Patient", role="24", query="_count"),
            AuditEntity(f"Patient/{r.patient}", role="1"),
        )


async def test_patient_reads_and_searches_are_recorded_without_values(api) -> None:
    hub = api.hub
    await load_region(hub)
    admin, jti = bearer(hub, REGION, "region-admin")
    assert (await api.client.get("/fhir/Patient/p01", headers=admin)).status_code == 200
    record = await only_record(hub.sessions, AuditAction.PATIENT_READ)
    assert (record.patient, record.agent.token, record.outcome) == (
        "p01",
        jti,
        AuditOutcome.SUCCESS,
    )
    assert record.entities == (AuditEntity("Patient/p01", role="1"),)
    assert_session(record)

    chart = PATIENTS[0][6]
    found = await api.client.get("/fhir/Patient", params={"identifier": chart}, headers=admin)
    assert found.status_code == 200 and found.json()["total"] == 1
    query = await only_record(hub.sessions, AuditAction.PATIENT_QUERY)
    assert query.patient == "p01"
    assert query.entities[0] == AuditEntity("Patient", role="24", query="identifier")
    assert chart.encode() not in query.to_bytes()

    before = await record_count(hub.sessions)
    assert (await api.client.get("/fhir/CareTeam/ct-p01", headers=admin)).status_code == 200
    team = await only_record(hub.sessions, AuditAction.PATIENT_READ, before)
    assert team.entities[0].reference == "CareTeam/ct-p01"

    # Someone outside the care team asks: the same 404, and a failure record.
    outsider, _ = bearer(hub, "hachinohe-home-clinic")
    before = await record_count(hub.sessions)
    assert (await api.client.get("/fhir/Patient/p01", headers=outsider)).status_code == 404
    refused = await only_record(hub.sessions, AuditAction.PATIENT_READ, before)
    assert refused.outcome == AuditOutcome.MINOR_FAILURE and refused.patient is None
    assert refused.agent.org == "hachinohe-home-clinic"

    # The directory is not patient data: no record.
    before = await record_count(hub.sessions)
    assert (
        await api.client.get(f"/fhir/Organization/{HOSPITAL}", headers=admin)
    ).status_code == 200
    assert await record_count(hub.sessions) == before


async def test_registry_writes_are_recorded_with_their_author(api) -> None:
    hub = api.hub
    await load_region(hub)
    admin, jti = bearer(hub, REGION, "region-admin", "dr-misawa")
    consent = (await api.client.get("/fhir/Consent/consent-p01", headers=admin)).json()
    consent["dateTime"] = "2026-01-05T10:00:00+09:00"
    before = await record_count(hub.sessions)
    response = await api.client.put("/fhir/Consent/consent-p01", json=consent, headers=admin)
    assert response.status_code == 200, response.text
    record = await only_record(hub.sessions, AuditAction.RESOURCE_UPDATED, before)
    assert record.agent == AuditAgent(REGION, "region-admin", practitioner="dr-misawa", token=jti,
                                      network="127.0.0.1")  # fmt: skip
    assert record.patient == "p01"
    assert record.entities == (AuditEntity("Consent/consent-p01", role="4"),)
    assert record.detail["version"] == 2

    new = {"resourceType": "Organization", "id": "new-clinic", "name": "新しい診療所"}
    before = await record_count(hub.sessions)
    assert (await api.client.post("/fhir/Organization", json=new, headers=admin)).status_code == 201
    created = await only_record(hub.sessions, AuditAction.RESOURCE_CREATED, before)
    assert created.entities == (AuditEntity("Organization/new-clinic", role="4"),)
    assert created.patient is None

    # A rolled-back write (the id exists: 409) leaves no record of a creation.
    before = await record_count(hub.sessions)
    assert (await api.client.post("/fhir/Organization", json=new, headers=admin)).status_code == 409
    assert await record_count(hub.sessions) == before

    # A refused write (an org-admin writing another organization) is a failure record.
    other, _ = bearer(hub, PHARMACY, "org-admin")
    before = await record_count(hub.sessions)
    body = {"resourceType": "Organization", "id": HOSPITAL}
    put = await api.client.put(f"/fhir/Organization/{HOSPITAL}", json=body, headers=other)
    assert put.status_code == 403
    refused = await only_record(hub.sessions, AuditAction.RESOURCE_UPDATED, before)
    assert refused.outcome == AuditOutcome.MINOR_FAILURE and refused.agent.org == PHARMACY
    assert refused.reason == "an org-admin writes its own Organization only"


async def test_a_break_glass_review_and_its_list_are_recorded(api) -> None:
    hub = api.hub
    await load_region(hub)
    await day_service_knows(api, "p03")
    event_id = await accept(hub, api.client, emergency("p03"))
    admin, _ = bearer(hub, REGION, "region-admin")
    before = await record_count(hub.sessions)
    assert (await api.client.get("/admin/break-glass", headers=admin)).status_code == 200
    listed = await only_record(hub.sessions, AuditAction.PATIENT_QUERY, before)
    assert AuditEntity(f"Bundle/{event_id}", role="3") in listed.entities
    assert listed.patient == "p03"
    review = await api.client.post(f"/admin/break-glass/{event_id}/$review", headers=admin)
    assert review.status_code == 200, review.text
    record = await only_record(hub.sessions, AuditAction.BREAK_GLASS_REVIEWED)
    assert (record.patient, record.source_org) == ("p03", "sakura-day-service")
    assert record.detail["first_review"] is True
    assert REASON.encode() not in b"".join(r.to_bytes() for r in await audit_records(hub.sessions))


# -- tokens and clients ---------------------------------------------------------------------


async def test_token_requests_are_issued_or_refused_records(api) -> None:
    hub = api.hub
    await load_region(hub)
    private = ec_key()
    client_id = await register(api, private)
    url = await token_url(api)
    granted = await ask(api, assertion(private, client_id, url, "k1"))
    assert granted.status_code == 200, granted.text
    jti = jwt.decode(granted.json()["access_token"], options={"verify_signature": False})["jti"]
    record = await only_record(hub.sessions, AuditAction.TOKEN_ISSUED)
    assert record.agent == AuditAgent(HOSPITAL, "system", client=client_id, token=jti,
                                      network="127.0.0.1")  # fmt: skip
    assert record.entities == (AuditEntity(f"Client/{client_id}", role="4"),)

    refused = await ask(api, assertion(private, client_id, url, "k1"), grant_type="password")
    assert refused.status_code == 400
    record = await only_record(hub.sessions, AuditAction.TOKEN_REFUSED)
    assert record.reason == "unsupported_grant_type" and record.agent.org == "unknown"
    assert record.outcome == AuditOutcome.MINOR_FAILURE

    # Refused after the assertion verified: the client is named.
    scope = await ask(api, assertion(private, client_id, url, "k1"), scope="patient/*.read")
    assert scope.status_code == 400
    [_, second] = await audit_records(hub.sessions, AuditAction.TOKEN_REFUSED)
    assert (second.reason, second.agent.client) == ("invalid_scope", client_id)
    # Each made under a token of the client: its session is in the records of the token.
    headers_ = {"Authorization": f"Bearer {granted.json()['access_token']}"}
    before = await record_count(hub.sessions)
    assert (await api.client.get("/fhir/Communication", headers=headers_)).status_code == 200
    read = await only_record(hub.sessions, AuditAction.NOTIFICATION_LISTED, before)
    assert (read.agent.client, read.agent.token) == (client_id, jti)
    assert_session(read)


async def test_cli_commands_are_recorded_as_the_hub_cli(api, tmp_path: Path) -> None:
    hub = api.hub
    await load_region(hub)
    env = {"RENKEI_DATABASE_URL": hub.settings.resolved_database_url}
    data = hub.settings.data_dir
    cli_agent = AuditAgent(REGION, "system", client="hub:cli")

    def run(*args: str) -> str:
        result = run_cli(data, *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    token = run("token", "issue", "--org", PHARMACY, "--role", "member").strip()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    issued = await only_record(hub.sessions, AuditAction.TOKEN_ISSUED)
    assert issued.agent == cli_agent
    assert issued.detail["issued_token"] == jti and issued.detail["subject_org"] == PHARMACY

    run("token", "revoke", jti)
    revoked = await only_record(hub.sessions, AuditAction.TOKEN_REVOKED)
    assert revoked.detail == {"revoked_token": jti} and revoked.agent == cli_agent

    from tests.test_clients import jwks_of

    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks_of(ec_key(), "k1")))
    client_id = run("client", "add", "--org", HOSPITAL, "--name", "電子カルテ",
                    "--jwks", str(jwks_file)).strip().splitlines()[-1]  # fmt: skip
    added = await only_record(hub.sessions, AuditAction.CLIENT_ADDED)
    assert added.entities == (AuditEntity(f"Client/{client_id}"),)
    run("client", "revoke", client_id)
    assert (await only_record(hub.sessions, AuditAction.CLIENT_REVOKED)).entities == (
        AuditEntity(f"Client/{client_id}"),
    )

    run("keys", "rotate-signing")
    signing = await only_record(hub.sessions, AuditAction.KEYS_ROTATED)
    assert signing.detail["key"] == "token-signing" and signing.agent == cli_agent
    run("keys", "rotate")
    kek = (await audit_records(hub.sessions, AuditAction.KEYS_ROTATED))[1]
    assert kek.detail["key"] == "key-encryption" and kek.detail["rewrapped"] >= 1

    run("patient", "forget", "p05", "--yes")
    forgotten = await only_record(hub.sessions, AuditAction.PATIENT_FORGOTTEN)
    assert forgotten.patient == "p05" and forgotten.agent == cli_agent
    assert forgotten.entities == (AuditEntity("Patient/p05", role="1"),)


# -- nothing personal, nothing without its action -------------------------------------------


async def test_a_rolled_back_action_leaves_no_record(api) -> None:
    from schemas.message import parse_message
    from services.intake.service import Submission, accept_many

    hub = api.hub
    await load_region(hub)
    parsed = parse_message(json.dumps(message(EventType.ADMISSION, "p01")).encode())
    async with hub.sessions() as session:
        # Accepted, flushed, then the transaction goes away uncommitted (a crash, a rollback).
        real_commit = session.commit

        async def crash() -> None:
            raise ConnectionError("the database went away")

        session.commit = crash  # type: ignore[method-assign]
        try:
            await accept_many(session, [Submission(parsed, HOSPITAL)])
        except ConnectionError:
            await session.rollback()
        session.commit = real_commit  # type: ignore[method-assign]
    assert await audit_records(hub.sessions) == []


async def test_no_personal_data_in_any_record(api) -> None:
    hub = api.hub
    await load_region(hub)
    await accept(hub, api.client, message(EventType.ADMISSION, "p01"))
    await route_all(hub)
    admin, _ = bearer(hub, REGION, "region-admin")
    pharmacy, _ = bearer(hub, PHARMACY)
    row = PATIENTS[0]
    await api.client.get("/fhir/CareTeam", params={"patient": "Patient/p01"}, headers=admin)
    await api.client.get("/fhir/Patient", params={"identifier": row[6]}, headers=admin)
    await api.client.get("/fhir/Patient/p01", headers=admin)
    await api.client.get("/fhir/Communication", headers=pharmacy)
    await api.client.post(
        "/fhir/$process-message", json=message(EventType.ADMISSION, "p01"), headers=pharmacy
    )  # fmt: skip (refused: not the sender)
    everything = b"\n".join(r.to_bytes() for r in await audit_records(hub.sessions))
    assert len(await audit_records(hub.sessions)) >= 8
    for secret in (*SECRETS, row[1], row[2], row[3], row[6], row[7], row[5]):
        assert secret.encode() not in everything, secret


async def test_every_record_has_a_fresh_id(api) -> None:
    hub = api.hub
    await load_region(hub)
    for _ in range(3):
        await accept(hub, api.client, message(EventType.ADMISSION, "p01", f"mh-{uuid.uuid4()}"))
    ids = [r.id for r in await audit_records(hub.sessions)]
    assert len(ids) == len(set(ids)) == 3


async def test_the_router_records_its_decisions_in_its_batch(live_api) -> None:
    """The real router (broker, relay, router): one decision record per recipient, its agent
    the region office's hub:router."""
    hub = live_api.hub
    await load_region(hub)
    event_id = await accept(hub, live_api.client, message(EventType.ADMISSION, "p02"))
    await wait_routed(hub, [event_id])
    decisions = [
        r
        for r in await audit_records(hub.sessions)
        if r.action in (AuditAction.ROUTING_DELIVERED, AuditAction.ROUTING_WITHHELD)
    ]
    notified = await notifications_of(hub, event_id)
    withheld = await suppressed_of(hub, event_id)
    assert len(decisions) == len(notified) + len(withheld) > 0
    assert {r.detail["recipient"] for r in decisions} == set(notified) | set(withheld)
    assert all(r.agent == AuditAgent(REGION, "system", client="hub:router") for r in decisions)


async def test_a_caller_the_route_rules_refuse_is_recorded(api) -> None:
    hub = api.hub
    await load_region(hub)
    auditor, jti = bearer(hub, HOSPITAL, "auditor")
    bundle = message(EventType.ADMISSION, "p01")
    posted = await api.client.post("/fhir/$process-message", json=bundle, headers=auditor)
    assert posted.status_code == 403
    record = await only_record(hub.sessions, AuditAction.MESSAGE_REFUSED)
    assert (record.agent.role, record.agent.token, record.source_org) == ("auditor", jti, HOSPITAL)
    assert record.reason.startswith("this needs the role")
    assert record.detail["route"] == "POST /fhir/$process-message"
    member, _ = bearer(hub, PHARMACY)
    assert (await api.client.get("/admin/break-glass", headers=member)).status_code == 403
    refused = await only_record(hub.sessions, AuditAction.ACCESS_REFUSED)
    assert refused.agent.org == PHARMACY and refused.outcome == AuditOutcome.MINOR_FAILURE
    assert refused.detail["route"] == "GET /admin/break-glass"
    assert len(await audit_records(hub.sessions)) == 2
