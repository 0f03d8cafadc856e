"""``renkei audit export``: NDJSON that is the stored trail (verifiable, re-importable, the same
AuditEvents GET answers), CSV with fixed columns, a period in the hub's time zone, streamed in
chunks, and the export itself audited."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime

from sqlalchemy import select

from schemas.audit import AuditAction, AuditRecord
from services.audit import export
from services.audit.chain import append, link_hash
from services.audit.emit import hub_agent, new_record
from services.audit.fhir import to_audit_event
from services.audit.models import GENESIS_HASH, AuditRecordRow
from services.audit.service import EXPORT_CHUNK
from tests.audit_samples import REGION, TOKYO, emitted, store_trail

URL = "/fhir/AuditEvent"


async def stored_rows(hub) -> list[AuditRecordRow]:
    async with hub.sessions() as session:
        return list(await session.scalars(select(AuditRecordRow).order_by(AuditRecordRow.seq)))


async def run_export(hub, since=None, until=None, fmt="ndjson", progress=None) -> str:
    out = io.StringIO()
    async with hub.sessions() as session:
        await export.export_period(session, out, since, until, fmt, progress=progress)
    return out.getvalue()


async def test_ndjson_is_the_stored_chain_and_what_get_answers(api) -> None:
    trail = await store_trail(api.hub)
    text = await run_export(api.hub)
    lines = list(export.read_ndjson(iter(text.splitlines())))
    rows = await stored_rows(api.hub)
    assert [(x.seq, x.prev_hash, x.hash, x.document) for x in lines] == [
        (r.seq, r.prev_hash, r.hash, r.document) for r in rows
    ]
    assert {x.record.id: x.record for x in lines} == {r.id: r for r in trail.values()}
    # Verifiable on its own: every line's hash over the previous one and its document.
    previous = GENESIS_HASH
    for line in lines:
        assert line.prev_hash == previous and line.hash == link_hash(previous, line.document)
        previous = line.hash
    # The same AuditEvents the API answers.
    headers = api.headers(REGION, "auditor")
    bundle = (await api.client.get(f"{URL}?_sort=date&_count=500", headers=headers)).json()
    by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert {x.record.id: to_audit_event(x.record) for x in lines} == by_id


async def test_csv_has_fixed_columns_and_the_stored_values(api) -> None:
    trail = await store_trail(api.hub)
    rows = {r.id: r for r in await stored_rows(api.hub)}
    parsed = list(export.read_csv(io.StringIO(await run_export(api.hub, fmt="csv"))))
    assert len(parsed) == len(trail)
    for line in parsed:
        record, row = trail_by_id(trail)[line["id"]], rows[line["id"]]
        assert (int(line["seq"]), line["prev_hash"], line["hash"]) == (
            row.seq, row.prev_hash, row.hash,
        )  # fmt: skip
        assert datetime.fromisoformat(line["recorded"]) == record.recorded
        assert (line["action"], line["outcome"]) == (record.action, record.outcome)
        agent = record.agent
        assert (line["agent_org"], line["agent_role"]) == (agent.org, agent.role)
        assert line["agent_practitioner"] == (agent.practitioner or "")
        assert line["agent_client"] == (agent.client or "")
        assert line["agent_token"] == (agent.token or "")
        assert line["agent_network"] == (agent.network or "")
        assert line["patient"] == (record.patient or "")
        assert line["source_org"] == (record.source_org or "")
        assert line["entities"].split() == [e.reference for e in record.entities]
        assert line["reason"] == (record.reason or "")
        assert (json.loads(line["detail"]) if line["detail"] else {}) == record.detail


def trail_by_id(trail: dict[str, AuditRecord]) -> dict[str, AuditRecord]:
    return {r.id: r for r in trail.values()}


async def test_the_period_is_since_the_start_until_the_end_of_its_days(api) -> None:
    trail = await store_trail(api.hub)
    from services.cli import _export_bounds

    since, until = _export_bounds("2026-11-05", "2026-11-07", "Asia/Tokyo")
    assert since == datetime(2026, 11, 5, tzinfo=TOKYO)
    assert until == datetime(2026, 11, 8, tzinfo=TOKYO)
    lines = list(export.read_ndjson(iter((await run_export(api.hub, since, until)).splitlines())))
    expected = {trail[n].id for n in ("withheld", "break_glass", "notification_read")}
    assert {x.record.id for x in lines} == expected


async def test_the_export_streams_in_chunks_in_chain_order(api) -> None:
    records = [
        new_record(hub_agent(REGION, "hub:router"), AuditAction.ROUTING_DELIVERED, patient=f"p{i}")
        for i in range(2 * EXPORT_CHUNK + 17)
    ]
    async with api.hub.sessions() as session:
        await append(session, records)
        await session.commit()
    seen: list[int] = []
    text = await run_export(api.hub, progress=seen.append)
    assert seen == [1000, 2000, 2017]  # one progress step per chunk: never all of it at once
    lines = list(export.read_ndjson(iter(text.splitlines())))
    assert [x.seq for x in lines] == list(range(1, len(records) + 1))
    assert [x.record for x in lines] == records


def run_cli(tmp_path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    environment.update(RENKEI_DATA_DIR=str(tmp_path / "var"), RENKEI_DATABASE_URL=database_url)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_the_command_writes_both_formats_and_is_audited(api, tmp_path, database_url) -> None:
    trail = await store_trail(api.hub)
    target = tmp_path / "november.ndjson"
    result = run_cli(tmp_path, database_url, "audit", "export", "--since", "2026-11-01",
                     "--until", "2026-11-30", "--output", str(target), "--progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "exported 9/9" in result.stderr and "exported 9 audit records" in result.stderr
    with target.open(encoding="utf-8") as source:
        lines = list(export.read_ndjson(source))
    november = {r.id for r in trail.values() if r.recorded.month == 11}
    assert {x.record.id for x in lines} == november

    result = run_cli(tmp_path, database_url, "audit", "export", "--format", "csv")
    assert result.returncode == 0, result.stderr
    parsed = list(export.read_csv(io.StringIO(result.stdout)))
    assert {line["id"] for line in parsed} == {r.id for r in trail.values()}

    # Each export leaves one audit.exported record (the CLI runs on the hub's data dir).
    exported = await emitted(api.hub, AuditAction.AUDIT_EXPORTED)
    assert [(r.agent.client, r.detail["format"], r.detail["records"]) for r in exported] == [
        ("hub:cli", "ndjson", 9),
        ("hub:cli", "csv", 11),
    ]

    refused = run_cli(tmp_path, database_url, "audit", "export", "--since", "last week")
    assert refused.returncode == 2 and "--since" in refused.stderr
