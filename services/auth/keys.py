"""The hub's token signing keys: a key ring in the data dir, each key named by a key id (kid).

Layout under ``keys_dir/signing/``: ``<kid>.pem`` (Ed25519, PKCS#8, 0600), ``current`` (the kid
that signs new tokens) and ``<kid>.retired`` (when a rotation retired that key). Rotation makes
a new key current; retired keys keep verifying until every token they signed has expired (the
longest lifetime a token can have), then the next rotation deletes them. The hub and the CLI
share the ring through the files; the hub rereads it when it meets a kid it does not know.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_DIR = "signing"
CURRENT = "current"


@dataclass(frozen=True)
class KeyRing:
    current_kid: str
    private_key: Ed25519PrivateKey
    public_keys: dict[str, Ed25519PublicKey]

    def jwks(self) -> dict:
        return {"keys": [public_jwk(kid, key) for kid, key in sorted(self.public_keys.items())]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: the kid says which key it is, whoever computes it."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64(_raw(key))}, separators=(",", ":")
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())[:22]


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict:
    return {
        "kty": "OKP", "crv": "Ed25519", "x": _b64(_raw(key)),
        "kid": kid, "alg": "EdDSA", "use": "sig",
    }  # fmt: skip


def _write_private(path: Path, data: bytes) -> None:
    # Write-then-link so a hub and a CLI starting together never read half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _new_key(folder: Path) -> str:
    key = Ed25519PrivateKey.generate()
    kid = kid_of(key.public_key())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(folder / f"{kid}.pem", pem)
    return kid


def _folder(keys_dir: Path) -> Path:
    folder = keys_dir / SIGNING_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def load_ring(keys_dir: Path) -> KeyRing:
    """The ring as it is on disk; the first call makes the first key."""
    folder = _folder(keys_dir)
    current = folder / CURRENT
    if not current.exists():
        kid = _new_key(folder)
        try:
            # O_EXCL: when two processes start together, one key wins and both use it.
            fd = os.open(current, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            (folder / f"{kid}.pem").unlink()
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(kid)
    current_kid = current.read_text().strip()
    public: dict[str, Ed25519PublicKey] = {}
    private = None
    for pem in folder.glob("*.pem"):
        key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            continue
        public[pem.stem] = key.public_key()
        if pem.stem == current_kid:
            private = key
    if private is None:
        raise RuntimeError(f"the current signing key {current_kid} is missing from {folder}")
    return KeyRing(current_kid, private, public)


def rotate(keys_dir: Path, keep_seconds: int) -> tuple[str, list[str]]:
    """Make a new key current; delete keys retired more than ``keep_seconds`` ago.

    Returns the new kid and the kids deleted.
    """
    folder = _folder(keys_dir)
    old = load_ring(keys_dir)
    now = time.time()
    (folder / f"{old.current_kid}.retired").write_text(f"{now:.0f}")
    kid = _new_key(folder)
    _write_private(folder / CURRENT, kid.encode())
    deleted = []
    for marker in folder.glob("*.retired"):
        try:
            retired_at = float(marker.read_text().strip())
        except ValueError:
            continue
        if now - retired_at > keep_seconds:
            (folder / f"{marker.stem}.pem").unlink(missing_ok=True)
            marker.unlink()
            deleted.append(marker.stem)
    return kid, deleted
