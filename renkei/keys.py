"""Key material on disk: key-encryption keys (KEKs) and the hub's HMAC secrets.

The KEK provider is a small interface (``wrap``/``unwrap``/``rotate``) so a real KMS can
replace the local key files; everything else in the hub only ever sees wrapped data keys.
Files are written 0600 in a 0700 directory, with write-then-link so a hub and a CLI starting
together never read half a key.
"""

from __future__ import annotations

import os
import secrets
import stat
import uuid
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_DIR = "kek"
CURRENT = "current"
NONCE = 12


class KeyMaterialError(Exception):
    """Key material missing, destroyed or not matching the ciphertext."""


class KekProvider(Protocol):
    """What the hub needs of a key-encryption key service (local files, or a KMS)."""

    def current_id(self) -> str: ...

    def wrap(self, dek: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes: ...

    def rotate(self) -> str: ...


def secure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_once(path: Path, data: bytes) -> bytes:
    """Create ``path`` (0600) holding ``data`` unless it exists; return what the file holds."""
    if not path.exists():
        secure_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        finally:
            tmp.unlink()
    return path.read_bytes()


def secret(keys_dir: Path, name: str) -> bytes:
    """A 32-byte secret of its own file (created on first use): blind index, patient key."""
    return write_once(keys_dir / f"{name}.key", secrets.token_bytes(32))


class LocalKekFiles:
    """KEKs as files ``keys/kek/<id>.key``; ``keys/kek/current`` names the one new wraps use.

    ``current`` is re-read at every wrap (wraps are rare: one per new data key), so a hub keeps
    wrapping with the newest KEK after ``renkei keys rotate`` ran in another process.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir / KEK_DIR
        self._keys: dict[str, bytes] = {}

    def current_id(self) -> str:
        pointer = self.dir / CURRENT
        if not pointer.exists():
            kek_id = self._new_key()
            write_once(pointer, kek_id.encode())
        return (self.dir / CURRENT).read_text().strip()

    def rotate(self) -> str:
        kek_id = self._new_key()
        tmp = self.dir / f".{CURRENT}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(kek_id)
        os.replace(tmp, self.dir / CURRENT)
        return kek_id

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        kek_id = self.current_id()
        nonce = secrets.token_bytes(NONCE)
        return kek_id, nonce + AESGCM(self._key(kek_id)).encrypt(nonce, dek, _aad(kek_id))

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self._key(kek_id)).decrypt(wrapped[:NONCE], wrapped[NONCE:], _aad(kek_id))
        except InvalidTag:
            raise KeyMaterialError("data key does not unwrap under its KEK") from None

    def _key(self, kek_id: str) -> bytes:
        if kek_id not in self._keys:
            path = self.dir / f"{kek_id}.key"
            if not path.exists() or not kek_id.isalnum():
                raise KeyMaterialError("unknown KEK")
            self._keys[kek_id] = path.read_bytes()
        return self._keys[kek_id]

    def _new_key(self) -> str:
        kek_id = f"kek{uuid.uuid4().hex[:12]}"
        write_once(self.dir / f"{kek_id}.key", AESGCM.generate_key(bit_length=256))
        return kek_id


def _aad(kek_id: str) -> bytes:
    return b"renkei-kek|" + kek_id.encode()


def secure_tree(root: Path) -> None:
    """Directories 0700 and files 0600 under ``root`` (what an older hub or a umask left)."""
    if not root.exists():
        return
    os.chmod(root, 0o700)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(Path(directory, name), 0o700)
        for name in filenames:
            path = Path(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o600)
