"""Envelope encryption: per-patient data keys (AES-256-GCM) wrapped by a KEK, blind indexes.

A sealed value is self-describing: ``version | len(key id) | key id | nonce | ciphertext+tag``.
The header (with the key id) and the caller's AAD are authenticated, and the AAD names where
the value lives (table, column, row id; topic and event id), so a ciphertext copied to another
row or record does not decrypt. Data keys live wrapped in ``data_key``; one per patient, one
per event not yet matched to a patient, and one for the hub itself (the DLQ). Destroying a data
key (``forget``) makes everything sealed under it unreadable: crypto-shredding.

Unwrapped data keys are cached briefly in memory (the hot path would otherwise unwrap on every
message); ``forget`` in this process drops them at once, another process's cache expires.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import LargeBinary, String, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from renkei.db import Base, UTCDateTime, insert_ignore, utcnow
from renkei.keys import KekProvider, KeyMaterialError, LocalKekFiles, secret

FORMAT = 1
NONCE = 12
HUB_KEY_ID = "hub"  # the hub's own data key: records that belong to no patient (DLQ)


class DataKey(Base):
    __tablename__ = "data_key"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The patient whose data it protects; None for an unmatched event's key and the hub's key.
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    # None once destroyed: nothing sealed under it can be read again.
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CryptoError(ValueError):
    """A sealed value that does not open: tampered, moved, or its key destroyed."""


class KeyDestroyed(CryptoError):
    """The data key was destroyed (the patient was forgotten)."""


# --------------------------------------------------------------------------------------------
# Sealing (pure)


def seal(key_id: str, dek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    kid = key_id.encode("ascii")
    header = bytes([FORMAT, len(kid)]) + kid
    nonce = secrets.token_bytes(NONCE)
    return header + nonce + AESGCM(dek).encrypt(nonce, plaintext, header + aad)


def key_id_of(blob: bytes) -> str:
    blob = bytes(blob)
    if len(blob) < 2 or blob[0] != FORMAT or len(blob) < 2 + blob[1] + NONCE + 16:
        raise CryptoError("not a sealed value of a known format")
    try:
        return blob[2 : 2 + blob[1]].decode("ascii")
    except UnicodeDecodeError:
        raise CryptoError("not a sealed value of a known format") from None


def open_sealed(dek: bytes, blob: bytes, aad: bytes) -> bytes:
    blob = bytes(blob)
    key_id_of(blob)
    split = 2 + blob[1]
    header, nonce, body = blob[:split], blob[split : split + NONCE], blob[split + NONCE :]
    try:
        return AESGCM(dek).decrypt(nonce, body, header + aad)
    except InvalidTag:
        raise CryptoError("sealed value does not authenticate (tampered or moved)") from None


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON of what is sealed (orjson: the intake's hot path; the standard
    encoder for what orjson cannot hold, an integer beyond 64 bits)."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# The keyring: data keys in the database, KEKs behind the provider, HMAC secrets on disk


@dataclass(frozen=True)
class DataKeyRef:
    key_id: str
    dek: bytes


class Keyring:
    def __init__(self, kek: KekProvider, keys_dir: Path, cache_seconds: float = 300.0) -> None:
        self.kek = kek
        self._blind = secret(keys_dir, "blind-index")
        self._pseudonym = secret(keys_dir, "patient-key")
        self.cache_seconds = cache_seconds
        self._deks: dict[str, tuple[bytes, float]] = {}
        self._patients: dict[str, str] = {}  # patient id -> key id

    @classmethod
    def local(cls, keys_dir: Path, cache_seconds: float = 300.0) -> Keyring:
        kek = LocalKekFiles(keys_dir)
        kek.current_id()  # the first KEK exists from the first start (and in every backup)
        return cls(kek, keys_dir, cache_seconds)

    # -- HMACs ------------------------------------------------------------------------------

    def blind(self, system: str, value: str) -> str:
        """The blind index of a patient identifier: matches without storing it."""
        digest = hmac.new(self._blind, f"{system}|{value}".encode(), hashlib.sha256)
        return "h:" + digest.hexdigest()

    def patient_key(self, patient_id: str) -> str:
        """The pseudonymous Kafka key of a patient's records (never an id or identifier)."""
        return hmac.new(self._pseudonym, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    # -- data keys --------------------------------------------------------------------------

    async def patient_dek(self, session: AsyncSession, patient_id: str) -> DataKeyRef:
        """The patient's data key, created on first use. Raises KeyDestroyed once forgotten."""
        key_id = self._patients.get(patient_id)
        if key_id is not None and (cached := self._cached(key_id)) is not None:
            return DataKeyRef(key_id, cached)
        row = await session.scalar(select(DataKey).where(DataKey.patient_id == patient_id))
        if row is None:
            await self._insert(session, patient_id)
            row = await session.scalar(select(DataKey).where(DataKey.patient_id == patient_id))
            assert row is not None  # inserted, or a concurrent writer's
        ref = DataKeyRef(row.id, self._unwrap(row))
        self._patients[patient_id] = row.id
        return ref

    async def new_key(self, session: AsyncSession) -> DataKeyRef:
        """A data key of its own (an event whose patient is not known yet)."""
        return await self._insert(session, None)

    async def hub_key(self, session: AsyncSession) -> DataKeyRef:
        if (cached := self._cached(HUB_KEY_ID)) is not None:
            return DataKeyRef(HUB_KEY_ID, cached)
        await self._insert(session, None, key_id=HUB_KEY_ID)
        row = await session.get(DataKey, HUB_KEY_ID)
        assert row is not None
        return DataKeyRef(HUB_KEY_ID, self._unwrap(row))

    async def dek(self, session: AsyncSession, key_id: str) -> bytes:
        if (cached := self._cached(key_id)) is not None:
            return cached
        row = await session.get(DataKey, key_id)
        if row is None:
            raise CryptoError("unknown data key")
        return self._unwrap(row)

    async def destroy(self, session: AsyncSession, key_ids: list[str]) -> None:
        """Crypto-shred: the wrapped bytes go, and this process forgets the unwrapped ones."""
        if key_ids:
            await session.execute(
                update(DataKey)
                .where(DataKey.id.in_(key_ids))
                .values(wrapped=None, destroyed_at=utcnow())
            )
        self.invalidate(key_ids)

    def invalidate(self, key_ids: list[str]) -> None:
        for key_id in key_ids:
            self._deks.pop(key_id, None)
        self._patients = {p: k for p, k in self._patients.items() if k not in key_ids}

    # -- sealing with the database's keys ---------------------------------------------------

    def seal(self, ref: DataKeyRef, plaintext: bytes, aad: str) -> bytes:
        return seal(ref.key_id, ref.dek, plaintext, aad.encode())

    async def open(self, session: AsyncSession, blob: bytes, aad: str) -> bytes:
        dek = await self.dek(session, key_id_of(blob))
        return open_sealed(dek, blob, aad.encode())

    async def open_json(self, session: AsyncSession, blob: bytes, aad: str) -> Any:
        # The standard parser: orjson reads an integer beyond 64 bits as a float (loses digits).
        return json.loads(await self.open(session, blob, aad))

    # -- internals --------------------------------------------------------------------------

    def _cached(self, key_id: str) -> bytes | None:
        entry = self._deks.get(key_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def _unwrap(self, row: DataKey) -> bytes:
        if row.wrapped is None or row.destroyed_at is not None:
            raise KeyDestroyed("the data key was destroyed")
        try:
            dek = self.kek.unwrap(row.kek_id, row.wrapped)
        except KeyMaterialError as error:
            raise CryptoError(str(error)) from None
        self._deks[row.id] = (dek, time.monotonic() + self.cache_seconds)
        return dek

    async def _insert(
        self, session: AsyncSession, patient_id: str | None, key_id: str | None = None
    ) -> DataKeyRef:
        dek = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = self.kek.wrap(dek)
        key_id = key_id or uuid.uuid4().hex
        row = {
            "id": key_id,
            "patient_id": patient_id,
            "kek_id": kek_id,
            "wrapped": wrapped,
            "created_at": utcnow(),
        }
        conflict = ["patient_id"] if patient_id is not None else ["id"]
        await session.execute(insert_ignore(session, DataKey, [row], conflict))
        return DataKeyRef(key_id, dek)


def keyring_of(session: AsyncSession) -> Keyring:
    """The keyring the session factory was built with (renkei.db.session_factory)."""
    keyring = session.info.get("keyring")
    if keyring is None:
        raise RuntimeError("this session factory has no keyring (renkei.db.session_factory)")
    return keyring


async def rewrap_pending(session: AsyncSession, keyring: Keyring) -> int:
    """How many live data keys are not yet under the current KEK (``rewrap_all``'s total)."""
    current = keyring.kek.current_id()
    query = select(func.count()).select_from(DataKey)
    return (
        await session.scalar(query.where(DataKey.kek_id != current, DataKey.wrapped.is_not(None)))
        or 0
    )


async def rewrap_all(
    session: AsyncSession,
    keyring: Keyring,
    batch: int = 200,
    progress=None,  # noqa: ANN001
) -> int:
    """Re-wrap every live data key not yet under the current KEK; returns how many."""
    current = keyring.kek.current_id()
    done = 0
    while True:
        rows = list(
            (
                await session.scalars(
                    select(DataKey)
                    .where(DataKey.kek_id != current, DataKey.wrapped.is_not(None))
                    .order_by(DataKey.id)
                    .limit(batch)
                )
            ).all()
        )
        if not rows:
            return done
        for row in rows:
            assert row.wrapped is not None
            dek = keyring.kek.unwrap(row.kek_id, row.wrapped)
            row.kek_id, row.wrapped = keyring.kek.wrap(dek)
        await session.commit()
        done += len(rows)
        if progress is not None:
            progress(done)
