"""Retention: records older than ``audit_retention_days`` move to an archive file.

``renkei audit archive`` writes the oldest live records (by the time the writer stored them)
to ``DATA_DIR/audit-archive/audit-<first seq>-<last seq>.ndjson`` (0600): one line per record
(seq, prev_hash, hash and the canonical document, exactly as chained), then a last line with
the cut's signed head (services.audit.signing.archive_document: range, both ends' hashes, the
SHA-256 of the record lines). In one transaction it then adds the ``audit_archive`` row (the
same head, signed), deletes the archived records (the append-only trigger lets through only
records such a row covers) and emits an ``audit.archived`` record. The live chain goes on
linking: its first record's prev_hash is the archive's last hash, and verify reads the files.

The chain head itself is never archived: the writer chains after it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import utcnow
from renkei.settings import Settings
from schemas.audit import AuditAction
from services.audit.emit import HUB_CLI, emit, hub_agent
from services.audit.models import AuditArchive, AuditRecordRow
from services.audit.signing import Signer, archive_document

CHUNK = 5000


@dataclass(frozen=True)
class ArchiveResult:
    archive_id: int
    first_seq: int
    last_seq: int
    path: Path


async def archive_old_records(
    session: AsyncSession, settings: Settings, *, now: datetime | None = None
) -> ArchiveResult | None:
    """Archive what is past retention (None when nothing is); commits."""
    cutoff = (now or utcnow()) - timedelta(days=settings.audit_retention_days)
    head = await session.scalar(select(func.max(AuditRecordRow.seq)))
    if head is None:
        return None
    last_seq = await session.scalar(
        select(func.max(AuditRecordRow.seq)).where(
            AuditRecordRow.stored_at < cutoff, AuditRecordRow.seq < head
        )
    )
    first_seq = await session.scalar(select(func.min(AuditRecordRow.seq)))
    if last_seq is None or first_seq is None or last_seq < first_seq:
        return None
    previous = await session.scalar(select(AuditArchive).order_by(AuditArchive.id.desc()).limit(1))
    folder = settings.audit_archive_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"audit-{first_seq:012d}-{last_seq:012d}.ndjson"
    path = folder / name
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    digest = hashlib.sha256()
    first_prev = last_hash = ""
    with os.fdopen(fd, "wb") as out:
        after = first_seq - 1
        while after < last_seq:
            rows = (
                await session.execute(
                    select(
                        AuditRecordRow.seq,
                        AuditRecordRow.prev_hash,
                        AuditRecordRow.hash,
                        AuditRecordRow.document,
                    )
                    .where(AuditRecordRow.seq > after, AuditRecordRow.seq <= last_seq)
                    .order_by(AuditRecordRow.seq)
                    .limit(CHUNK)
                )
            ).all()
            if not rows:
                break
            for row in rows:
                if not first_prev:
                    first_prev = row.prev_hash
                line = _line(row.seq, row.prev_hash, row.hash, row.document)
                digest.update(line)
                out.write(line)
                last_hash = row.hash
            after = rows[-1].seq
        archive = AuditArchive(
            id=(previous.id + 1) if previous is not None else 1,
            first_seq=first_seq,
            last_seq=last_seq,
            first_prev_hash=first_prev,
            last_hash=last_hash,
            file=name,
            file_sha256=digest.hexdigest(),
            created_at=utcnow(),
        )
        Signer(settings.keys_dir).sign(archive_document, archive)
        signed = json.loads(archive_document(archive))
        head_line = {"archive": signed, "signature": archive.signature}
        out.write(json.dumps(head_line, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)  # the file is whole before any record leaves the database
    session.add(archive)
    await session.flush()  # the row first: the delete trigger looks for it
    await session.execute(
        delete(AuditRecordRow)
        .where(AuditRecordRow.seq <= last_seq)
        .execution_options(synchronize_session=False)
    )
    await emit(
        session,
        hub_agent(settings.region_org, HUB_CLI),
        AuditAction.AUDIT_ARCHIVED,
        detail={
            "archive": archive.id,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "records": last_seq - first_seq + 1,
            "file": name,
        },
    )
    await session.commit()
    return ArchiveResult(archive.id, first_seq, last_seq, path)


def _line(seq: int, prev_hash: str, hash_: str, document: bytes) -> bytes:
    item = {"seq": seq, "prev_hash": prev_hash, "hash": hash_, "document": document.decode()}
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
