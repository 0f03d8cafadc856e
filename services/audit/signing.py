"""Signed checkpoints of the audit chain, and the signed heads of its archive files.

A checkpoint signs the chain head (the last record's seq and hash) with the hub's signing key
ring (services.auth.keys, Ed25519), and names the previous checkpoint and its signature, so
the checkpoints form a chain of their own (like CloudTrail's digest files): removing one, or
rewriting the records under one, shows. The kid names the key; the public key of every kid
that ever signed a checkpoint is kept under ``keys/audit-signers/`` (public, never deleted),
because a signing-key rotation deletes retired private keys once no token can need them,
while a checkpoint must verify for as long as the trail is kept.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import utcnow
from schemas.audit import canonical_bytes
from services.audit.chain import chain_head
from services.audit.models import AuditArchive, AuditCheckpoint
from services.auth.keys import load_ring

SIGNERS_DIR = "audit-signers"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def checkpoint_document(checkpoint: AuditCheckpoint) -> bytes:
    """What a checkpoint's signature covers (canonical JSON)."""
    return canonical_bytes(
        {
            "type": "audit-checkpoint",
            "id": checkpoint.id,
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "previous_id": checkpoint.previous_id,
            "previous_signature": checkpoint.previous_signature,
            "created_at": _at(checkpoint.created_at),
            "kid": checkpoint.kid,
        }
    )


def archive_document(archive: AuditArchive) -> bytes:
    """What an archive's signature covers: the cut's range, both ends' hashes, the file."""
    return canonical_bytes(
        {
            "type": "audit-archive",
            "id": archive.id,
            "first_seq": archive.first_seq,
            "last_seq": archive.last_seq,
            "first_prev_hash": archive.first_prev_hash,
            "last_hash": archive.last_hash,
            "file": archive.file,
            "file_sha256": archive.file_sha256,
            "created_at": _at(archive.created_at),
            "kid": archive.kid,
        }
    )


class Signer:
    """Signs with the ring's current key, keeping each signer's public key for verify."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir

    def sign(self, document_of: Any, row: Any) -> None:
        """Set ``row.kid`` and ``row.signature`` (the document includes the kid)."""
        ring = load_ring(self.keys_dir)  # reread: a rotation by the CLI takes effect at once
        row.kid = ring.current_kid
        keep_public_key(self.keys_dir, ring.current_kid, ring.public_keys[ring.current_kid])
        row.signature = _b64(ring.private_key.sign(document_of(row)))


def keep_public_key(keys_dir: Path, kid: str, key: Ed25519PublicKey) -> None:
    folder = keys_dir / SIGNERS_DIR
    path = folder / f"{kid}.pub"
    if path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tmp = folder / f".{kid}.tmp"
    tmp.write_text(json.dumps({"kid": kid, "kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}))
    tmp.replace(path)


def known_signers(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every kid that may have signed: the ring's keys and those kept for the trail."""
    keys: dict[str, Ed25519PublicKey] = {}
    folder = keys_dir / SIGNERS_DIR
    if folder.is_dir():
        for path in folder.glob("*.pub"):
            try:
                jwk = json.loads(path.read_text())
                keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
            except (ValueError, KeyError, OSError):
                continue
    if (keys_dir / "signing").is_dir():
        keys.update(load_ring(keys_dir).public_keys)
    return keys


def signature_valid(
    keys: dict[str, Ed25519PublicKey], kid: str, signature: str, doc: bytes
) -> bool:
    key = keys.get(kid)
    if key is None:
        return False
    try:
        key.verify(_unb64(signature), doc)
    except (InvalidSignature, ValueError):
        return False
    return True


async def last_checkpoint(session: AsyncSession) -> AuditCheckpoint | None:
    return await session.scalar(
        select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
    )


async def add_checkpoint(session: AsyncSession, signer: Signer) -> AuditCheckpoint | None:
    """Sign the chain head if it moved since the last checkpoint; the caller commits (two
    writers signing at once collide on the id: one of them rolls back, nothing is lost)."""
    seq, head = await chain_head(session)
    previous = await last_checkpoint(session)
    if seq == 0 or (previous is not None and previous.seq >= seq):
        return None
    checkpoint = AuditCheckpoint(
        id=(previous.id + 1) if previous is not None else 1,
        seq=seq,
        hash=head,
        previous_id=previous.id if previous is not None else None,
        previous_signature=previous.signature if previous is not None else None,
        created_at=utcnow(),
    )
    signer.sign(checkpoint_document, checkpoint)
    session.add(checkpoint)
    return checkpoint
