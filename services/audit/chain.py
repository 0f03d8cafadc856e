"""The hash chain: each stored record's SHA-256 covers the previous record's hash and its own
canonical document, so a changed, removed or inserted row breaks every link after it.

``append`` is the only way rows enter ``audit_record``. It gives the records the next sequence
numbers after the chain head; two writers appending at once collide on the primary key (the
same ``seq``) and one of them starts over, so the chain never forks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import utcnow
from schemas.audit import AuditRecord
from services.audit.models import GENESIS_HASH, AuditRecordRow


def link_hash(prev_hash: str, document: bytes) -> str:
    """hash(n) = SHA-256(hash(n-1) as 64 hex digits || canonical document of n)."""
    return hashlib.sha256(prev_hash.encode("ascii") + document).hexdigest()


def entity_refs(record: AuditRecord) -> str:
    refs = [e.reference for e in record.entities]
    return " " + " ".join(refs) + " " if refs else " "


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """The last record's seq and hash; (0, GENESIS_HASH) for an empty chain."""
    row = (
        await session.execute(
            select(AuditRecordRow.seq, AuditRecordRow.hash)
            .order_by(AuditRecordRow.seq.desc())
            .limit(1)
        )
    ).first()
    return (row.seq, row.hash) if row is not None else (0, GENESIS_HASH)


async def append(session: AsyncSession, records: Sequence[AuditRecord]) -> list[AuditRecordRow]:
    """Chain and add the records not stored yet (by id), in the order given; the caller
    commits. Returns the rows added."""
    if not records:
        return []
    ids = [r.id for r in records]
    stored = set(await session.scalars(select(AuditRecordRow.id).where(AuditRecordRow.id.in_(ids))))
    seq, prev = await chain_head(session)
    now = utcnow()
    rows: list[AuditRecordRow] = []
    for record in records:
        if record.id in stored:
            continue  # delivered twice (a redriven record): stored once
        stored.add(record.id)
        document = record.to_bytes()
        seq += 1
        digest = link_hash(prev, document)
        rows.append(
            AuditRecordRow(
                seq=seq,
                id=record.id,
                recorded=record.recorded,
                stored_at=now,
                action=str(record.action),
                outcome=str(record.outcome),
                agent_org=record.agent.org,
                agent_role=record.agent.role,
                agent_practitioner=record.agent.practitioner,
                agent_client=record.agent.client,
                patient_id=record.patient,
                source_org=record.source_org,
                entity_refs=entity_refs(record),
                document=document,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    session.add_all(rows)
    return rows
