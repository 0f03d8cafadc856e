"""Token verification with the database: the org must be registered, nothing revoked.

Runs on every request, so it is cached, but never in a way that lets a revocation wait:
- the key ring is reread from disk when a token names a kid the hub does not know (a rotation
  by the CLI), at most once a second;
- an Organization that exists is remembered for ORG_TTL seconds (an unknown one is asked every
  time, so loading the registry takes effect at once);
- a token whose signature was verified is remembered (bounded), so a client sending the same
  token on every request costs a dictionary lookup and an expiry check, not an Ed25519 verify;
- the revoked token ids and revoked clients are one small set, reloaded at most every
  REVOCATION_TTL seconds, and updated at once by revocations made in this process.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from renkei.db import insert_ignore, utcnow
from services.auth.keys import KeyRing, load_ring
from services.auth.models import RevokedToken
from services.auth.service import (
    CLOCK_SKEW_SECONDS,
    MAX_LIFETIME_SECONDS,
    InvalidToken,
    Principal,
    UnknownKid,
    verify_token,
)
from services.clients.models import Client
from services.registry.models import RegistryResource

ORG_TTL = 5.0
REVOCATION_TTL = 1.0
RING_RELOAD_EVERY = 1.0
SIGNATURE_CACHE_SIZE = 4096


class TokenVerifier:
    def __init__(self, keys_dir, sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: ANN001
        self.keys_dir = keys_dir
        self.sessions = sessions
        self.ring: KeyRing = load_ring(keys_dir)
        self._ring_loaded = time.monotonic()
        self._orgs: dict[str, float] = {}
        self._signatures: dict[str, tuple[Principal, float]] = {}
        self.revoked_jtis: set[str] = set()
        self.revoked_clients: set[str] = set()
        self._revocations_loaded = float("-inf")
        self._refresh: asyncio.Lock | None = None

    # -- the key ring ---------------------------------------------------------------------
    def current_ring(self) -> KeyRing:
        """The ring to sign with: reread when another process may have rotated it."""
        if time.monotonic() - self._ring_loaded > RING_RELOAD_EVERY:
            self._reload_ring()
        return self.ring

    def _reload_ring(self) -> None:
        self.ring = load_ring(self.keys_dir)
        self._ring_loaded = time.monotonic()

    # -- the check ------------------------------------------------------------------------
    async def verify(self, token: str) -> Principal:
        principal = self._verified_signature(token)
        if principal is None:
            try:
                principal, expires = verify_token(self.ring, token)
            except UnknownKid:
                if time.monotonic() - self._ring_loaded <= RING_RELOAD_EVERY:
                    raise
                await asyncio.to_thread(self._reload_ring)
                principal, expires = verify_token(self.ring, token)
            self._remember_signature(token, principal, expires.timestamp())
        await self._fresh_revocations()
        if principal.token_id in self.revoked_jtis:
            raise InvalidToken("revoked")
        if principal.client_id is not None and principal.client_id in self.revoked_clients:
            raise InvalidToken("client revoked")
        if not await self.org_exists(principal.org_id):
            raise InvalidToken("unknown org")
        return principal

    def _verified_signature(self, token: str) -> Principal | None:
        """A token whose signature and claims were checked before (clients send the same
        token on every request): only its expiry needs checking again."""
        known = self._signatures.get(token)
        if known is None:
            return None
        principal, expires = known
        if time.time() >= expires + CLOCK_SKEW_SECONDS:
            del self._signatures[token]
            raise InvalidToken("expired")
        return principal

    def _remember_signature(self, token: str, principal: Principal, expires: float) -> None:
        if len(self._signatures) >= SIGNATURE_CACHE_SIZE:
            self._signatures.clear()  # bounded; refilled by the tokens in use
        self._signatures[token] = (principal, expires)

    async def org_exists(self, org_id: str) -> bool:
        now = time.monotonic()
        if self._orgs.get(org_id, 0.0) > now:
            return True
        async with self.sessions() as session:
            found = await session.scalar(
                select(RegistryResource.id).where(
                    RegistryResource.resource_type == "Organization", RegistryResource.id == org_id
                )
            )
        if found is None:
            self._orgs.pop(org_id, None)
            return False
        if len(self._orgs) > 10_000:  # bounded: a region has hundreds of organizations
            self._orgs.clear()
        self._orgs[org_id] = now + ORG_TTL
        return True

    async def _fresh_revocations(self) -> None:
        if time.monotonic() - self._revocations_loaded <= REVOCATION_TTL:
            return
        if self._refresh is None:
            self._refresh = asyncio.Lock()
        async with self._refresh:
            if time.monotonic() - self._revocations_loaded <= REVOCATION_TTL:
                return  # another request reloaded them while this one waited
            started = time.monotonic()
            async with self.sessions() as session:
                jtis = await session.scalars(
                    select(RevokedToken.jti).where(RevokedToken.expires_at > utcnow())
                )
                clients = await session.scalars(
                    select(Client.id).where(Client.revoked_at.is_not(None))
                )
                self.revoked_jtis = set(jtis)
                self.revoked_clients = set(clients)
            self._revocations_loaded = started

    # -- revocations made in this process take effect at once --------------------------
    def revoked_token(self, jti: str) -> None:
        self.revoked_jtis.add(jti)

    def revoked_client(self, client_id: str) -> None:
        self.revoked_clients.add(client_id)


async def revoke_token(session: AsyncSession, jti: str, expires_at: datetime | None = None) -> None:
    """Refuse the token ``jti`` from now on (kept until it would have expired: by default as
    long as any token can live)."""
    if expires_at is None:
        expires_at = utcnow() + timedelta(seconds=MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS)
    await session.execute(
        insert_ignore(session, RevokedToken, [{"jti": jti, "expires_at": expires_at}], ["jti"])
    )
    # Old entries are useless once their token expired anyway.
    await session.execute(RevokedToken.__table__.delete().where(RevokedToken.expires_at < utcnow()))
