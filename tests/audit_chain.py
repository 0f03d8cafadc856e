"""Helpers for the audit tests: records chained straight into a database, and the tampering
an intruder with the database file (or a superuser) could do once past the triggers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.audit import AuditAction, AuditRecord
from services.audit.chain import append
from services.audit.emit import hub_agent, new_record
from services.audit.models import AuditRecordRow
from services.audit.signing import Signer, add_checkpoint
from services.audit.verify import VerifyReport, verify_trail

TRIGGERS = {
    "sqlite": [
        f"DROP TRIGGER IF EXISTS {table}_{kind}"
        for table in ("audit_record", "audit_checkpoint", "audit_archive")
        for kind in ("no_update", "no_delete")
    ],
    "postgresql": [
        f"ALTER TABLE {table} DISABLE TRIGGER USER"
        for table in ("audit_record", "audit_checkpoint", "audit_archive")
    ],
}


def records(count: int, action: AuditAction = AuditAction.PATIENT_READ) -> list[AuditRecord]:
    agent = hub_agent("region-office", "hub:test")
    return [new_record(agent, action, patient=f"p{n % 7}") for n in range(count)]


async def chain(
    sessions: async_sessionmaker[AsyncSession],
    keys_dir: Path,
    count: int,
    *,
    checkpoint_every: int = 0,
    batch: int = 500,
) -> None:
    """``count`` records chained in batches, a signed checkpoint after every
    ``checkpoint_every`` records (0: none)."""
    signer = Signer(keys_dir)
    done = 0
    while done < count:
        step = min(batch, count - done, checkpoint_every or batch)
        async with sessions() as session:
            await append(session, records(step))
            await session.commit()
        done += step
        if checkpoint_every and done % checkpoint_every == 0:
            async with sessions() as session:
                await add_checkpoint(session, signer)
                await session.commit()


async def intrude(session: AsyncSession, *statements: str, **params) -> None:
    """Run SQL past the append-only triggers, as an intruder with the file or a superuser."""
    dialect = session.bind.dialect.name
    for statement in TRIGGERS[dialect]:
        await session.execute(text(statement))
    for statement in statements:
        await session.execute(text(statement), params)
    await session.commit()


async def verify(sessions, keys_dir: Path, archive_dir: Path, **kwargs) -> VerifyReport:
    async with sessions() as session:
        return await verify_trail(session, keys_dir, archive_dir, **kwargs)


async def stored_count(sessions) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(AuditRecordRow)) or 0
