"""Audit records leave with the action's transaction: one sealed outbox row on renkei.audit,
in the audit lane, keyed by the record id, readable only with the hub's key and this AAD."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from producers.models import OutboxRecord
from renkei.crypto import CryptoError, keyring_of
from schemas.audit import (
    AuditAction,
    AuditEntity,
    AuditOutcome,
    AuditRecord,
    audit_record_aad,
    batch_from_bytes,
)
from schemas.topics import AUDIT_TOPIC, LANE_AUDIT, lane_of
from services.audit.emit import emit, hub_agent, principal_agent
from services.auth.service import Principal, Role


async def test_an_emitted_record_is_one_sealed_outbox_row_committed_with_the_action(
    db_sessions,
) -> None:
    principal = Principal("clinic-a", Role.MEMBER, practitioner_id="pr-1", token_id="jti-1")
    async with db_sessions() as session:
        record = await emit(
            session,
            principal_agent(principal, network="10.0.0.9"),
            AuditAction.PATIENT_READ,
            patient="p1",
            entities=[AuditEntity("Patient/p1", role="1")],
        )
        await session.rollback()  # the action did not commit: neither does its record
    async with db_sessions() as session:
        assert (await session.scalars(select(OutboxRecord))).all() == []
        record = await emit(
            session,
            hub_agent("region", "hub:router"),
            AuditAction.ROUTING_WITHHELD,
            outcome=AuditOutcome.MINOR_FAILURE,
            patient="p1",
            source_org="hospital-b",
            reason="consent: deny for this organization",
        )
        await session.commit()
    async with db_sessions() as session:
        (row,) = (await session.scalars(select(OutboxRecord))).all()
        assert (row.topic, row.key, row.lane, row.event_id) == (
            AUDIT_TOPIC,
            record.id,
            LANE_AUDIT,
            None,
        )
        assert b"consent" not in row.value and b"p1" not in row.value
        plain = await keyring_of(session).open(session, row.value, audit_record_aad(record.id))
        assert batch_from_bytes(plain) == [record]
        with pytest.raises(CryptoError):
            await keyring_of(session).open(session, row.value, audit_record_aad("another"))
    assert lane_of(AUDIT_TOPIC) == LANE_AUDIT


def test_the_canonical_form_is_stable_and_round_trips() -> None:
    principal = Principal("clinic-a", Role.SYSTEM, client_id="c1")
    from services.audit.emit import new_record

    record = new_record(
        principal_agent(principal),
        AuditAction.MESSAGE_REFUSED,
        outcome=AuditOutcome.MINOR_FAILURE,
        reason="Bundle.entry[0]: not a MessageHeader",
        entities=[AuditEntity("Bundle/m1", role="3"), AuditEntity("Patient/p", role="1")],
    )
    assert AuditRecord.from_bytes(record.to_bytes()) == record
    assert record.to_bytes() == AuditRecord.from_bytes(record.to_bytes()).to_bytes()
    assert record.to_bytes().startswith(b'{"action":"message.refused","agent":{')


async def test_append_chains_records_once_each_in_order(db_sessions) -> None:
    from services.audit.chain import append, chain_head, link_hash
    from services.audit.emit import new_record
    from services.audit.models import GENESIS_HASH, AuditRecordRow

    agent = hub_agent("region", "hub:router")
    records = [new_record(agent, AuditAction.ROUTING_DELIVERED, patient="p1") for _ in range(3)]
    async with db_sessions() as session:
        await append(session, records[:2])
        await session.commit()
    async with db_sessions() as session:
        added = await append(session, records)  # the first two again: stored once
        await session.commit()
        assert [r.id for r in added] == [records[2].id]
        rows = (await session.scalars(select(AuditRecordRow).order_by(AuditRecordRow.seq))).all()
        assert [r.seq for r in rows] == [1, 2, 3]
        prev = GENESIS_HASH
        for row, record in zip(rows, records, strict=True):
            assert row.document == record.to_bytes() and row.prev_hash == prev
            assert row.hash == link_hash(prev, row.document)
            prev = row.hash
        assert await chain_head(session) == (3, prev)
