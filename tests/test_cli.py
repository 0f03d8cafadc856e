"""The command line: tokens signed by the hub's key in the data dir, and worker guards."""

from __future__ import annotations

import os
import subprocess
import sys

from services.auth.service import Role, signing_key, verify_token


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    env["RENKEI_DATA_DIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_token_issue_prints_a_token_the_hub_accepts(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "issue", "--org", "chuo-pharmacy", "--role", "member",
                     "--practitioner", "ph-1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    principal = verify_token(signing_key(tmp_path / "keys").public_key(), result.stdout.strip())
    assert (principal.org_id, principal.role, principal.practitioner_id) == (
        "chuo-pharmacy", Role.MEMBER, "ph-1",
    )  # fmt: skip


def test_token_issue_refuses_an_unknown_role(tmp_path) -> None:
    result = run_cli(tmp_path, "token", "issue", "--org", "x", "--role", "root")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_worker_needs_the_cluster_named(tmp_path) -> None:
    result = run_cli(tmp_path, "worker", "router")
    assert result.returncode == 2
    assert "RENKEI_KAFKA_BOOTSTRAP" in result.stderr
