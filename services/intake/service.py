"""Intake rules: accept a message once, keep it whether or not its patient is known.

The event row and its outbox row are written in one transaction, so an event the hub answered
2xx to is on its way to Kafka even if the broker is down at that moment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from producers.models import OutboxRecord, encode_headers
from renkei.db import utcnow
from schemas.envelope import SCHEMA_VERSION, EventEnvelope
from schemas.events import EventType
from schemas.message import ParsedMessage
from schemas.topics import event_topic
from services.errors import FhirError
from services.intake.models import STATUS_ACCEPTED, STATUS_UNMATCHED, Event
from services.registry import service as registry

log = logging.getLogger(__name__)


def content_digest(bundle: dict) -> str:
    """The message's content, without what a sender may change when it retries the same
    message (Bundle.id, meta, timestamp)."""
    content = {k: v for k, v in bundle.items() if k not in ("id", "meta", "timestamp")}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class IntakeResult:
    event_id: str
    created: bool
    status: str


async def accept(session: AsyncSession, message: ParsedMessage, caller_org_id: str) -> IntakeResult:
    if message.sender_org_id != caller_org_id:
        raise FhirError(
            403,
            "forbidden",
            "MessageHeader.sender is not the organization of the bearer token",
            "Bundle.entry[0].resource.sender",
        )
    if await registry.read(session, "Organization", message.sender_org_id) is None:
        raise FhirError(
            422,
            "not-found",
            "MessageHeader.sender is not an Organization known to the registry",
            "Bundle.entry[0].resource.sender",
        )
    digest = content_digest(message.bundle)
    repeat = await _existing(session, message, digest)
    if repeat is not None:
        return repeat

    now = utcnow()
    identifiers = [(i.system, i.value) for i in message.patient_identifiers]
    patient_id = await registry.match_patient(session, identifiers)
    event = Event(
        id=str(uuid.uuid4()),
        sender_org_id=message.sender_org_id,
        message_id=message.message_id,
        event_type=message.event_type.value,
        status=STATUS_ACCEPTED if patient_id else STATUS_UNMATCHED,
        patient_id=patient_id,
        occurred_at=message.occurred_at,
        accepted_at=now,
        bundle=message.bundle,
        content_sha256=digest,
    )
    session.add(event)
    try:
        # The enqueue's queries autoflush the event row: a racing duplicate can fail there too.
        if patient_id is not None:
            await _enqueue(session, event, patient_id)
        await session.commit()
    except IntegrityError:
        # The same message raced in on another connection: answer as the repeat it is.
        await session.rollback()
        repeat = await _existing(session, message, digest)
        if repeat is None:
            raise
        return repeat
    if patient_id is None:
        log.info("event %s accepted with an unmatched patient; queued for linking", event.id)
    return IntakeResult(event.id, True, event.status)


async def _existing(
    session: AsyncSession, message: ParsedMessage, digest: str
) -> IntakeResult | None:
    row = (
        await session.execute(
            select(Event.id, Event.status, Event.content_sha256).where(
                Event.sender_org_id == message.sender_org_id,
                Event.message_id == message.message_id,
            )
        )
    ).first()
    if row is None:
        return None
    if row.content_sha256 != digest:
        raise FhirError(
            409,
            "conflict",
            "this sender already used this MessageHeader.id for a different message; "
            "a new message needs a new id",
            "Bundle.entry[0].resource.id",
        )
    return IntakeResult(row.id, False, row.status)


async def _enqueue(session: AsyncSession, event: Event, patient_id: str) -> None:
    """Give the event its patient key and put it in the outbox (same transaction)."""
    event.patient_key = await registry.patient_key(session, patient_id)
    envelope = EventEnvelope(
        event_id=event.id,
        event_type=EventType(event.event_type),
        patient_key=event.patient_key,
        schema_version=SCHEMA_VERSION,
        sender_org_id=event.sender_org_id,
        occurred_at=event.occurred_at,
        accepted_at=event.accepted_at,
        message_id=event.message_id,
        payload=event.bundle,
    )
    session.add(
        OutboxRecord(
            event_id=event.id,
            topic=event_topic(envelope.event_type),
            key=event.patient_key,
            value=envelope.to_bytes(),
            headers=encode_headers(envelope.headers()),
            created_at=utcnow(),
        )
    )


# -- the unmatched-patient queue (相談窓口) ---------------------------------------------------


async def unmatched(session: AsyncSession, limit: int, offset: int) -> list[Event]:
    rows = await session.scalars(
        select(Event)
        .where(Event.status == STATUS_UNMATCHED)
        .order_by(Event.accepted_at, Event.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows)


async def link_patient(session: AsyncSession, event_id: str, patient_id: str) -> Event:
    """An admin says who the patient is: the event is routed from now on, exactly once."""
    event = await session.get(Event, event_id, with_for_update=True)
    if event is None:
        raise FhirError(404, "not-found", "no such event")
    if event.status != STATUS_UNMATCHED:
        raise FhirError(409, "conflict", "the event is not waiting for a patient link")
    if await registry.read(session, "Patient", patient_id) is None:
        raise FhirError(422, "not-found", "no such Patient in the registry", "patient")
    event.patient_id = patient_id
    event.status = STATUS_ACCEPTED
    await _enqueue(session, event, patient_id)
    await session.commit()
    return event
