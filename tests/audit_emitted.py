"""The audit records emitted so far, as tests see them.

Read from the outbox (topic renkei.audit), opened with the hub's key and ``audit_record_aad``:
what was committed, whether or not an audit writer has stored it yet. (Once the audit writer's
table is on main this may read the stored records instead.)
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from producers.models import OutboxRecord
from renkei.crypto import keyring_of
from schemas.audit import AuditAction, AuditRecord, audit_record_aad, batch_from_bytes
from schemas.topics import AUDIT_TOPIC


async def audit_records(
    sessions: async_sessionmaker[AsyncSession], action: AuditAction | None = None
) -> list[AuditRecord]:
    """Every committed audit record (in the order written), or those of ``action``."""
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(OutboxRecord)
                .where(OutboxRecord.topic == AUDIT_TOPIC)
                .order_by(OutboxRecord.id)
            )
        ).all()
        keyring = keyring_of(session)
        records = [
            record
            for row in rows
            for record in batch_from_bytes(
                await keyring.open(session, row.value, audit_record_aad(row.key))
            )
        ]
    return [r for r in records if action is None or r.action == action]


async def only_record(
    sessions: async_sessionmaker[AsyncSession], action: AuditAction, since: int = 0
) -> AuditRecord:
    """The one record of ``action`` after the first ``since`` records (fails if not one)."""
    records = [r for r in (await audit_records(sessions))[since:] if r.action == action]
    assert len(records) == 1, [str(r.action) for r in records]
    return records[0]


async def record_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    return len(await audit_records(sessions))
