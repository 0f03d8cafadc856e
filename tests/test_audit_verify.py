"""``renkei audit verify``: an intact trail passes; a changed, removed or inserted record, a
bad or missing checkpoint, and an archive that does not join are each named by seq or number.
The append-only triggers refuse UPDATE and DELETE from the application on both databases."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from producers.models import OutboxRecord
from renkei.crypto import keyring_of
from renkei.db import utcnow
from renkei.settings import Settings
from schemas.audit import AuditAction, audit_record_aad, batch_from_bytes
from services.audit.archive import archive_old_records
from services.audit.models import AuditArchive, AuditCheckpoint, AuditRecordRow
from tests.audit_chain import chain, intrude, stored_count, verify


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "var" / "keys", tmp_path / "var" / "audit-archive"


def wheres(report) -> list[str]:
    return [p.where for p in report.problems]


async def test_an_intact_trail_passes_and_a_changed_document_is_named(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 50, checkpoint_every=20)
    report = await verify(db_sessions, keys, archive)
    assert report.intact, report.problems
    assert (report.records, report.first_seq, report.last_seq, report.checkpoints) == (
        50, 1, 50, 2,
    )  # fmt: skip
    async with db_sessions() as session:
        row = await session.get(AuditRecordRow, 17)
        forged = json.loads(row.document)
        forged["outcome"] = "8"
        await intrude(
            session,
            "UPDATE audit_record SET document = :doc WHERE seq = 17",
            doc=json.dumps(forged, sort_keys=True, separators=(",", ":")).encode(),
        )
    report = await verify(db_sessions, keys, archive)
    assert wheres(report) == ["seq 17"]  # named once, not at every later link
    assert "changed" in report.problems[0].what


async def test_a_search_column_that_differs_from_the_document_is_named(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 10)
    async with db_sessions() as session:
        await intrude(session, "UPDATE audit_record SET patient_id = 'someone' WHERE seq = 4")
    report = await verify(db_sessions, keys, archive)
    assert wheres(report) == ["seq 4"]
    assert "patient_id" in report.problems[0].what


async def test_a_deleted_record_is_named_as_missing(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 30, checkpoint_every=30)
    async with db_sessions() as session:
        await intrude(session, "DELETE FROM audit_record WHERE seq = 12")
    report = await verify(db_sessions, keys, archive)
    assert report.problems[0].where == "seq 13"
    assert "missing" in report.problems[0].what and "seq 12" in report.problems[0].what


async def test_records_removed_at_the_end_are_named_by_the_checkpoint(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 30, checkpoint_every=30)
    async with db_sessions() as session:
        await intrude(session, "DELETE FROM audit_record WHERE seq > 25")
    report = await verify(db_sessions, keys, archive)
    assert wheres(report) == ["checkpoint 1"]
    assert "ends at seq 25" in report.problems[0].what


async def test_an_inserted_record_breaks_the_link_after_it(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 10)
    # A forged record slipped in after seq 5, correctly hashed over seq 5, the rest renumbered.
    from services.audit.chain import link_hash
    from tests.audit_chain import records

    async with db_sessions() as session:
        row5 = await session.get(AuditRecordRow, 5)
        fake = records(1)[0]
        forged = fake.to_bytes()
        statements = [
            f"UPDATE audit_record SET seq = {n + 1} WHERE seq = {n}" for n in range(10, 5, -1)
        ]
        await intrude(session, *statements)
    async with db_sessions() as session:
        row = AuditRecordRow(
            seq=6, id=fake.id, recorded=fake.recorded, stored_at=utcnow(), action=fake.action,
            outcome=fake.outcome, agent_org=fake.agent.org, agent_role=fake.agent.role,
            agent_client=fake.agent.client, patient_id=fake.patient, entity_refs=" ",
            document=forged, prev_hash=row5.hash, hash=link_hash(row5.hash, forged),
        )  # fmt: skip
        session.add(row)
        await session.commit()
    report = await verify(db_sessions, keys, archive)
    assert report.problems[0].where == "seq 7"
    assert "broken link" in report.problems[0].what


async def test_a_bad_checkpoint_signature_and_a_broken_checkpoint_chain_are_named(
    db_sessions, tmp_path
):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 30, checkpoint_every=10)
    async with db_sessions() as session:
        second = await session.get(AuditCheckpoint, 2)
        await intrude(
            session,
            "UPDATE audit_checkpoint SET signature = :sig WHERE id = 2",
            sig=second.signature[:-4]
            + ("AAAA" if not second.signature.endswith("AAAA") else "BBBB"),
        )
    report = await verify(db_sessions, keys, archive)
    assert report.problems[0].where == "checkpoint 2"
    assert report.problems[0].what == "bad signature"
    # The next checkpoint named the real signature: the checkpoints' own chain is broken.
    assert "checkpoint 3" in wheres(report)


async def test_archive_then_verify_passes_across_the_cut(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    settings = Settings(data_dir=tmp_path / "var", audit_retention_days=30)
    await chain(db_sessions, keys, 40, checkpoint_every=10)
    async with db_sessions() as session:
        # Nothing is old enough yet.
        assert await archive_old_records(session, settings) is None
        result = await archive_old_records(session, settings, now=utcnow() + timedelta(days=31))
    assert result is not None and (result.first_seq, result.last_seq) == (1, 39)  # head stays
    assert (result.path.stat().st_mode & 0o777) == 0o600
    assert await stored_count(db_sessions) == 1
    report = await verify(db_sessions, keys, archive)
    assert report.intact, report.problems
    assert (report.records, report.archives) == (40, 1)
    # The cut is itself audited: one audit.archived record on its way through the outbox.
    async with db_sessions() as session:
        (row,) = (await session.scalars(select(OutboxRecord))).all()
        plain = await keyring_of(session).open(session, row.value, audit_record_aad(row.key))
        (emitted,) = batch_from_bytes(plain)
    assert emitted.action == AuditAction.AUDIT_ARCHIVED
    assert (emitted.detail["first_seq"], emitted.detail["last_seq"]) == (1, 39)
    # The trail goes on after the cut, and a second cut joins the first.
    await chain(db_sessions, keys, 5, checkpoint_every=5)
    async with db_sessions() as session:
        second = await archive_old_records(session, settings, now=utcnow() + timedelta(days=31))
        assert second is not None and (second.first_seq, second.last_seq) == (40, 44)
        archived = (await session.scalars(select(AuditArchive.last_seq))).all()
        assert archived == [39, 44]
    report = await verify(db_sessions, keys, archive)
    assert report.intact, report.problems
    # A changed archive file is named.
    lines = result.path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"patient.read", b"patient.query")
    result.path.write_bytes(b"".join(lines))
    report = await verify(db_sessions, keys, archive)
    assert not report.intact
    assert report.problems[0].where == "archive 1"
    assert "seq 4" in wheres(report)


async def test_the_application_cannot_update_or_delete_audit_rows(db_sessions, tmp_path):
    keys, _archive = dirs(tmp_path)
    await chain(db_sessions, keys, 5, checkpoint_every=5)
    refused = [
        update(AuditRecordRow).where(AuditRecordRow.seq == 2).values(outcome="8"),
        text("DELETE FROM audit_record WHERE seq = 5"),
        text("DELETE FROM audit_record"),
        text("UPDATE audit_checkpoint SET seq = 1"),
        text("DELETE FROM audit_checkpoint"),
    ]
    async with db_sessions() as session:
        if session.bind.dialect.name == "postgresql":
            refused.append(text("TRUNCATE audit_record"))
    for statement in refused:
        async with db_sessions() as session:
            with pytest.raises(DBAPIError, match="append-only"):
                await session.execute(statement)
                await session.commit()
    assert await stored_count(db_sessions) == 5
    report = await verify(db_sessions, keys, _archive)
    assert report.intact, report.problems


def test_the_cli_exits_non_zero_naming_the_broken_record(tmp_path) -> None:
    import asyncio

    from renkei.crypto import Keyring
    from renkei.db import create_engine, migrate, session_factory
    from tests.test_cli import run_cli

    async def write(tamper: bool) -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'renkei.sqlite3'}")
        await migrate(engine)
        sessions = session_factory(engine, Keyring.local(tmp_path / "keys"))
        if tamper:
            async with sessions() as session:
                await intrude(session, "UPDATE audit_record SET outcome = '8' WHERE seq = 3")
        else:
            await chain(sessions, tmp_path / "keys", 10, checkpoint_every=5)
        await engine.dispose()

    asyncio.run(write(tamper=False))
    intact = run_cli(tmp_path, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "intact: 10 records (seq 1..10), 2 checkpoints" in intact.stdout
    asyncio.run(write(tamper=True))
    broken = run_cli(tmp_path, "audit", "verify", "--since", "2000-01-01")
    assert broken.returncode == 1
    assert "BROKEN at seq 3: record changed: column outcome" in broken.stderr
    assert run_cli(tmp_path, "audit", "verify", "--since", "yesterday").returncode == 2


async def test_since_starts_at_the_last_checkpoint_before_it(db_sessions, tmp_path):
    keys, archive = dirs(tmp_path)
    await chain(db_sessions, keys, 30, checkpoint_every=10)
    async with db_sessions() as session:
        since = (await session.get(AuditRecordRow, 25)).recorded
        await intrude(session, "UPDATE audit_record SET outcome = '8' WHERE seq = 5")
    report = await verify(db_sessions, keys, archive, since=since)
    assert report.intact, report.problems  # seq 5 is before the anchor (checkpoint 2, seq 20)
    assert (report.first_seq, report.last_seq) == (20, 30)
    async with db_sessions() as session:
        await intrude(session, "UPDATE audit_record SET outcome = '8' WHERE seq = 22")
    report = await verify(db_sessions, keys, archive, since=since)
    assert wheres(report) == ["seq 22"]
    assert wheres(await verify(db_sessions, keys, archive)) == ["seq 5", "seq 22"]
