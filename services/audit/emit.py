"""Emitting audit records: one outbox row on ``renkei.audit`` in the caller's transaction.

The record exists exactly when the action committed (the same transaction), costs the action
one more row and no round trip to a broker, and is chained and stored later by the audit writer
(consumers.audit). All the records of one transaction travel as one row (``emit_records``);
its key is the first record's id: records need no order among themselves (the writer's chain
gives them one), and the relay can tell which rows the writer has not stored yet (re-driven
after a broker restart, like unrouted events).

Call it with what the action knew::

    emit(session, principal_agent(principal), AuditAction.PATIENT_READ,
         patient="p1", entities=[AuditEntity("Patient/p1", role="1")])
    await session.commit()
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from producers.models import OutboxRecord, encode_headers
from renkei.crypto import DataKeyRef, Keyring, keyring_of
from renkei.db import utcnow
from schemas.audit import (
    AuditAction,
    AuditAgent,
    AuditEntity,
    AuditOutcome,
    AuditRecord,
    audit_record_aad,
    batch_bytes,
    batch_headers,
)
from schemas.topics import AUDIT_TOPIC, LANE_AUDIT
from services.auth.service import Principal

# The hub's own workers, as agents (their organization is the region office's).
HUB_ROUTER = "hub:router"
HUB_CLI = "hub:cli"
HUB_AUDIT = "hub:audit-writer"


def principal_agent(principal: Principal, network: str | None = None) -> AuditAgent:
    return AuditAgent(
        org=principal.org_id,
        role=str(principal.role),
        practitioner=principal.practitioner_id,
        client=principal.client_id,
        token=principal.token_id,
        network=network,
    )


def hub_agent(region_org: str, worker: str) -> AuditAgent:
    """The hub acting on its own (the router deciding, the CLI on the host)."""
    return AuditAgent(org=region_org, role="system", client=worker)


def new_record(
    agent: AuditAgent,
    action: AuditAction,
    *,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    patient: str | None = None,
    source_org: str | None = None,
    entities: Iterable[AuditEntity] = (),
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    return AuditRecord(
        id=str(uuid.uuid4()),
        recorded=utcnow(),
        action=action,
        outcome=outcome,
        agent=agent,
        patient=patient,
        source_org=source_org,
        entities=tuple(entities),
        reason=reason,
        detail=detail or {},
    )


async def emit(
    session: AsyncSession,
    agent: AuditAgent,
    action: AuditAction,
    *,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    patient: str | None = None,
    source_org: str | None = None,
    entities: Iterable[AuditEntity] = (),
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Add one audit record to the session's transaction (the caller commits)."""
    record = new_record(
        agent,
        action,
        outcome=outcome,
        patient=patient,
        source_org=source_org,
        entities=entities,
        reason=reason,
        detail=detail,
    )
    await emit_records(session, [record])
    return record


async def emit_records(session: AsyncSession, records: list[AuditRecord]) -> None:
    """Several records at once (a batch of messages, a routing batch's decisions): one outbox
    row for all of them, so auditing costs a transaction one row whatever it did."""
    if not records:
        return
    keyring = keyring_of(session)
    key = await keyring.hub_key(session)
    session.add(outbox_row(keyring, key, records))


def outbox_row(keyring: Keyring, key: DataKeyRef, records: list[AuditRecord]) -> OutboxRecord:
    """The records sealed under the hub's data key (a patient forgotten keeps the trail), keyed
    by the first record's id: the writer stores a batch in one transaction, so the relay can
    tell a batch the writer has not stored by that one id."""
    first = records[0].id
    return OutboxRecord(
        event_id=None,
        topic=AUDIT_TOPIC,
        key=first,
        value=keyring.seal(key, batch_bytes(records), audit_record_aad(first)),
        headers=encode_headers(batch_headers(records, key.key_id)),
        created_at=records[0].recorded,
        lane=LANE_AUDIT,
    )
