"""``renkei audit verify``: walk the hash chain, its archives and its signed checkpoints.

What it checks, and how each break is named (by seq, checkpoint or archive number only,
never with what a record says):

- the records: seq 1, 2, 3 ... without gaps (``records missing``), each ``prev_hash`` the
  hash of the record before (``broken link``: something before it was removed, inserted or
  changed), each ``hash`` SHA-256 over the previous hash and the stored document (``changed``),
  and the search columns equal to the document's fields (``changed``);
- the archives (retention cuts): signed, continuous with each other and with the live chain
  (the first live record's ``prev_hash`` is the last archive's ``last_hash``), and their files
  hold exactly the records they name, linked the same way;
- the checkpoints: each signed by a known kid, naming the previous checkpoint and its
  signature, and the hash it signed equal to the chain's hash at that seq (the end of the chain
  removed, or records rewritten consistently, show here).

Streamed in chunks of ``CHUNK`` records by seq (keyset paging on the primary key), so memory
stays flat and 100,000 records take seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit.chain import link_hash
from services.audit.models import GENESIS_HASH, AuditArchive, AuditCheckpoint, AuditRecordRow
from services.audit.signing import (
    archive_document,
    checkpoint_document,
    known_signers,
    signature_valid,
)

CHUNK = 5000
MOST_PROBLEMS = 50  # named one by one; beyond, counted
COLUMNS = (
    AuditRecordRow.seq,
    AuditRecordRow.id,
    AuditRecordRow.recorded,
    AuditRecordRow.action,
    AuditRecordRow.outcome,
    AuditRecordRow.agent_org,
    AuditRecordRow.agent_role,
    AuditRecordRow.agent_practitioner,
    AuditRecordRow.agent_client,
    AuditRecordRow.patient_id,
    AuditRecordRow.source_org,
    AuditRecordRow.entity_refs,
    AuditRecordRow.document,
    AuditRecordRow.prev_hash,
    AuditRecordRow.hash,
)


@dataclass(frozen=True)
class Problem:
    where: str  # "seq 42", "checkpoint 3", "archive 1"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    records: int = 0  # records walked (live and archived)
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    archives: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0  # beyond MOST_PROBLEMS

    @property
    def intact(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str) -> None:
        if len(self.problems) < MOST_PROBLEMS:
            self.problems.append(Problem(where, what))
        else:
            self.more_problems += 1


def _columns_of(document: dict[str, Any]) -> dict[str, Any]:
    """What the search columns must hold for this document (services.audit.chain.append)."""
    agent = document.get("agent", {})
    refs = [e.get("reference") for e in document.get("entities", ())]
    return {
        "id": document.get("id"),
        "recorded": datetime.fromisoformat(document["recorded"]),
        "action": document.get("action"),
        "outcome": document.get("outcome"),
        "agent_org": agent.get("org"),
        "agent_role": agent.get("role"),
        "agent_practitioner": agent.get("practitioner"),
        "agent_client": agent.get("client"),
        "patient_id": document.get("patient"),
        "source_org": document.get("source_org"),
        "entity_refs": " " + " ".join(refs) + " " if refs else " ",
    }


class _Walk:
    """The chain walked record by record, in seq order, from the first record given."""

    def __init__(
        self,
        report: VerifyReport,
        checkpoints: dict[int, list[AuditCheckpoint]],
        seq: int | None,
        prev: str | None,
    ) -> None:
        self.report = report
        self.checkpoints = checkpoints
        self.expected = seq  # the next seq; None: whatever the first record has
        self.prev = prev  # the hash the next record must link to; None: its own prev_hash
        self.checked_seqs: set[int] = set()

    def record(
        self, seq: int, prev_hash: str, stored_hash: str, document: bytes, row: Any = None
    ) -> None:
        report = self.report
        where = f"seq {seq}"
        gap = False
        if self.expected is not None and seq != self.expected:
            if seq > self.expected:
                missing = f"seq {self.expected}" + (
                    f"..{seq - 1}" if seq - 1 > self.expected else ""
                )
                report.add(where, f"record(s) missing before it ({missing})")
            else:
                report.add(where, "record out of order (seq repeated)")
            gap = True
        if self.prev is not None and prev_hash != self.prev and not gap:
            report.add(
                where,
                "broken link: its prev_hash is not the hash of the record before it "
                "(a record was removed, inserted or changed there)",
            )
        actual = link_hash(prev_hash, document)
        if actual != stored_hash:
            report.add(where, "record changed: its hash does not cover its document")
        elif row is not None:
            self._columns(where, row, document)
        for checkpoint in self.checkpoints.get(seq, ()):
            self.checked_seqs.add(checkpoint.id)
            if checkpoint.hash != actual:
                report.add(
                    f"checkpoint {checkpoint.id}",
                    f"the hash it signed at seq {seq} is not the chain's hash there "
                    "(records up to it were changed, removed or inserted)",
                )
        report.records += 1
        report.first_seq = seq if report.first_seq is None else report.first_seq
        report.last_seq = seq
        self.expected = seq + 1
        # A changed record is named once: the next one is checked against the hash it was
        # chained to, so one change does not make every later link look broken.
        self.prev = stored_hash

    def _columns(self, where: str, row: Any, document: bytes) -> None:
        try:
            wanted = _columns_of(json.loads(document))
        except (ValueError, KeyError, TypeError):
            self.report.add(where, "record changed: its document is not a readable record")
            return
        for name, value in wanted.items():
            if getattr(row, name) != value:
                self.report.add(where, f"record changed: column {name} differs from the document")
                return


async def verify_trail(
    session: AsyncSession,
    keys_dir: Path,
    archive_dir: Path,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Walk everything (or, with ``since``, from the last checkpoint before it) and report.

    ``progress(done, total)`` is called every chunk."""
    report = VerifyReport()
    keys = known_signers(keys_dir)
    checkpoints = list(await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)))
    archives = list(await session.scalars(select(AuditArchive).order_by(AuditArchive.id)))
    by_seq = _check_checkpoints(report, keys, checkpoints)
    report.checkpoints = len(checkpoints)
    report.archives = len(archives)

    live_first = await session.scalar(select(func.min(AuditRecordRow.seq)))
    start_seq, start_prev = _check_archive_rows(report, keys, archives)
    # Where the walk begins: the live chain's first record, or with --since the last
    # checkpoint before the first record recorded since then (its signed hash is the anchor).
    walk_from, walk_prev = start_seq, start_prev
    if since is not None and live_first is not None:
        since_seq = await session.scalar(
            select(func.min(AuditRecordRow.seq)).where(AuditRecordRow.recorded >= since)
        )
        if since_seq is None:
            since_seq = (await session.scalar(select(func.max(AuditRecordRow.seq))) or 0) + 1
        anchors = [c for c in checkpoints if live_first <= c.seq < since_seq]
        if anchors:
            walk_from, walk_prev = anchors[-1].seq, None
    total = await session.scalar(
        select(func.count()).select_from(AuditRecordRow).where(AuditRecordRow.seq >= walk_from)
    )
    walk = _Walk(report, by_seq, walk_from, walk_prev)
    for archive in archives:
        if since is None or archive.last_seq >= walk_from:
            _walk_archive(report, archive_dir, archive, by_seq)
    live_walked = 0
    after = walk_from - 1
    while True:
        rows = (
            await session.execute(
                select(*COLUMNS)
                .where(AuditRecordRow.seq > after)
                .order_by(AuditRecordRow.seq)
                .limit(CHUNK)
            )
        ).all()
        if not rows:
            break
        for row in rows:
            walk.record(row.seq, row.prev_hash, row.hash, row.document, row)
        after = rows[-1].seq
        live_walked += len(rows)
        if progress is not None:
            progress(live_walked, total or 0)
    live_last = await session.scalar(select(func.max(AuditRecordRow.seq)))
    head = max(live_last or 0, archives[-1].last_seq if archives else 0)
    for checkpoint in checkpoints:
        if checkpoint.seq > head:
            report.add(
                f"checkpoint {checkpoint.id}",
                f"it signed seq {checkpoint.seq} but the chain ends at seq {head} "
                "(records removed at its end)",
            )
    return report


def _check_checkpoints(
    report: VerifyReport, keys: dict, checkpoints: list[AuditCheckpoint]
) -> dict[int, list[AuditCheckpoint]]:
    by_seq: dict[int, list[AuditCheckpoint]] = defaultdict(list)
    previous: AuditCheckpoint | None = None
    for checkpoint in checkpoints:
        where = f"checkpoint {checkpoint.id}"
        if not signature_valid(
            keys, checkpoint.kid, checkpoint.signature, checkpoint_document(checkpoint)
        ):
            unknown = f"signed by unknown key {checkpoint.kid}"
            report.add(where, "bad signature" if checkpoint.kid in keys else unknown)
        expected_id = previous.id + 1 if previous is not None else 1
        if checkpoint.id != expected_id:
            report.add(where, f"checkpoint(s) missing before it (expected {expected_id})")
        if previous is not None and (
            checkpoint.previous_id != previous.id
            or checkpoint.previous_signature != previous.signature
        ):
            report.add(where, f"does not name checkpoint {previous.id} as its previous one")
        if previous is None and checkpoint.previous_id is not None and checkpoint.id == 1:
            report.add(where, "names a previous checkpoint but is the first")
        if previous is not None and checkpoint.seq < previous.seq:
            report.add(where, "signs an earlier seq than the checkpoint before it")
        by_seq[checkpoint.seq].append(checkpoint)
        previous = checkpoint
    return by_seq


def _check_archive_rows(
    report: VerifyReport, keys: dict, archives: list[AuditArchive]
) -> tuple[int, str]:
    """The cuts' signatures and continuity; returns where the live chain must start."""
    seq, prev = 1, GENESIS_HASH
    for archive in archives:
        where = f"archive {archive.id}"
        if not signature_valid(keys, archive.kid, archive.signature, archive_document(archive)):
            unknown = f"signed by unknown key {archive.kid}"
            report.add(where, "bad signature" if archive.kid in keys else unknown)
        if archive.first_seq != seq or archive.first_prev_hash != prev:
            report.add(where, f"does not continue the chain at seq {seq}")
        seq, prev = archive.last_seq + 1, archive.last_hash
    return seq, prev


def _walk_archive(
    report: VerifyReport,
    archive_dir: Path,
    archive: AuditArchive,
    checkpoints: dict[int, list[AuditCheckpoint]],
) -> None:
    where = f"archive {archive.id}"
    path = archive_dir / archive.file
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError:
        report.add(where, f"archive file {archive.file} missing or unreadable")
        return
    if not lines:
        report.add(where, f"archive file {archive.file} is empty")
        return
    body, trailer = lines[:-1], lines[-1]
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    if digest != archive.file_sha256:
        report.add(where, f"archive file {archive.file} changed (its SHA-256 differs)")
    try:
        head = json.loads(trailer)
        if (
            head.get("archive") != json.loads(archive_document(archive))
            or head.get("signature") != archive.signature
        ):
            report.add(where, f"archive file {archive.file}: its signed head differs")
    except ValueError:
        report.add(where, f"archive file {archive.file}: no signed head")
    walk = _Walk(report, checkpoints, archive.first_seq, archive.first_prev_hash)
    for number, line in enumerate(body, start=1):
        try:
            item = json.loads(line)
            walk.record(
                item["seq"], item["prev_hash"], item["hash"], item["document"].encode("utf-8")
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            report.add(where, f"line {number} of {archive.file} is not an archived record")
    if walk.expected != archive.last_seq + 1 or walk.prev != archive.last_hash:
        report.add(where, f"archive file {archive.file} does not end at seq {archive.last_seq}")
