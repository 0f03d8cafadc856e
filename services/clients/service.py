"""System clients: the registry of clients and SMART Backend Services token requests.

A client is an organization's machine (a clinic's EHR, a care-management system). It is
registered with its public keys (a JWKS) by ``renkei client add``; it asks ``POST /oauth/token``
for an access token with a client assertion (RFC 7523 ``private_key_jwt``, ES384 or RS384)
signed by one of those keys. Nothing here ever puts the assertion into an error.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.db import insert_ignore, utcnow
from services.auth.keys import KeyRing
from services.auth.service import CLOCK_SKEW_SECONDS, FHIR_ID, Role, issue_token
from services.clients import scopes
from services.clients.models import Client, UsedAssertion

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = {"ES384": "EC", "RS384": "RSA"}
# SMART Backend Services: an assertion expires no more than five minutes after it is made.
ASSERTION_MAX_AHEAD_SECONDS = 300
ACCESS_TOKEN_MAX_SECONDS = 3600
# Printable ASCII only: it is stored (a NUL would be refused by PostgreSQL, not by us).
JTI = re.compile(r"[\x21-\x7e]{1,255}")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error: ``error`` code, a description that names no input."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status


class InvalidJwks(ValueError):
    pass


# -- the client registry ----------------------------------------------------------------------
def check_jwks(jwks: object) -> dict:
    """A JWKS of public EC P-384 or RSA (>= 2048 bit) keys; anything else is refused."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InvalidJwks('a JWKS is an object with a non-empty "keys" list')
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            raise InvalidJwks(f"keys[{index}] is not an object")
        if PRIVATE_MEMBERS & set(key):
            raise InvalidJwks(f"keys[{index}] holds private key material: register public keys")
        kty = key.get("kty")
        if kty == "EC" and key.get("crv") != "P-384":
            raise InvalidJwks(f"keys[{index}]: EC keys must be on P-384 (ES384)")
        if kty not in ("EC", "RSA"):
            raise InvalidJwks(f"keys[{index}]: kty must be EC (ES384) or RSA (RS384)")
        try:
            public = jwt.PyJWK(key, algorithm="ES384" if kty == "EC" else "RS384").key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
            raise InvalidJwks(
                f"keys[{index}] is not a valid key ({type(error).__name__})"
            ) from None
        if kty == "RSA" and public.key_size < 2048:
            raise InvalidJwks(f"keys[{index}]: RSA keys must have at least 2048 bits")
    return {"keys": jwks["keys"]}


async def add_client(session: AsyncSession, org_id: str, name: str, jwks: object) -> Client:
    if not FHIR_ID.fullmatch(org_id):
        raise ValueError("the organization id is not a FHIR id")
    if not name.strip() or len(name) > 200:
        raise ValueError("a client name has 1 to 200 characters")
    client = Client(
        id=str(uuid.uuid4()), org_id=org_id, name=name.strip(), jwks=check_jwks(jwks),
        created=utcnow(), revoked_at=None,
    )  # fmt: skip
    session.add(client)
    await session.flush()
    return client


async def list_clients(session: AsyncSession) -> list[Client]:
    return list(await session.scalars(select(Client).order_by(Client.org_id, Client.created)))


async def revoke_client(session: AsyncSession, client_id: str) -> bool:
    """Mark the client revoked; False when there is no such client."""
    client = await session.get(Client, client_id)
    if client is None:
        return False
    if client.revoked_at is None:
        client.revoked_at = utcnow()
    await session.flush()
    return True


# -- token requests ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: int
    scope: str
    token_id: str = ""  # the token's jti (for its token.issued audit record)


def _client_id_of(assertion: str) -> str:
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "the client assertion is not a JWT", 401) from None
    if header.get("alg") not in ALGORITHMS:
        raise OAuthError(
            "invalid_client", "the client assertion must be signed ES384 or RS384", 401
        )
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or iss != sub or not FHIR_ID.fullmatch(iss):
        raise OAuthError(
            "invalid_client", "iss and sub of the assertion must be the client id", 401
        )
    return iss


def _candidate_keys(client: Client, header: dict) -> list:
    alg = header["alg"]
    kid = header.get("kid")
    keys = []
    for jwk in client.jwks.get("keys", []):
        if jwk.get("kty") != ALGORITHMS[alg] or (kid is not None and jwk.get("kid") != kid):
            continue
        if jwk.get("alg") not in (None, alg):
            continue
        keys.append(jwt.PyJWK(jwk, algorithm=alg).key)
    return keys


async def verify_assertion(session: AsyncSession, assertion: str, token_url: str) -> Client:
    """The client that signed ``assertion``; its jti is recorded so it cannot be replayed."""
    client_id = _client_id_of(assertion)
    client = await session.get(Client, client_id)
    if client is None or client.revoked_at is not None:
        raise OAuthError("invalid_client", "no such client, or it was revoked", 401)
    header = jwt.get_unverified_header(assertion)
    claims = None
    for key in _candidate_keys(client, header):
        try:
            claims = jwt.decode(
                assertion, key, algorithms=[header["alg"]], audience=token_url,
                issuer=client_id, leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "sub", "aud", "jti"]},
            )  # fmt: skip
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAudienceError:
            raise OAuthError(
                "invalid_client", "the assertion's aud must be the token endpoint URL", 401
            ) from None
        except jwt.ExpiredSignatureError:
            raise OAuthError("invalid_client", "the client assertion has expired", 401) from None
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "the client assertion is not valid", 401) from None
    if claims is None:
        raise OAuthError(
            "invalid_client", "the assertion is not signed by a key the client registered", 401
        )
    exp, jti = claims["exp"], claims["jti"]
    if (
        not isinstance(exp, int)
        or exp - time.time() > ASSERTION_MAX_AHEAD_SECONDS + CLOCK_SKEW_SECONDS
    ):
        raise OAuthError("invalid_client", "the assertion must expire within five minutes", 401)
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise OAuthError("invalid_client", "the assertion needs a jti of 1 to 255 characters", 401)
    now = utcnow()
    await session.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < now))
    row = {"client_id": client_id, "jti": jti, "expires_at": datetime.fromtimestamp(exp, UTC)}
    result = await session.execute(
        insert_ignore(session, UsedAssertion, [row], ["client_id", "jti"])
    )
    if result.rowcount == 0:
        raise OAuthError("invalid_client", "this client assertion was already used", 401)
    return client


def grant_token(
    client: Client,
    requested_scope: str,
    ring: KeyRing,
    ttl_seconds: int,
    *,
    region_office: bool = False,
) -> TokenGrant:
    """``region_office``: the client is the region office's (it may be granted Metrics.r)."""
    ceiling = scopes.REGION_OFFICE_CEILING if region_office else scopes.SYSTEM_CEILING
    granted = scopes.grant(requested_scope, ceiling)
    if not granted:
        raise OAuthError("invalid_scope", "none of the requested scopes can be granted")
    ttl = min(ttl_seconds, ACCESS_TOKEN_MAX_SECONDS)
    token = issue_token(
        None, client.org_id, Role.SYSTEM, None, ttl,
        client_id=client.id, scopes=granted, ring=ring,
    )  # fmt: skip
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]  # ours, just signed
    return TokenGrant(token, ttl, granted, jti)
