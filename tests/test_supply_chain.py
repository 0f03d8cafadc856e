"""Supply chain: the lock file pins everything pyproject.toml asks for, the virtualenv runs
exactly the locked set, and no locked version has a known vulnerability (pip-audit).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# Known vulnerabilities the region accepts, each with the reason (pip-audit --ignore-vuln).
# Empty: every reported vulnerability fails the suite until the pin is upgraded (make lock).
ACCEPTED_VULNERABILITIES: dict[str, str] = {}


def locked() -> dict[str, str]:
    """name -> version of every ``name==version`` pin in the lock."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", LOCK.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def closure(roots: list[Requirement]) -> dict[str, set[str]]:
    """Every distribution ``roots`` need here (extras and markers evaluated) -> who asked."""
    environment = default_environment()
    needed: dict[str, set[str]] = {}
    todo = [(r, "pyproject.toml") for r in roots]
    while todo:
        requirement, parent = todo.pop()
        extras = requirement.extras or {""}
        if requirement.marker and not any(
            requirement.marker.evaluate({**environment, "extra": e}) for e in extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        first = name not in needed
        needed.setdefault(name, set()).add(parent)
        if not first and not requirement.extras:
            continue
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": e}) for e in extras
            ):
                child.marker = None
                todo.append((child, name))
    return needed


def test_every_dependency_in_pyproject_is_locked_at_a_version_it_allows() -> None:
    pins = locked()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} in requirements.lock does not satisfy {requirement}: make lock"
        )


def test_the_virtualenv_runs_exactly_the_locked_set() -> None:
    pins = locked()
    for name, parents in closure(project_requirements()).items():
        assert name in pins, f"{name} (needed by {sorted(parents)}) is not locked: make lock"
        installed = metadata.version(name)
        assert installed == pins[name], f"{name} {installed} installed, {pins[name]} locked"


def test_every_pin_has_hashes() -> None:
    text = LOCK.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[-1])
    pinned = [b for b in blocks if "==" in b.split("\n", 1)[0]]
    assert len(pinned) == len(locked()) > 50
    for block in pinned:
        assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_no_known_vulnerability_in_the_locked_set() -> None:
    """pip-audit against PyPI's vulnerability data (needs the network, as `make lock` does)."""
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(LOCK),
        "--require-hashes",
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--format",
        "json",
        *(f"--ignore-vuln={vuln}" for vuln in ACCEPTED_VULNERABILITIES),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    report = json.loads(result.stdout or "{}")
    found = [
        f"{dep['name']}=={dep['version']}: {vuln['id']} (fixed in {vuln.get('fix_versions')})"
        for dep in report.get("dependencies", [])
        for vuln in dep.get("vulns", [])
    ]
    assert not found, "known vulnerabilities; upgrade the pins (make lock):\n" + "\n".join(found)
    assert result.returncode == 0, result.stderr[-2000:]
    audited = {canonicalize_name(dep["name"]) for dep in report["dependencies"]}
    assert audited >= set(locked()) - {"renkei-hub"}, set(locked()) - audited
