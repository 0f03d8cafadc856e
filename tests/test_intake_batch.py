"""Group commit at the intake: many messages in one transaction, each with its own answer.

The rules of one message hold inside a batch (services/intake/service.accept_many): a refusal
is that message's answer alone, a repeat is answered as a repeat, and every accepted message
has exactly one event row and one outbox row.
"""

from __future__ import annotations

import asyncio
import copy
import json

from sqlalchemy import func, select

from producers.models import OutboxRecord
from schemas.events import EventType
from schemas.message import parse_message
from schemas.topics import AUDIT_TOPIC
from services.errors import FhirError
from services.intake.models import STATUS_ACCEPTED, STATUS_UNMATCHED, Event
from services.intake.queue import IntakeQueue
from services.intake.service import IntakeResult, Submission, accept, accept_many
from tests.hubtools import load_region, message, sender_of


def parsed(bundle: dict):
    return parse_message(json.dumps(bundle).encode())


async def counts(sessions) -> tuple[int, int]:
    async with sessions() as session:
        events = await session.scalar(select(func.count()).select_from(Event))
        outbox = await session.scalar(
            select(func.count())
            .select_from(OutboxRecord)
            .where(OutboxRecord.topic != AUDIT_TOPIC)  # the audit records are counted apart
        )
        return events, outbox


async def test_a_batch_answers_each_message_by_the_rules_of_one(api) -> None:
    hub = api.hub
    await load_region(hub)
    first = message(EventType.ADMISSION, "p01")
    before = message(EventType.DISCHARGE, "p02")
    async with hub.sessions() as session:
        earlier = await accept(session, parsed(before), sender_of(before))
    twice = message(EventType.ADMISSION, "p03")
    reused = copy.deepcopy(twice)
    reused["entry"][1]["resource"]["gender"] = "other"  # same header id, other content
    stranger = message(EventType.ADMISSION, "p04")
    unknown_patient = message(EventType.ADMISSION, "p05")
    for entry in unknown_patient["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            for identifier in entry["resource"].get("identifier", []):
                identifier["value"] = "no-such-number"
    batch = [
        Submission(parsed(first), sender_of(first)),
        Submission(parsed(before), sender_of(before)),  # accepted earlier: a repeat
        Submission(parsed(twice), sender_of(twice)),
        Submission(parsed(twice), sender_of(twice)),  # the same message again in the batch
        Submission(parsed(reused), sender_of(reused)),  # its id reused for other content
        Submission(parsed(stranger), "misawa-care-plan-1"),  # posted under another org's token
        Submission(parsed(unknown_patient), sender_of(unknown_patient)),
    ]
    async with hub.sessions() as session:
        outcomes = await accept_many(session, batch)

    assert len(outcomes) == len(batch)
    new, repeat, same, again, conflict, forbidden, unmatched = outcomes
    assert isinstance(new, IntakeResult) and new.created and new.status == STATUS_ACCEPTED
    assert repeat == IntakeResult(earlier.event_id, False, earlier.status)
    assert isinstance(same, IntakeResult) and same.created
    assert again == IntakeResult(same.event_id, False, same.status)
    assert isinstance(conflict, FhirError) and conflict.status == 409
    assert isinstance(forbidden, FhirError) and forbidden.status == 403
    assert isinstance(unmatched, IntakeResult) and unmatched.status == STATUS_UNMATCHED
    # Stored: the earlier event, plus three new ones; outbox rows for the matched ones only.
    assert await counts(hub.sessions) == (4, 3)


async def test_concurrent_posts_share_transactions_and_each_is_stored_once(api) -> None:
    hub = api.hub
    await load_region(hub)
    queue = IntakeQueue(hub.sessions, max_batch=8)
    bundles = [message(EventType.ADMISSION, f"p0{1 + i % 9}") for i in range(40)]
    bundles.append(bundles[0])  # a client retrying while its first POST is still in the queue
    results = await asyncio.gather(*(queue.accept(parsed(b), sender_of(b)) for b in bundles))

    assert 5 <= queue.batches < len(bundles)  # 41 messages, at most 8 a transaction
    assert len({r.event_id for r in results}) == 40
    assert results[-1] == IntakeResult(results[0].event_id, False, results[0].status)
    assert sum(r.created for r in results) == 40
    assert await counts(hub.sessions) == (40, 40)


async def test_a_refused_message_in_the_queue_leaves_the_others_alone(api) -> None:
    hub = api.hub
    await load_region(hub)
    queue = IntakeQueue(hub.sessions)
    good = message(EventType.ADMISSION, "p01")
    bad = message(EventType.ADMISSION, "p02")
    outcomes = await asyncio.gather(
        queue.accept(parsed(good), sender_of(good)),
        queue.accept(parsed(bad), "misawa-care-plan-1"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], IntakeResult) and outcomes[0].created
    assert isinstance(outcomes[1], FhirError) and outcomes[1].status == 403
    assert await counts(hub.sessions) == (1, 1)


async def test_an_acute_change_goes_ahead_of_the_bulk_messages_waiting(api) -> None:
    hub = api.hub
    await load_region(hub)
    queue = IntakeQueue(hub.sessions, max_batch=4)
    bulk = [message(EventType.ADMISSION, f"p0{1 + i % 9}") for i in range(12)]
    urgent = message(EventType.ACUTE_CHANGE, "p01")
    order: list[str] = []

    async def post(bundle: dict) -> None:
        result = await queue.accept(parsed(bundle), sender_of(bundle))
        order.append(result.event_id if bundle is not urgent else "urgent")

    # All queued before the writer runs: the acute change came last, it is stored first.
    await asyncio.gather(*(post(b) for b in [*bulk, urgent]))
    assert order.index("urgent") < 4  # in the first transaction, not the fourth
    assert len(order) == 13
