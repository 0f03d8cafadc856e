"""The command line: tokens signed by the hub's key ring, issued only for registered
organizations, and worker guards."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt

from renkei.db import create_engine, migrate, session_factory
from services.auth.keys import load_ring
from services.auth.service import Role, verify_token
from services.registry import service as registry


def run_cli(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    environment["RENKEI_DATA_DIR"] = str(tmp_path)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def register(tmp_path, org_id: str) -> None:
    """The Organization in the SQLite database the CLI uses by default (DATA_DIR)."""

    async def write() -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'renkei.sqlite3'}")
        await migrate(engine)
        async with session_factory(engine)() as session:
            body = {"resourceType": "Organization", "id": org_id, "name": "中央薬局"}
            await registry.write(session, "Organization", body, org_id)
            await session.commit()
        await engine.dispose()

    asyncio.run(write())


def test_token_issue_prints_a_token_the_hub_accepts(tmp_path) -> None:
    register(tmp_path, "chuo-pharmacy")
    result = run_cli(tmp_path, "token", "issue", "--org", "chuo-pharmacy", "--role", "member",
                     "--practitioner", "ph-1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    principal, expires = verify_token(load_ring(tmp_path / "keys"), result.stdout.strip())
    assert (principal.org_id, principal.role, principal.practitioner_id) == (
        "chuo-pharmacy", Role.MEMBER, "ph-1",
    )  # fmt: skip
    # One hour by default.
    assert abs(expires.timestamp() - time.time() - 3600) < 60


def test_token_issue_refuses_organizations_not_in_the_registry(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "issue", "--org", "chuo-pharmacy", "--role", "member")
    assert result.returncode == 2
    assert "not in the registry" in result.stderr and not result.stdout


def test_region_admin_only_for_the_region_office(tmp_path) -> None:
    register(tmp_path, "chuo-pharmacy")
    refused = run_cli(tmp_path, "token", "issue", "--org", "chuo-pharmacy", "--role",
                      "region-admin")  # fmt: skip
    assert refused.returncode == 2 and "region office" in refused.stderr
    # The region office needs no registry entry yet: the hub creates it at its first start.
    issued = run_cli(tmp_path, "token", "issue", "--org", "region-office", "--role",
                     "region-admin")  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert jwt.decode(issued.stdout.strip(), options={"verify_signature": False})["role"] == (
        "region-admin"
    )


def test_token_lifetime_is_at_most_a_day(tmp_path) -> None:
    refused = run_cli(tmp_path, "token", "issue", "--org", "region-office", "--role", "member",
                      "--ttl", str(24 * 3600 + 1))  # fmt: skip
    assert refused.returncode == 2 and "24 hours" in refused.stderr
    day = run_cli(tmp_path, "token", "issue", "--org", "region-office", "--role", "member",
                  "--ttl", str(24 * 3600))  # fmt: skip
    assert day.returncode == 0, day.stderr


def test_token_issue_refuses_an_unknown_role(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "issue", "--org", "x", "--role", "root")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_worker_needs_the_cluster_named(tmp_path) -> None:
    result = run_cli(tmp_path, "worker", "router")
    assert result.returncode == 2
    assert "RENKEI_KAFKA_BOOTSTRAP" in result.stderr


def test_up_refuses_half_a_tls_configuration(tmp_path) -> None:
    result = run_cli(tmp_path, "up", env={"RENKEI_TLS_CERT": str(tmp_path / "server.pem")})
    assert result.returncode == 2
    assert "RENKEI_TLS_KEY" in result.stderr


def test_dev_ca_command_writes_the_files_it_names(tmp_path) -> None:
    result = run_cli(tmp_path, "dev-ca", "--dir", str(tmp_path / "ca"), "--hosts", "hub.local")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ca" / "server.pem").stat().st_mode & 0o777 == 0o600
    assert f"RENKEI_TLS_CERT={tmp_path / 'ca' / 'server.pem'}" in result.stdout
