"""A stored audit trail for the review tests: one record of each kind, at known times, stored
the way the audit writer stores them (services.audit.chain.append)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from zoneinfo import ZoneInfo

from schemas.audit import (
    AuditAction,
    AuditAgent,
    AuditEntity,
    AuditOutcome,
    AuditRecord,
)
from services.audit.chain import append
from services.audit.emit import HUB_ROUTER, hub_agent, new_record
from services.registry import service as registry
from tests.audit_emitted import audit_records

REGION = "region-office"
CLINIC = "clinic-a"
HOSPITAL = "hospital-b"
OTHER = "org-c"
TOKYO = ZoneInfo("Asia/Tokyo")


def at(day: str, time: str = "10:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{time}:00").replace(tzinfo=TOKYO)


def _nurse(network: str | None = "10.0.0.7") -> AuditAgent:
    return AuditAgent(CLINIC, "member", practitioner="pr-a1", token="jti-a1", network=network)


def _records() -> dict[str, AuditRecord]:
    router = hub_agent(REGION, HUB_ROUTER)
    hospital_client = AuditAgent(HOSPITAL, "system", client="client-h", token="jti-h")
    made = {
        "read": (at("2026-11-02"), new_record(
            _nurse(), AuditAction.PATIENT_READ, patient="p1",
            entities=[AuditEntity("Patient/p1", role="1")])),
        "query": (at("2026-11-03"), new_record(
            _nurse(), AuditAction.PATIENT_QUERY,
            entities=[AuditEntity("Patient", role="24", query="identifier,birthdate")])),
        "delivered": (at("2026-11-04"), new_record(
            router, AuditAction.ROUTING_DELIVERED, patient="p1", source_org=HOSPITAL,
            entities=[AuditEntity("Bundle/e1", role="3"), AuditEntity("Communication/n1"),
                      AuditEntity("Consent/c1")], reason="consent: permit")),
        "withheld": (at("2026-11-05"), new_record(
            router, AuditAction.ROUTING_WITHHELD, outcome=AuditOutcome.MINOR_FAILURE,
            patient="p2", source_org=HOSPITAL,
            entities=[AuditEntity("Bundle/e2", role="3"), AuditEntity("Consent/c2")],
            reason="consent: deny for this organization")),
        "break_glass": (at("2026-11-06"), new_record(
            router, AuditAction.ROUTING_BREAK_GLASS, patient="p3", source_org=HOSPITAL,
            entities=[AuditEntity("Bundle/e3", role="3"), AuditEntity("Communication/n3")],
            reason="break-glass")),
        "notification_read": (at("2026-11-07"), new_record(
            _nurse(), AuditAction.NOTIFICATION_READ, patient="p1", source_org=HOSPITAL,
            entities=[AuditEntity("Communication/n1")])),
        "consent_change": (at("2026-11-08"), new_record(
            AuditAgent(REGION, "region-admin", practitioner="pr-office", token="jti-r"),
            AuditAction.RESOURCE_UPDATED, patient="p1",
            entities=[AuditEntity("Consent/c1")])),
        "token": (at("2026-11-09"), new_record(
            hospital_client, AuditAction.TOKEN_ISSUED, detail={"lifetime_seconds": 300})),
        "signin_failed": (at("2026-11-10"), new_record(
            AuditAgent(OTHER, "member", network="192.0.2.9"), AuditAction.SIGNIN_FAILED,
            outcome=AuditOutcome.MINOR_FAILURE, reason="the bearer token did not verify")),
        "message": (at("2026-12-01"), new_record(
            hospital_client, AuditAction.MESSAGE_ACCEPTED, patient="p1",
            entities=[AuditEntity("Bundle/e1", role="3")])),
        "other": (at("2026-12-02"), new_record(
            AuditAgent(OTHER, "member", practitioner="pr-c1"), AuditAction.PATIENT_READ,
            patient="p9", entities=[AuditEntity("Patient/p9", role="1")])),
    }  # fmt: skip
    return {
        name: dataclasses.replace(record, recorded=when) for name, (when, record) in made.items()
    }


async def store_trail(hub) -> dict[str, AuditRecord]:
    """The organizations (tokens need them registered) and the trail, stored and committed."""
    records = _records()
    async with hub.sessions() as session:
        for org in (REGION, CLINIC, HOSPITAL, OTHER):
            body = {"resourceType": "Organization", "id": org, "name": org}
            await registry.write(session, "Organization", body, org)
        await append(session, list(records.values()))
        await session.commit()
    return records


async def emitted(hub, action: AuditAction | None = None) -> list[AuditRecord]:
    """The audit records waiting in the outbox (no broker in these tests: they stay there)."""
    return await audit_records(hub.sessions, action)
