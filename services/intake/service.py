"""Intake rules: accept a message once, keep it whether or not its patient is known.

The event row and its outbox row are written in one transaction, so an event the hub answered
2xx to is on its way to Kafka even if the broker is down at that moment.

Senders are bound to their own patient ids: the message's Patient is matched only through
identifiers in the systems the sender's Organization issues (registry.issued_systems), and a
birth date contradicting the registry's keeps it unmatched. The bundle is stored sealed under
the patient's data key (an event-own key while unmatched), the Kafka value likewise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from producers.models import OutboxRecord, encode_headers
from renkei.crypto import DataKeyRef, KeyDestroyed, dumps, key_id_of, keyring_of
from renkei.db import utcnow
from schemas.audit import AuditAction, AuditAgent, AuditEntity, AuditRecord
from schemas.envelope import SCHEMA_VERSION, EventEnvelope, event_record_aad
from schemas.events import EventType
from schemas.message import ParsedMessage
from schemas.topics import event_topic
from services.audit.emit import emit_records, new_record
from services.errors import FhirError
from services.intake.models import (
    REASON_AMBIGUOUS,
    REASON_BIRTH_DATE,
    REASON_NOT_SENDER_SYSTEM,
    REASON_UNKNOWN_PATIENT,
    STATUS_ACCEPTED,
    STATUS_FORGOTTEN,
    STATUS_UNMATCHED,
    Event,
)
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


@dataclass(frozen=True)
class Submission:
    """One message as the caller posted it, waiting to be accepted."""

    message: ParsedMessage
    caller_org_id: str
    # Who posted it, for the message.accepted audit record (services.audit.context); a caller
    # inside the hub (tests, tools) is its organization in an unknown role.
    agent: AuditAgent | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def audit_agent(self) -> AuditAgent:
        return self.agent or AuditAgent(org=self.caller_org_id, role="unknown")


async def accept(session: AsyncSession, message: ParsedMessage, caller_org_id: str) -> IntakeResult:
    """Accept one message (raises FhirError when it is refused)."""
    (outcome,) = await accept_many(session, [Submission(message, caller_org_id)])
    if isinstance(outcome, FhirError):
        raise outcome
    return outcome


async def accept_many(
    session: AsyncSession, submissions: list[Submission]
) -> list[IntakeResult | FhirError]:
    """Accept a batch of messages in one transaction: one outcome per submission, in order.

    The batch shares its round trips (senders, repeats and patient matches are each one query
    for the whole batch) and its commit. The rules are those of one message: a refusal is that
    submission's outcome and leaves the others alone; the same message twice in one batch is
    accepted once and answered as a repeat the second time. If the commit meets a racing
    writer (the same message accepted on another connection), the batch is rolled back and
    each submission is accepted again on its own, where the race is answered as a repeat.
    """
    outcomes: list[IntakeResult | FhirError | None] = [None] * len(submissions)
    for index, submission in enumerate(submissions):
        if submission.message.sender_org_id != submission.caller_org_id:
            outcomes[index] = FhirError(
                403,
                "forbidden",
                "MessageHeader.sender is not the organization of the bearer token",
                "Bundle.entry[0].resource.sender",
            )
    open_items = [i for i, outcome in enumerate(outcomes) if outcome is None]
    senders = await registry.read_many(
        session, "Organization", {submissions[i].message.sender_org_id for i in open_items}
    )
    digests = {i: content_digest(submissions[i].message.bundle) for i in open_items}
    earlier = await _existing_many(session, [submissions[i].message for i in open_items])
    own = {
        i: _own_identifiers(
            submissions[i].message,
            registry.issued_systems(
                senders[sender].body
                if (sender := submissions[i].message.sender_org_id) in senders
                else None
            ),
        )
        for i in open_items
    }
    holders, patients = await registry.patients_by_identifier(
        session, [identifier for identifiers in own.values() for identifier in identifiers]
    )
    created: list[tuple[int, Event, DataKeyRef]] = []
    in_batch: dict[tuple[str, str], tuple[str, str, str]] = {}  # (sender, id) -> result
    for i in open_items:
        message = submissions[i].message
        if message.sender_org_id not in senders:
            outcomes[i] = FhirError(
                422,
                "not-found",
                "MessageHeader.sender is not an Organization known to the registry",
                "Bundle.entry[0].resource.sender",
            )
            continue
        identity = (message.sender_org_id, message.message_id)
        seen = earlier.get(identity) or in_batch.get(identity)
        if seen is not None:
            outcomes[i] = _repeat(seen, digests[i])
            continue
        match = _match(message, own[i], holders, patients)
        event, key = await _new_event(session, message, match, digests[i])
        in_batch[identity] = (event.id, event.status, digests[i])
        created.append((i, event, key))
    if created:
        try:
            # A racing duplicate fails at this flush (or at commit).
            await session.flush()  # the outbox rows refer to the events
            for i, event, key in created:
                if event.status == STATUS_ACCEPTED:
                    await _enqueue(session, event, submissions[i].message.bundle, key)
            # One message.accepted per new event, committed with it (a repeat answered 200
            # again is the same acceptance: no second record).
            await emit_records(
                session, [accepted_record(submissions[i], event) for i, event, _key in created]
            )
            await session.commit()
        except IntegrityError:
            await session.rollback()
            if len(submissions) == 1:
                # The same message raced in on another connection: answer as the repeat it is.
                message = submissions[0].message
                seen = (await _existing_many(session, [message])).get(
                    (message.sender_org_id, message.message_id)
                )
                if seen is None:
                    raise
                return [_repeat(seen, digests[0])]
            return [(await accept_many(session, [s]))[0] for s in submissions]
    for i, event, _key in created:
        outcomes[i] = IntakeResult(event.id, True, event.status)
        if event.status == STATUS_UNMATCHED:
            log.info(
                "event %s accepted unmatched (%s); queued for linking",
                event.id,
                event.unmatched_reason,
            )
        elif event.status == STATUS_FORGOTTEN:
            log.info("event %s is about a forgotten patient; kept, not routed", event.id)
    return [outcome for outcome in outcomes if outcome is not None]


def accepted_record(submission: Submission, event: Event) -> AuditRecord:
    """The audit record of a new event: its Bundle as the report, its Patient once matched."""
    entities = [AuditEntity(f"Bundle/{event.id}", role="3")]
    if event.patient_id:
        entities.append(AuditEntity(f"Patient/{event.patient_id}", role="1"))
    return new_record(
        submission.audit_agent(),
        AuditAction.MESSAGE_ACCEPTED,
        patient=event.patient_id,
        source_org=event.sender_org_id,
        entities=entities,
        detail={**submission.detail, "event_type": event.event_type, "status": event.status},
    )


async def _new_event(
    session: AsyncSession, message: ParsedMessage, match: Match, digest: str
) -> tuple[Event, DataKeyRef]:
    """The event row, its message sealed under the patient's data key (added, not flushed)."""
    keyring = keyring_of(session)
    event = Event(
        id=str(uuid.uuid4()),
        sender_org_id=message.sender_org_id,
        message_id=message.message_id,
        event_type=message.event_type.value,
        status=match.status,
        patient_id=match.patient_id,
        occurred_at=message.occurred_at,
        accepted_at=utcnow(),
        unmatched_reason=match.reason,
        bundle={},  # the message is only stored sealed (bundle_sealed)
        content_sha256=digest,
        break_glass=message.break_glass_reason is not None,
    )
    key = None
    if match.status == STATUS_ACCEPTED:
        try:
            key = await keyring.patient_dek(session, match.patient_id or "")
        except KeyDestroyed:  # forgotten by another process a moment ago
            event.status = STATUS_FORGOTTEN
    if key is None:
        key = await keyring.new_key(session)
    event.bundle_sealed = keyring.seal(key, dumps(message.bundle), bundle_aad(event.id))
    session.add(event)
    return event, key


def bundle_aad(event_id: str) -> str:
    return f"event|{event_id}|bundle"


async def event_bundle(session: AsyncSession, event: Event) -> dict | None:
    """The event's message, decrypted; None once its key was destroyed (forgotten)."""
    if event.bundle_sealed is None:
        return event.bundle  # a row from before migration 0004
    try:
        return await keyring_of(session).open_json(
            session, event.bundle_sealed, bundle_aad(event.id)
        )
    except KeyDestroyed:
        return None


@dataclass(frozen=True)
class Match:
    status: str
    patient_id: str | None = None
    reason: str | None = None


def _own_identifiers(message: ParsedMessage, own_systems: frozenset[str]) -> list[tuple[str, str]]:
    """The message's patient identifiers in the systems its sender issues: the only ones that
    may name a registry patient (a sender is bound to its own patient ids)."""
    return [(i.system, i.value) for i in message.patient_identifiers if i.system in own_systems]


def _match(
    message: ParsedMessage,
    own: list[tuple[str, str]],
    holders: dict[tuple[str, str], set[str]],
    patients: dict[str, registry.StoredResource],
) -> Match:
    """Who the message is about, through the sender's own identifier systems only."""
    if not own:
        return Match(STATUS_UNMATCHED, reason=REASON_NOT_SENDER_SYSTEM)
    found = sorted(set().union(*(holders.get(identifier, set()) for identifier in own)))
    if not found:
        return Match(STATUS_UNMATCHED, reason=REASON_UNKNOWN_PATIENT)
    if len(found) > 1:
        log.warning("patient identifiers match %d registry patients; unmatched", len(found))
        return Match(STATUS_UNMATCHED, reason=REASON_AMBIGUOUS)
    patient = patients[found[0]]
    if patient.forgotten:
        return Match(STATUS_FORGOTTEN, patient_id=patient.id)
    registered = (patient.body or {}).get("birthDate")
    stated = _message_patient(message.bundle).get("birthDate")
    if registered and stated and registered != stated:
        return Match(STATUS_UNMATCHED, reason=REASON_BIRTH_DATE)
    return Match(STATUS_ACCEPTED, patient_id=patient.id)


def _message_patient(bundle: dict) -> dict:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            return resource
    return {}


async def _existing_many(
    session: AsyncSession, messages: list[ParsedMessage]
) -> dict[tuple[str, str], tuple[str, str, str]]:
    """Messages already accepted, in one query: (sender, message id) -> (event id, status,
    content digest)."""
    pairs = sorted({(m.sender_org_id, m.message_id) for m in messages})
    if not pairs:
        return {}
    rows = await session.execute(
        select(
            Event.sender_org_id, Event.message_id, Event.id, Event.status, Event.content_sha256
        ).where(tuple_(Event.sender_org_id, Event.message_id).in_(pairs))
    )
    return {(r.sender_org_id, r.message_id): (r.id, r.status, r.content_sha256) for r in rows}


def _repeat(seen: tuple[str, str, str], digest: str) -> IntakeResult | FhirError:
    """A message whose (sender, MessageHeader.id) was accepted before: the same content is a
    repeat (answered as before), other content a reused id (refused)."""
    event_id, status, earlier_digest = seen
    if earlier_digest != digest:
        return FhirError(
            409,
            "conflict",
            "this sender already used this MessageHeader.id for a different message; "
            "a new message needs a new id",
            "Bundle.entry[0].resource.id",
        )
    return IntakeResult(event_id, False, status)


async def _enqueue(session: AsyncSession, event: Event, bundle: dict, key: DataKeyRef) -> None:
    """Give the event its patient key and put it in the outbox, sealed (same transaction)."""
    event.patient_key = await registry.patient_key(session, event.patient_id or "")
    envelope = EventEnvelope(
        event_id=event.id,
        event_type=EventType(event.event_type),
        patient_key=event.patient_key,
        schema_version=SCHEMA_VERSION,
        sender_org_id=event.sender_org_id,
        occurred_at=event.occurred_at,
        accepted_at=event.accepted_at,
        message_id=event.message_id,
        payload=bundle,
    )
    session.add(
        OutboxRecord(
            event_id=event.id,
            topic=event_topic(envelope.event_type),
            key=event.patient_key,
            value=keyring_of(session).seal(key, envelope.to_bytes(), event_record_aad(event.id)),
            headers=encode_headers(envelope.headers(key.key_id)),
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


async def link_patient(
    session: AsyncSession, event_id: str, patient_id: str, audit: AuditRecord | None = None
) -> Event:
    """An admin says who the patient is: the event is routed from now on, exactly once.

    ``audit``: the event.linked record (its agent and session) to commit with the link; the
    event, patient and sender are filled in here."""
    event = await session.get(Event, event_id, with_for_update=True)
    if event is None:
        raise FhirError(404, "not-found", "no such event")
    if event.status != STATUS_UNMATCHED:
        raise FhirError(409, "conflict", "the event is not waiting for a patient link")
    patient = await registry.read(session, "Patient", patient_id)
    if patient is None:
        raise FhirError(422, "not-found", "no such Patient in the registry", "patient")
    if patient.forgotten:
        raise FhirError(409, "deleted", "this patient's data was erased (forgotten)", "patient")
    bundle = await event_bundle(session, event)
    if bundle is None:
        raise FhirError(409, "deleted", "the event's data was erased", "patient")
    # The event's own key is replaced by the patient's: re-seal, then destroy the old key, so
    # forgetting the patient later shreds this event too.
    keyring = keyring_of(session)
    old_key = key_id_of_event(event)
    key = await keyring.patient_dek(session, patient_id)
    event.bundle_sealed = keyring.seal(key, dumps(bundle), bundle_aad(event.id))
    event.bundle = {}
    event.patient_id = patient_id
    event.status = STATUS_ACCEPTED
    event.unmatched_reason = None
    await _enqueue(session, event, bundle, key)
    if old_key is not None and old_key != key.key_id:
        await keyring.destroy(session, [old_key])
    if audit is not None:
        linked = dataclasses.replace(
            audit,
            patient=patient_id,
            source_org=event.sender_org_id,
            entities=(
                AuditEntity(f"Bundle/{event.id}", role="3"),
                AuditEntity(f"Patient/{patient_id}", role="1"),
            ),
        )
        await emit_records(session, [linked])
    await session.commit()
    return event


def key_id_of_event(event: Event) -> str | None:
    return key_id_of(event.bundle_sealed) if event.bundle_sealed is not None else None
