"""Bearer tokens: JWTs signed by the hub's Ed25519 key ring (services.auth.keys), verified on
every request.

A token names an organization (``org``, an Organization in the registry), a role and optionally
a practitioner; tokens of system clients (SMART Backend Services, services.clients) also name
the client and the granted scopes. Checked on every request: the signature by a key of the
ring (``kid``), issuer and audience, expiry, ``iat`` not in the future, a lifetime of at most
MAX_LIFETIME_SECONDS, the role, the ``org`` (a FHIR id of a registered Organization), and that
neither the token (``jti``) nor its client has been revoked.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.keys import KeyRing, load_ring

ISSUER = "renkei-hub"
AUDIENCE = "renkei-hub"
# No token lives longer than a day (CLI tokens default to an hour, client tokens at most one).
MAX_LIFETIME_SECONDS = 24 * 3600
DEFAULT_LIFETIME_SECONDS = 3600
# Clock skew tolerated between the hub's processes for "iat not in the future".
CLOCK_SKEW_SECONDS = 5
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


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
    # Set for tokens of system clients (POST /oauth/token): which client, which SMART scopes.
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    # The token's ``iat``: the session's login time (its age goes into every audit record).
    issued_at: datetime | None = None


class InvalidToken(Exception):
    pass


class UnknownKid(InvalidToken):
    """Signed by a key this process has not loaded (yet: another process may have rotated)."""


def signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The key that signs new tokens (the ring's current key)."""
    return load_ring(keys_dir).private_key


def sign(ring: KeyRing, claims: dict) -> str:
    return jwt.encode(claims, ring.private_key, algorithm="EdDSA",
                      headers={"kid": ring.current_kid})  # fmt: skip


def issue_token(
    keys_dir: Path | None,
    org_id: str,
    role: Role,
    practitioner_id: str | None = None,
    ttl_seconds: int = DEFAULT_LIFETIME_SECONDS,
    *,
    client_id: str | None = None,
    scopes: str | None = None,
    ring: KeyRing | None = None,
) -> str:
    if not 0 < ttl_seconds <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"a token lives between 1 s and {MAX_LIFETIME_SECONDS} s")
    now = int(time.time())
    claims: dict = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": client_id or f"Organization/{org_id}",
        "org": org_id,
        "role": role.value,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
    }
    if practitioner_id:
        claims["practitioner"] = practitioner_id
    if client_id:
        claims["client_id"] = client_id
    if scopes:
        claims["scope"] = scopes
    if ring is None:
        if keys_dir is None:
            raise ValueError("issue_token needs the keys dir or a key ring")
        ring = load_ring(keys_dir)
    return sign(ring, claims)


def kid_of_token(token: str) -> str:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as error:
        raise InvalidToken(type(error).__name__) from error
    if not isinstance(kid, str):
        raise InvalidToken("no kid")
    return kid


def verify_token(ring: KeyRing, token: str) -> tuple[Principal, datetime]:
    """Everything that needs no database: returns the principal and when the token expires.

    The registry (org) and revocation checks are TokenVerifier's (services.auth.verifier).
    """
    key = ring.public_keys.get(kid_of_token(token))
    if key is None:
        raise UnknownKid("unknown kid")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "iat", "jti", "org", "role"]},
        )
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise InvalidToken("times are not integers")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise InvalidToken("lifetime too long")
        org = claims["org"]
        if not isinstance(org, str) or not FHIR_ID.fullmatch(org):
            raise InvalidToken("org is not a FHIR id")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= 64:
            raise InvalidToken("bad jti")
        client_id = claims.get("client_id")
        scope = claims.get("scope", "")
        if client_id is not None and not isinstance(client_id, str):
            raise InvalidToken("bad client_id")
        if not isinstance(scope, str):
            raise InvalidToken("bad scope")
        practitioner = claims.get("practitioner")
        if practitioner is not None and not isinstance(practitioner, str):
            raise InvalidToken("bad practitioner")
        principal = Principal(
            org_id=org,
            role=Role(claims["role"]),
            practitioner_id=practitioner,
            token_id=jti,
            client_id=client_id,
            scopes=frozenset(scope.split()),
            issued_at=datetime.fromtimestamp(iat, UTC),
        )
        return principal, datetime.fromtimestamp(exp, UTC)
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as error:
        raise InvalidToken(type(error).__name__) from error
