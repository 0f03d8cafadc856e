"""The dead-letter topic: a record a consumer cannot read, set aside whole, never dropped.

The record goes to ``renkei.dlq`` as it came, sealed again under the hub's own data key (the
DLQ holds no clear bytes either: the original may be a clear record of an older producer),
with why and where it came from in the headers (no personal data: a reason of the hub's own
words and the topic/partition/offset).
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from renkei.crypto import keyring_of
from renkei.settings import Settings
from schemas.envelope import HEADER_KEY_ID
from schemas.topics import DLQ_TOPIC

log = logging.getLogger(__name__)


def dlq_aad(source: str) -> str:
    return f"kafka|dlq|{source}"


async def dead_letter(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    dlq: AIOKafkaProducer,
    record: ConsumerRecord,
    reason: str,
    consumer: str,
) -> None:
    """Publish ``record`` to the DLQ (``consumer`` names who gave up on it, for the log)."""
    log.error(
        "%s: record %s/%d@%d to the DLQ: %s",
        consumer,
        record.topic,
        record.partition,
        record.offset,
        reason,
    )
    source = f"{record.topic}/{record.partition}/{record.offset}"
    async with sessions() as session:
        keyring = keyring_of(session)
        key = await keyring.hub_key(session)
        await session.commit()
    value = keyring.seal(key, record.value or b"", dlq_aad(source))
    headers = [
        ("renkei-dlq-reason", reason.encode()[:200]),
        ("renkei-source", source.encode()),
        (HEADER_KEY_ID, key.key_id.encode()),
    ]
    await dlq.send_and_wait(settings.topic(DLQ_TOPIC), value, key=record.key, headers=headers)
