"""Bearer tokens: JWTs signed with the hub's Ed25519 key from the data dir.

Minimal on purpose (hardened in its own issue): a token names an organization, a role and
optionally a practitioner; the key is created on first use and shared by the hub and the CLI
through the data dir.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "renkei-hub"
AUDIENCE = "renkei-hub"
KEY_FILE = "token-signing-ed25519.pem"


class Role(StrEnum):
    # The region's coordination office (相談窓口/事務局): registry, care teams, consents, the
    # unmatched queue. Only the region office (settings.region_org) may hold it.
    REGION_ADMIN = "region-admin"
    # An organization's own administrator: its Organization, Practitioners, PractitionerRoles
    # and machine clients.
    ORG_ADMIN = "org-admin"
    MEMBER = "member"
    SYSTEM = "system"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Principal:
    org_id: str
    role: Role
    practitioner_id: str | None = None
    token_id: str | None = None


class InvalidToken(Exception):
    pass


def signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = keys_dir / KEY_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Write-then-rename so a hub and a CLI starting together never read half a key.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidToken("token signing key is not Ed25519")
    return key


def issue_token(
    keys_dir: Path,
    org_id: str,
    role: Role,
    practitioner_id: str | None = None,
    ttl_seconds: int = 12 * 3600,
) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"Organization/{org_id}",
        "org": org_id,
        "role": role.value,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
    }
    if practitioner_id:
        claims["practitioner"] = practitioner_id
    return jwt.encode(claims, signing_key(keys_dir), algorithm="EdDSA")


def verify_token(public_key: object, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            public_key,  # type: ignore[arg-type]
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "org", "role"]},
        )
        return Principal(
            org_id=str(claims["org"]),
            role=Role(claims["role"]),
            practitioner_id=claims.get("practitioner"),
            token_id=claims.get("jti"),
        )
    except (jwt.PyJWTError, ValueError, KeyError) as error:
        raise InvalidToken(type(error).__name__) from error
