"""Sample message Bundles and helpers to break them in specific ways, for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The contract's samples ship inside the schemas package (copied from shared/samples), so CI,
# which clones the repo elsewhere, and `renkei demo` read the same files.
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "schemas" / "samples"

SAMPLE_NAMES = ("admission", "discharge", "acute-change", "end-of-life")

# Personal data in every sample Patient; none of it may appear in an error outcome.
SAMPLE_PERSONAL_DATA = (
    "三沢",
    "花子",
    "ミサワ",
    "ハナコ",
    "1936-05-12",
    "00012345",
    "青森県",
    "033-0001",
)


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of one sample Bundle (tests mutate it freely)."""
    return json.loads((SAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))


def encode(bundle: Any) -> bytes:
    return json.dumps(bundle, ensure_ascii=False).encode("utf-8")


def header(bundle: dict[str, Any]) -> dict[str, Any]:
    return bundle["entry"][0]["resource"]


def resource_at(bundle: dict[str, Any], index: int) -> dict[str, Any]:
    return bundle["entry"][index]["resource"]


def index_of(bundle: dict[str, Any], resource_type: str) -> int:
    for i, entry in enumerate(bundle["entry"]):
        if entry["resource"]["resourceType"] == resource_type:
            return i
    raise LookupError(resource_type)
