"""Reading the audit trail: the search behind GET /fhir/AuditEvent, and the export's stream.

Search parameters are read strictly: an unknown name, an empty value, a code no record kind
has or a date that is not a FHIR date answers 400 naming the parameter (an auditor's typo
must not look like "nobody did that"). Values that are lists (``type=a,b``) are OR; ``date``
may be given several times (``date=ge2026-11-01&date=lt2026-12-01``), AND.

Dates without a time (``2026-11``, ``2026-11-05``) are the whole month or day in the hub's time
zone (RENKEI_TIMEZONE); a time needs its offset.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.audit import AuditAction, AuditOutcome
from services.audit.fhir import SHAPES, subtype_codes
from services.audit.models import AuditRecordRow
from services.errors import FhirError
from services.paging import MAX_OFFSET, paging_int

DEFAULT_COUNT = 50
MAX_COUNT = 500
SEARCH_PARAMETERS = (
    "patient",
    "agent",
    "entity",
    "entity-type",
    "date",
    "type",
    "subtype",
    "action",
    "outcome",
    "_sort",
    "_count",
    "_offset",
)
# The one parameter a search may repeat (services/guard.py lets it through).
REPEATABLE = frozenset({"date"})

_ID = re.compile(r"^[A-Za-z0-9\-.:_]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_DATE = re.compile(
    r"^(?P<prefix>eq|ge|gt|le|lt)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,6})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True)
class AuditScope:
    """The records an auditor may see: the whole region, or those its organization acted in
    (agent) or whose data was touched (source). Decided in services/auth/policy.py."""

    everyone: bool
    org: str | None = None

    def condition(self) -> ColumnElement[bool] | None:
        if self.everyone:
            return None
        if self.org is None:
            return false()
        return or_(AuditRecordRow.agent_org == self.org, AuditRecordRow.source_org == self.org)


@dataclass
class AuditQuery:
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    newest_first: bool = True
    count: int = DEFAULT_COUNT
    offset: int = 0
    names: tuple[str, ...] = ()  # the parameter names given (never their values)


def _bad(name: str, text: str, code: str = "value") -> FhirError:
    return FhirError(400, code, f"{name}: {text}", name)


def _values(name: str, value: str) -> list[str]:
    items = value.split(",")
    if any(not item for item in items):
        raise _bad(name, "empty value")
    return items


def _code(item: str) -> str:
    """Token values may carry a system (``system|code``); the code decides."""
    return item.rpartition("|")[2]


def _reference_id(name: str, item: str, types: Iterable[str]) -> tuple[str | None, str]:
    """(type, id) of ``Type/id`` or a bare id; the type must be one of ``types``."""
    resource_type, slash, resource_id = item.rpartition("/")
    if slash and resource_type not in types:
        raise _bad(name, "expected a reference to " + " or ".join(types))
    if not _ID.match(resource_id):
        raise _bad(name, "not a valid id")
    return (resource_type or None), resource_id


Matches = Callable[[AuditAction, str], bool]


def _actions_where(name: str, items: list[str], has: Matches) -> list[str]:
    actions: set[str] = set()
    for item in items:
        found = {str(a) for a in AuditAction if has(a, _code(item))}
        if not found:
            raise _bad(name, "no audit event has this code", "code-invalid")
        actions |= found
    return sorted(actions)


def date_interval(name: str, value: str, zone: ZoneInfo) -> tuple[str, datetime, datetime]:
    """(prefix, start, end): the value's precision as a half-open interval [start, end)."""
    # An unencoded "+09:00" arrives as " 09:00" (form decoding): an instant has no spaces.
    match = _DATE.match(value.replace(" ", "+"))
    if match is None:
        raise _bad(name, "expected a FHIR date or dateTime with an optional ge/gt/le/lt/eq prefix")
    parts = match.groupdict()
    prefix = parts["prefix"] or "eq"
    year, month, day = int(parts["year"]), int(parts["month"] or 1), int(parts["day"] or 1)
    hour, minute = int(parts["hour"] or 0), int(parts["minute"] or 0)
    second = int(parts["second"] or 0)
    micro = int((parts["fraction"] or ".0")[1:].ljust(6, "0"))
    if parts["hour"] is not None and parts["zone"] is None:
        raise _bad(name, "a time needs its offset (Z or +09:00)")
    try:
        if parts["zone"] is not None:
            offset = parts["zone"].replace("Z", "+00:00")
            start = datetime.fromisoformat(
                f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
                f".{micro:06d}{offset}"
            )
        else:
            start = datetime(year, month, day, tzinfo=zone)
    except ValueError:
        raise _bad(name, "not a calendar date") from None
    if parts["fraction"] is not None:
        end = start + timedelta(microseconds=1)
    elif parts["second"] is not None:
        end = start + timedelta(seconds=1)
    elif parts["hour"] is not None:
        end = start + timedelta(minutes=1)
    elif parts["day"] is not None:
        end = datetime(year, month, day, tzinfo=zone) + timedelta(days=1)
    elif parts["month"] is not None:
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    else:
        end = datetime(year + 1, 1, 1, tzinfo=zone)
    return prefix, start, end


def _date_condition(prefix: str, start: datetime, end: datetime) -> ColumnElement[bool]:
    recorded = AuditRecordRow.recorded
    return {
        "eq": and_(recorded >= start, recorded < end),
        "ge": recorded >= start,
        "gt": recorded >= end,
        "le": recorded < end,
        "lt": recorded < start,
    }[prefix]


def parse_query(params: Sequence[tuple[str, str]], zone: ZoneInfo) -> AuditQuery:
    """The search's parameters (a query string's pairs, in order) as conditions on
    ``audit_record``; 400 for anything the search does not define."""
    query = AuditQuery()
    seen: set[str] = set()
    column = AuditRecordRow
    for name, value in params:
        if name not in SEARCH_PARAMETERS:
            raise FhirError(
                400, "not-supported", f"unknown search parameter {_safe(name)}", _safe(name)
            )
        if name in seen and name not in REPEATABLE:
            raise _bad(name, "given twice", "not-supported")
        seen.add(name)
        if not value:
            raise _bad(name, "empty value")
        if name == "_count":
            query.count = paging_int(value, "_count", DEFAULT_COUNT, MAX_COUNT)
            if query.count < 1:
                raise _bad(name, "must be at least 1", "invalid")
        elif name == "_offset":
            query.offset = paging_int(value, "_offset", 0, MAX_OFFSET)
        elif name == "_sort":
            if value not in ("date", "-date"):
                raise _bad(name, "sorts by date or -date only", "not-supported")
            query.newest_first = value == "-date"
        elif name == "date":
            query.conditions.append(_date_condition(*date_interval(name, value, zone)))
        elif name == "patient":
            ids = [_reference_id(name, v, ("Patient",))[1] for v in _values(name, value)]
            query.conditions.append(column.patient_id.in_(ids))
        elif name == "agent":
            query.conditions.append(or_(*(_agent(v) for v in _values(name, value))))
        elif name == "entity":
            refs = [f" {_entity_reference(name, item)} " for item in _values(name, value)]
            query.conditions.append(
                or_(*(column.entity_refs.contains(r, autoescape=True) for r in refs))
            )
        elif name == "entity-type":
            items = _values(name, value)
            if not all(_TYPE.match(item) for item in items):
                raise _bad(name, "expected FHIR resource type names")
            query.conditions.append(
                or_(*(column.entity_refs.contains(f" {t}/", autoescape=True) for t in items))
            )
        elif name in ("type", "subtype", "action"):
            has = {
                "type": lambda a, code: SHAPES[a].type[1] == code,
                "subtype": lambda a, code: code in subtype_codes(a),
                "action": lambda a, code: SHAPES[a].action == code,
            }[name]
            actions = _actions_where(name, _values(name, value), has)
            query.conditions.append(column.action.in_(actions))
        elif name == "outcome":
            codes = [_code(v) for v in _values(name, value)]
            if not all(code in {o.value for o in AuditOutcome} for code in codes):
                raise _bad(name, "expected 0, 4, 8 or 12", "code-invalid")
            query.conditions.append(column.outcome.in_(codes))
    query.names = tuple(sorted(seen))
    return query


def _entity_reference(name: str, item: str) -> str:
    resource_type, slash, resource_id = item.partition("/")
    if not (slash and _TYPE.match(resource_type) and _ID.match(resource_id)):
        raise _bad(name, "expected a reference Type/id")
    return item


def _agent(item: str) -> ColumnElement[bool]:
    """``Organization/X``, ``PractitionerRole/X``, or a client id (bare or ``Device/X``)."""
    resource_type, slash, resource_id = item.rpartition("/")
    if not slash:
        return AuditRecordRow.agent_client == item
    if not _ID.match(resource_id):
        raise _bad("agent", "not a valid id")
    if resource_type == "Organization":
        return AuditRecordRow.agent_org == resource_id
    if resource_type == "PractitionerRole":
        return AuditRecordRow.agent_practitioner == resource_id
    if resource_type == "Device":
        return AuditRecordRow.agent_client == resource_id
    raise _bad("agent", "expected Organization/, PractitionerRole/, Device/ or a client id")


def valid_id(record_id: str) -> bool:
    return _ID.match(record_id) is not None


def _safe(name: str) -> str:
    """A parameter name fit to echo back (never a value; names are the caller's too)."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-:.]{0,63}", name) else "(parameter)"


def _filtered(statement: Select, query: AuditQuery, scope: AuditScope) -> Select:
    conditions = list(query.conditions)
    if (limit := scope.condition()) is not None:
        conditions.append(limit)
    return statement.where(*conditions) if conditions else statement


async def search(
    session: AsyncSession, query: AuditQuery, scope: AuditScope
) -> tuple[list[AuditRecordRow], int]:
    """One page of matching records, newest first unless asked otherwise, and the total."""
    total = await session.scalar(
        _filtered(select(func.count()).select_from(AuditRecordRow), query, scope)
    )
    order = (
        (AuditRecordRow.recorded.desc(), AuditRecordRow.seq.desc())
        if query.newest_first
        else (AuditRecordRow.recorded.asc(), AuditRecordRow.seq.asc())
    )
    statement = _filtered(select(AuditRecordRow), query, scope).order_by(*order)
    rows = (await session.scalars(statement.offset(query.offset).limit(query.count))).all()
    return list(rows), int(total or 0)


async def get(session: AsyncSession, record_id: str, scope: AuditScope) -> AuditRecordRow | None:
    """One record by id, when in scope (out of scope looks like absent: 404)."""
    statement = select(AuditRecordRow).where(AuditRecordRow.id == record_id)
    if (limit := scope.condition()) is not None:
        statement = statement.where(limit)
    return await session.scalar(statement)


# --------------------------------------------------------------------------------------------
# The export's stream


@dataclass(frozen=True)
class StoredRecord:
    """What an export writes per record: its place in the chain and its canonical document."""

    seq: int
    document: bytes
    prev_hash: str
    hash: str


EXPORT_CHUNK = 1000


def _period(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    conditions = []
    if since is not None:
        conditions.append(AuditRecordRow.recorded >= since)
    if until is not None:
        conditions.append(AuditRecordRow.recorded < until)
    return conditions


async def count_period(
    session: AsyncSession, since: datetime | None, until: datetime | None
) -> int:
    statement = select(func.count()).select_from(AuditRecordRow).where(*_period(since, until))
    return int(await session.scalar(statement) or 0)


async def stream_period(
    session: AsyncSession,
    since: datetime | None,
    until: datetime | None,
    chunk: int = EXPORT_CHUNK,
) -> AsyncIterator[list[StoredRecord]]:
    """Records recorded in [since, until), in chain order, ``chunk`` at a time.

    Keyset paging on ``seq`` and plain column rows (no ORM objects in the session's identity
    map), so memory stays one chunk whatever the period holds.
    """
    after = 0
    columns = (
        AuditRecordRow.seq,
        AuditRecordRow.document,
        AuditRecordRow.prev_hash,
        AuditRecordRow.hash,
    )
    while True:
        statement = (
            select(*columns)
            .where(AuditRecordRow.seq > after, *_period(since, until))
            .order_by(AuditRecordRow.seq)
            .limit(chunk)
        )
        rows = (await session.execute(statement)).all()
        if not rows:
            return
        yield [StoredRecord(r.seq, bytes(r.document), r.prev_hash, r.hash) for r in rows]
        after = rows[-1].seq
