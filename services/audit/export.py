"""``renkei audit export``: a period of the trail as NDJSON or CSV, streamed.

- **NDJSON** (the default) is the trail itself, one stored record per line, in chain order::

      {"hash":"…","prev_hash":"…","record":{…canonical document…},"seq":41}

  It is re-importable and verifiable on its own: ``canonical_bytes(record)`` gives back the
  stored document byte for byte, and ``hash == SHA-256(prev_hash || document)`` links each line
  to the one before (the first line's ``prev_hash`` is the hash of the record before the
  period). ``to_audit_event(AuditRecord.from_document(record))`` is what GET /fhir/AuditEvent
  answers for it.
- **CSV** has fixed columns (``CSV_COLUMNS``), one row per record, for spreadsheets: the
  entities' references space-separated, ``detail`` as JSON. It keeps seq and both hashes but
  not the entities' roles and query names; the NDJSON is the complete form.

Records are read ``EXPORT_CHUNK`` at a time (keyset on seq), so memory stays flat however long
the period is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.audit import AuditRecord, canonical_bytes
from services.audit.service import StoredRecord, stream_period

FORMATS = ("ndjson", "csv")
CSV_COLUMNS = (
    "seq",
    "id",
    "recorded",
    "action",
    "outcome",
    "agent_org",
    "agent_role",
    "agent_practitioner",
    "agent_client",
    "agent_token",
    "agent_network",
    "patient",
    "source_org",
    "entities",
    "reason",
    "detail",
    "prev_hash",
    "hash",
)


def ndjson_line(stored: StoredRecord) -> str:
    document = json.loads(stored.document)
    line = {"seq": stored.seq, "prev_hash": stored.prev_hash, "hash": stored.hash,
            "record": document}  # fmt: skip
    return canonical_bytes(line).decode("utf-8") + "\n"


def csv_row(stored: StoredRecord) -> list[str]:
    record = AuditRecord.from_bytes(stored.document)
    agent = record.agent
    return [
        str(stored.seq),
        record.id,
        record.recorded.isoformat(),
        str(record.action),
        str(record.outcome),
        agent.org,
        agent.role,
        agent.practitioner or "",
        agent.client or "",
        agent.token or "",
        agent.network or "",
        record.patient or "",
        record.source_org or "",
        " ".join(e.reference for e in record.entities),
        record.reason or "",
        json.dumps(record.detail, sort_keys=True, ensure_ascii=False) if record.detail else "",
        stored.prev_hash,
        stored.hash,
    ]


async def export_period(
    session: AsyncSession,
    out: TextIO,
    since: datetime | None,
    until: datetime | None,
    fmt: str = "ndjson",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the records recorded in [since, until) to ``out``; returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    done = 0
    async for chunk in stream_period(session, since, until):
        if writer is not None:
            writer.writerows(csv_row(stored) for stored in chunk)
        else:
            out.writelines(ndjson_line(stored) for stored in chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return done


# --------------------------------------------------------------------------------------------
# Reading an export back (re-import, verification, the round-trip tests)


@dataclass(frozen=True)
class ExportedRecord:
    seq: int
    prev_hash: str
    hash: str
    record: AuditRecord
    document: bytes  # the canonical bytes the hash covers


def read_ndjson(lines: Iterator[str]) -> Iterator[ExportedRecord]:
    for text in lines:
        if not text.strip():
            continue
        line: dict[str, Any] = json.loads(text)
        document = canonical_bytes(line["record"])
        yield ExportedRecord(
            line["seq"],
            line["prev_hash"],
            line["hash"],
            AuditRecord.from_document(line["record"]),
            document,
        )


def read_csv(source: TextIO) -> Iterator[dict[str, str]]:
    reader = csv.DictReader(source)
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ValueError("not a Renkei Hub audit CSV (the columns differ)")
    yield from reader
