"""System clients: SMART Backend Services with real EC P-384 and RSA keys, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.clients.service import ASSERTION_TYPE, add_client, revoke_client
from tests.hubtools import HOSPITAL, load_region
from tests.test_cli import run_cli

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def ec_key():
    return ec.generate_private_key(ec.SECP384R1())


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_of(private, kid: str) -> dict:
    algorithm = jwt.algorithms.ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) \
        else jwt.algorithms.RSAAlgorithm  # fmt: skip
    public = algorithm.to_jwk(private.public_key(), as_dict=True)
    return {"keys": [{**public, "kid": kid}]}


def assertion(private, client_id: str, aud: str, kid: str, alg: str = "ES384", **extra) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240,
              "jti": str(uuid.uuid4()), **extra}  # fmt: skip
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})


async def register(api, private, org: str = HOSPITAL, kid: str = "k1") -> str:
    async with api.hub.sessions() as session:
        client = await add_client(session, org, "病院の電子カルテ", jwks_of(private, kid))
        await session.commit()
    return client.id


async def token_url(api) -> str:
    response = await api.client.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    return response.json()["token_endpoint"]


async def ask(api, signed: str, scope: str = "system/*.read", **form):
    data = {
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed, "scope": scope, **form,
    }  # fmt: skip
    return await api.client.post("/oauth/token", data=data, headers=FORM)


async def test_smart_configuration_names_the_token_endpoint(api) -> None:
    response = await api.client.get("/.well-known/smart-configuration")  # no token needed
    config = response.json()
    # From RENKEI_PUBLIC_BASE_URL (default http://host:port), never from the Host header.
    assert config["token_endpoint"] == "http://127.0.0.1:8000/oauth/token"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["ES384", "RS384"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert config["capabilities"] == ["client-confidential-asymmetric"]
    assert "system/*.read" in config["scopes_supported"]


async def test_an_es384_client_gets_an_hour_long_system_token_it_can_use(api) -> None:
    await load_region(api.hub)
    private = ec_key()
    client_id = await register(api, private)
    response = await ask(api, assertion(private, client_id, await token_url(api), "k1"))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 3600
    assert body["scope"] == (
        "system/Communication.rs system/MessageHeader.r system/Organization.rs "
        "system/Practitioner.rs system/PractitionerRole.rs"
    )
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["role"], claims["org"], claims["client_id"]) == ("system", HOSPITAL, client_id)
    assert claims["exp"] - claims["iat"] <= 3600
    listing = await api.client.get(
        "/fhir/Organization", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert listing.status_code == 200


async def test_an_rs384_client_is_granted_at_most_what_the_system_role_allows(api) -> None:
    await load_region(api.hub)
    private = rsa_key()
    client_id = await register(api, private)
    url = await token_url(api)
    cases = {
        "system/Communication.cruds system/Patient.rs": "system/Communication.rus",
        "system/*.*": (
            "system/Bundle.c system/Communication.rus system/MessageHeader.r "
            "system/Organization.rs system/Practitioner.rs system/PractitionerRole.rs"
        ),
        "system/Communication.read system/Bundle.write": "system/Bundle.c system/Communication.rs",
    }
    for requested, granted in cases.items():
        response = await ask(api, assertion(private, client_id, url, "k1", "RS384"), requested)
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == granted, requested
    refused = await ask(api, assertion(private, client_id, url, "k1", "RS384"),
                        "patient/*.read system/Patient.rs system/*.sdr")  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


async def test_bad_assertions_are_refused_as_oauth_errors_without_echo(api) -> None:
    await load_region(api.hub)
    private, stranger = ec_key(), ec_key()
    client_id = await register(api, private)
    url = await token_url(api)
    now = int(time.time())
    bad = {
        "aud from the Host header": assertion(private, client_id, "http://hub/oauth/token", "k1"),
        "expires in an hour": assertion(private, client_id, url, "k1", exp=now + 3600),
        "expired": assertion(private, client_id, url, "k1", exp=now - 60),
        "no jti": assertion(private, client_id, url, "k1", jti=None),
        "iss is not sub": assertion(private, client_id, url, "k1", sub="someone"),
        "NUL in the jti": assertion(private, client_id, url, "k1", jti="a\x00b"),
        "NUL in iss and sub": assertion(private, "a\x00b", url, "k1", sub="a\x00b"),
        "unknown client": assertion(private, "no-such-client", url, "k1"),
        "unregistered key": assertion(stranger, client_id, url, "k1"),
        "ES256 is not allowed": jwt.encode(
            {"iss": client_id, "sub": client_id, "aud": url, "exp": now + 60, "jti": "x"},
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": "k1"},
        ),  # fmt: skip
        "HS384 with the public key": jwt.encode(
            {"iss": client_id, "sub": client_id, "aud": url, "exp": now + 60, "jti": "y"},
            b"k" * 48,
            algorithm="HS384",
        ),  # fmt: skip
        "not a JWT": "garbage",
    }
    for what, signed in bad.items():
        response = await ask(api, signed)
        assert response.status_code == 401, (what, response.text)
        assert response.json()["error"] == "invalid_client", what
        assert signed not in response.text
    good = assertion(private, client_id, url, "k1")
    assert (await ask(api, good)).status_code == 200
    replay = await ask(api, good)
    assert replay.status_code == 401 and "already used" in replay.json()["error_description"]


async def test_malformed_token_requests_are_oauth_400s(api) -> None:
    json_body = await api.client.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert json_body.status_code == 400 and json_body.json()["error"] == "invalid_request"
    wrong_grant = await ask(api, "x", grant_type="password")
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    wrong_type = await ask(api, "x", client_assertion_type="urn:other")
    assert wrong_type.json()["error"] == "invalid_request"
    twice = await api.client.post("/oauth/token", content="grant_type=a&grant_type=b", headers=FORM)
    assert twice.status_code == 400 and twice.json()["error"] == "invalid_request"


async def test_a_revoked_client_loses_its_tokens_at_once_and_gets_no_new_ones(api) -> None:
    await load_region(api.hub)
    private = ec_key()
    client_id = await register(api, private)
    url = await token_url(api)
    access = (await ask(api, assertion(private, client_id, url, "k1"))).json()["access_token"]
    headers = {"Authorization": f"Bearer {access}"}
    assert (await api.client.get("/fhir/Organization", headers=headers)).status_code == 200
    async with api.hub.sessions() as session:
        assert await revoke_client(session, client_id)
        await session.commit()
    api.hub.tokens.revoked_client(client_id)
    assert (await api.client.get("/fhir/Organization", headers=headers)).status_code == 401
    again = await ask(api, assertion(private, client_id, url, "k1"))
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"


async def test_client_cli_add_list_revoke(api, tmp_path) -> None:
    await load_region(api.hub)
    env = {"RENKEI_DATABASE_URL": api.hub.settings.resolved_database_url}
    data_dir = api.hub.settings.data_dir
    private = rsa_key()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks_of(private, "rsa-1")))
    added = run_cli(data_dir, "client", "add", "--org", HOSPITAL, "--name", "電子カルテ",
                    "--jwks", str(jwks_file), env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    client_id = added.stdout.strip().splitlines()[-1]
    listed = run_cli(data_dir, "client", "list", env=env)
    assert client_id in listed.stdout and "active" in listed.stdout
    url = await token_url(api)
    access = (await ask(api, assertion(private, client_id, url, "rsa-1", "RS384"))).json()
    headers = {"Authorization": f"Bearer {access['access_token']}"}
    assert (await api.client.get("/fhir/Organization", headers=headers)).status_code == 200

    revoked = run_cli(data_dir, "client", "revoke", client_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    while (await api.client.get("/fhir/Organization", headers=headers)).status_code == 200:
        assert time.monotonic() - started < 2.5, "the revoked client's token still works"
        await asyncio.sleep(0.05)
    assert "revoked" in run_cli(data_dir, "client", "list", env=env).stdout

    private_jwks = tmp_path / "private.json"
    leaked = jwt.algorithms.RSAAlgorithm.to_jwk(private, as_dict=True)
    private_jwks.write_text(json.dumps({"keys": [leaked]}))
    refused = run_cli(data_dir, "client", "add", "--org", HOSPITAL, "--name", "x",
                      "--jwks", str(private_jwks), env=env)  # fmt: skip
    assert refused.returncode == 2 and "private key material" in refused.stderr
    unknown = run_cli(data_dir, "client", "add", "--org", "no-such-org", "--name", "x",
                      "--jwks", str(jwks_file), env=env)  # fmt: skip
    assert unknown.returncode == 2 and "registry" in unknown.stderr


async def test_a_client_token_does_only_what_its_scopes_grant(api) -> None:
    """The role allows posting; a token granted only Communication access cannot post."""
    await load_region(api.hub)
    private = ec_key()
    client_id = await register(api, private)
    url = await token_url(api)
    reader = await ask(api, assertion(private, client_id, url, "k1"), "system/Communication.rs")
    assert reader.json()["scope"] == "system/Communication.rs"
    headers = {"Authorization": f"Bearer {reader.json()['access_token']}"}
    posted = await api.client.post("/fhir/$process-message", json={}, headers=headers)
    assert posted.status_code == 403 and "system/Bundle.c" in posted.text
    listed = await api.client.get("/fhir/Communication", headers=headers)
    assert listed.status_code == 200
    marked = await api.client.post("/fhir/Communication/x/$read", headers=headers)
    assert marked.status_code == 403 and "system/Communication.u" in marked.text
    directory = await api.client.get("/fhir/Organization", headers=headers)
    assert directory.status_code == 403
    # Patient data is outside every client's ceiling, whatever it asks for.
    patients = await api.client.get("/fhir/Patient", headers=headers)
    assert patients.status_code == 403

    sender = await ask(api, assertion(private, client_id, url, "k1"), "system/Bundle.c")
    headers = {"Authorization": f"Bearer {sender.json()['access_token']}"}
    posted = await api.client.post("/fhir/$process-message", json={}, headers=headers)
    assert posted.status_code == 400  # past the policy: the body is refused for what it is
