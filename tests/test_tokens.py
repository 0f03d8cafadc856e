"""Hub tokens: key ids and rotation, JWKS, and every check current_principal makes."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth import keys
from services.auth.service import AUDIENCE, ISSUER, Role, issue_token, sign
from services.auth.verifier import revoke_token
from tests.test_cli import run_cli

REGION = "region-office"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(org: str = REGION, role: str = "region-admin", **extra) -> dict:
    now = int(time.time())
    base = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": f"Organization/{org}", "org": org, "role": role,
        "iat": now, "exp": now + 600, "jti": str(uuid.uuid4()),
    }  # fmt: skip
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


async def status(api, token: str) -> int:
    response = await api.client.get("/fhir/Organization", headers=bearer(token))
    return response.status_code


async def test_a_token_names_its_signing_key_published_in_the_jwks(api) -> None:
    token = issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN)
    kid = jwt.get_unverified_header(token)["kid"]
    response = await api.client.get("/.well-known/jwks.json")  # no token needed
    assert response.status_code == 200
    published = {key["kid"]: key for key in response.json()["keys"]}
    assert published[kid]["kty"] == "OKP" and "d" not in published[kid]
    verified = jwt.decode(
        token, jwt.PyJWK(published[kid]).key, algorithms=["EdDSA"], audience=AUDIENCE
    )
    assert verified["org"] == REGION
    assert await status(api, token) == 200


async def test_rotation_signs_with_a_new_key_and_old_tokens_still_verify(api) -> None:
    keys_dir = api.hub.settings.keys_dir
    old_token = issue_token(keys_dir, REGION, Role.REGION_ADMIN)
    result = run_cli(api.hub.settings.data_dir, "keys", "rotate-signing")
    assert result.returncode == 0, result.stderr
    new_token = issue_token(keys_dir, REGION, Role.REGION_ADMIN)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert old_kid != new_kid and new_kid in result.stdout
    await asyncio.sleep(1.1)  # the hub rereads the ring at most once a second
    assert await status(api, new_token) == 200
    assert await status(api, old_token) == 200
    published = {
        key["kid"] for key in (await api.client.get("/.well-known/jwks.json")).json()["keys"]
    }
    assert {old_kid, new_kid} <= published


async def test_retired_keys_are_deleted_once_their_tokens_have_expired(tmp_path) -> None:
    first = keys.load_ring(tmp_path).current_kid
    second, deleted = keys.rotate(tmp_path, keep_seconds=3600)
    assert deleted == [] and set(keys.load_ring(tmp_path).public_keys) == {first, second}
    third, deleted = keys.rotate(tmp_path, keep_seconds=-1)
    assert set(deleted) == {first, second}
    assert set(keys.load_ring(tmp_path).public_keys) == {third}
    assert (tmp_path / "signing" / f"{third}.pem").stat().st_mode & 0o777 == 0o600


async def test_every_bad_token_is_refused_with_401(api) -> None:
    ring = api.hub.tokens.current_ring()
    now = int(time.time())
    stranger = Ed25519PrivateKey.generate()
    bad = {
        "unknown org": sign(ring, claims(org="no-such-clinic", role="member")),
        "empty org": sign(ring, claims(org="", role="member")),
        "star org": sign(ring, claims(org="*", role="member")),
        "org not a string": sign(ring, claims(org=["region-office"])),
        "unknown role": sign(ring, claims(role="root")),
        "no jti": sign(ring, claims(jti=None)),
        "wrong audience": sign(ring, claims(aud="someone-else")),
        "wrong issuer": sign(ring, claims(iss="someone-else")),
        "expired": sign(ring, claims(iat=now - 700, exp=now - 100)),
        "issued in the future": sign(ring, claims(iat=now + 600, exp=now + 1200)),
        "lives too long": sign(ring, claims(exp=now + 25 * 3600)),
        "unknown kid": jwt.encode(claims(), stranger, algorithm="EdDSA", headers={"kid": "nope"}),
        "right kid, wrong key": jwt.encode(
            claims(), stranger, algorithm="EdDSA", headers={"kid": ring.current_kid}
        ),
        "no kid": jwt.encode(claims(), ring.private_key, algorithm="EdDSA"),
        "not a JWT": "not-a-token",
    }
    for what, token in bad.items():
        response = await api.client.get("/fhir/Organization", headers=bearer(token))
        assert response.status_code == 401, what
        assert response.json()["resourceType"] == "OperationOutcome", what
        assert token not in response.text
    assert await status(api, sign(ring, claims())) == 200  # the same, well formed


async def test_an_organization_counts_as_soon_as_it_is_registered(api) -> None:
    token = issue_token(api.hub.settings.keys_dir, "new-clinic", Role.MEMBER)
    assert await status(api, token) == 401
    admin = bearer(issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN))
    organization = {"resourceType": "Organization", "id": "new-clinic", "name": "新しい診療所"}
    response = await api.client.put("/fhir/Organization/new-clinic", json=organization,
                                    headers=admin)  # fmt: skip
    assert response.status_code in (200, 201), response.text
    assert await status(api, token) == 200


async def test_a_revoked_token_is_refused_at_once_in_the_process_that_revoked_it(api) -> None:
    token = issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN)
    other = issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN)
    assert await status(api, token) == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with api.hub.sessions() as session:
        await revoke_token(session, jti)
        await session.commit()
    api.hub.tokens.revoked_token(jti)
    assert await status(api, token) == 401
    assert await status(api, other) == 200


async def test_a_token_revoked_by_the_cli_is_refused_within_a_second(api) -> None:
    token = issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN)
    assert await status(api, token) == 200
    result = run_cli(
        api.hub.settings.data_dir, "token", "revoke", token,
        env={"RENKEI_DATABASE_URL": api.hub.settings.resolved_database_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout
    started = time.monotonic()
    while await status(api, token) == 200:
        assert time.monotonic() - started < 2.5, "still accepted after 2.5 s"
        await asyncio.sleep(0.05)


async def test_a_remembered_token_is_still_refused_once_it_expires(api) -> None:
    token = issue_token(api.hub.settings.keys_dir, REGION, Role.REGION_ADMIN)
    assert await status(api, token) == 200
    assert await status(api, token) == 200  # the second time from the verified-token cache
    principal, _expires = api.hub.tokens._signatures[token]
    # As if its hour had passed (the clock cannot be waited for in a test).
    api.hub.tokens._signatures[token] = (principal, time.time() - 3600)
    assert await status(api, token) == 401
    assert token not in api.hub.tokens._signatures
