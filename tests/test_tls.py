"""TLS: the development CA, the hub's HTTPS server context, and a real ``renkei up`` over HTTPS.

The end-to-end test runs in every leg: on Tansu the broker link is plain text (Tansu has no
TLS); on Apache Kafka it goes through the broker's SSL listener with a client certificate
(tests/engines.py starts the session broker with one), so both sides are TLS.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from renkei.crypto import Keyring
from renkei.db import create_engine, migrate, session_factory
from renkei.dev_ca import make_dev_ca
from renkei.kafka_probe import free_port
from renkei.settings import Settings
from renkei.tls import server_context
from schemas.events import EventType
from services.auth.service import Role, issue_token
from services.demo_region import region_resources
from services.registry import service as registry
from tests.conftest import ENGINE
from tests.hubtools import HOSPITAL, event_id_of, message

CARE_MANAGER = ("misawa-care-plan-1", "cm-sato")


def test_dev_ca_makes_private_files_and_a_server_certificate_for_localhost(tmp_path) -> None:
    files = make_dev_ca(tmp_path / "ca")
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    for path in files.values():
        assert path.stat().st_mode & 0o777 == 0o600, path
    server = x509.load_pem_x509_certificate(files["server"].read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    server.verify_directly_issued_by(ca)


async def _handshake(port: int, context: ssl.SSLContext) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            5,
        )
    except (ssl.SSLError, ConnectionError):
        return False
    # TLS 1.3 reports a refused client certificate after the handshake: read to see it.
    try:
        data = await asyncio.wait_for(_reader.read(1), 2)
    except (ssl.SSLError, ConnectionError):
        return False
    writer.close()
    return data == b"k"


async def test_server_context_tls13_minimum_and_required_client_certificates(tmp_path) -> None:
    files = make_dev_ca(tmp_path / "ca")
    settings = Settings(
        tls_cert=files["server"], tls_key=files["server_key"], tls_client_ca=files["ca"],
        tls_client_cert="required",
    )  # fmt: skip

    async def answer(_reader, writer) -> None:  # noqa: ANN001
        writer.write(b"k")
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port, ssl=server_context(settings))
    try:
        client = ssl.create_default_context(cafile=str(files["ca"]))
        client.load_cert_chain(str(files["client"]), str(files["client_key"]))
        assert await _handshake(port, client)
        without_cert = ssl.create_default_context(cafile=str(files["ca"]))
        assert not await _handshake(port, without_cert)
        old = ssl.create_default_context(cafile=str(files["ca"]))
        old.load_cert_chain(str(files["client"]), str(files["client_key"]))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        assert not await _handshake(port, old)
    finally:
        server.close()
        await server.wait_closed()


async def _load_region(database_url: str, keys_dir: Path) -> None:
    """The region, sealed with the keys of the hub that will serve it (same data dir)."""
    engine = create_engine(database_url)
    await migrate(engine)
    async with session_factory(engine, Keyring.local(keys_dir))() as session:
        for resource in region_resources():
            await registry.write(session, resource["resourceType"], resource, resource["id"])
        await session.commit()
    await engine.dispose()


def _hub_env(tmp_path: Path, database_url: str, broker, port: int, files: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    env.update(
        RENKEI_DATA_DIR=str(tmp_path / "var"),
        RENKEI_DATABASE_URL=database_url,
        RENKEI_PORT=str(port),
        RENKEI_TOPIC_PREFIX=f"t{uuid.uuid4().hex[:8]}.",
        RENKEI_TOPIC_PARTITIONS="3",
        RENKEI_ROUTER_GROUP_ID=f"router-{uuid.uuid4().hex[:8]}",
        RENKEI_CONSUMER_SESSION_TIMEOUT_MS="2000" if ENGINE == "tansu" else "6000",
        RENKEI_TLS_CERT=str(files["server"]),
        RENKEI_TLS_KEY=str(files["server_key"]),
        RENKEI_TLS_CLIENT_CA=str(files["ca"]),  # optional: checked when presented
        RENKEI_KAFKA_BOOTSTRAP=broker.bootstrap,
    )
    if ENGINE == "kafka":
        kafka = broker.tls_files
        env.update(
            RENKEI_KAFKA_BOOTSTRAP=broker.ssl_bootstrap,
            RENKEI_KAFKA_SECURITY_PROTOCOL="SSL",
            RENKEI_KAFKA_SSL_CAFILE=str(kafka["ca"]),
            RENKEI_KAFKA_SSL_CERTFILE=str(kafka["client"]),
            RENKEI_KAFKA_SSL_KEYFILE=str(kafka["client_key"]),
        )
    return env


def _start_hub(env: dict, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_ready(base: str, verify: ssl.SSLContext, process, log: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(verify=verify, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"renkei up exited:\n{_tail(log)}")
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"renkei up not ready over HTTPS within 60 s:\n{_tail(log)}")


async def test_https_end_to_end_with_a_verified_certificate(tmp_path, database_url, broker) -> None:
    files = make_dev_ca(tmp_path / "ca")
    await _load_region(database_url, tmp_path / "var" / "keys")
    port = free_port()
    log = tmp_path / "hub.log"
    process = _start_hub(_hub_env(tmp_path, database_url, broker, port, files), log)
    base = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(files["ca"]))
    try:
        await _wait_ready(base, verify, process, log)
        keys_dir = tmp_path / "var" / "keys"
        sender = {"Authorization": f"Bearer {issue_token(keys_dir, HOSPITAL, Role.SYSTEM)}"}
        org, practitioner = CARE_MANAGER
        reader_token = issue_token(keys_dir, org, Role.MEMBER, practitioner)
        reader = {"Authorization": f"Bearer {reader_token}"}
        # A system client may present its certificate (RENKEI_TLS_CLIENT_CA, optional).
        with_cert = ssl.create_default_context(cafile=str(files["ca"]))
        with_cert.load_cert_chain(str(files["client"]), str(files["client_key"]))
        async with httpx.AsyncClient(base_url=base, verify=with_cert, timeout=10) as client:
            response = await client.post(
                "/fhir/$process-message", json=message(EventType.ADMISSION, "p01"),
                headers={**sender, "Content-Type": "application/fhir+json"},
            )  # fmt: skip
            assert response.status_code == 202, response.text
            assert response.headers["strict-transport-security"].startswith("max-age=")
            event_id = event_id_of(response.json())
        async with httpx.AsyncClient(base_url=base, verify=verify, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                listing = await client.get("/fhir/Communication", headers=reader)
                assert listing.status_code == 200, listing.text
                found = [
                    entry["resource"] for entry in listing.json().get("entry", [])
                    if entry["resource"]["identifier"][0]["value"] == event_id
                ]  # fmt: skip
                if found:
                    break
                assert time.monotonic() < deadline, "no notification over HTTPS within 30 s"
                await asyncio.sleep(0.1)
            assert found[0]["recipient"][0]["reference"] == "PractitionerRole/cm-sato-role"
        with pytest.raises(httpx.HTTPError):  # nothing in clear on the hub's port
            async with httpx.AsyncClient(timeout=3) as plain:
                await plain.get(f"http://127.0.0.1:{port}/readyz")
        untrusted = ssl.create_default_context()  # the system store does not know the dev CA
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=untrusted, timeout=3) as client:
                await client.get(f"{base}/readyz")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
