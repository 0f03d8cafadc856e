"""JSON from outside the hub, read so that no input can turn into a 500 further on.

Python's json module accepts things the hub cannot keep or process: nesting deep enough to
exhaust the recursion limit later (pydantic, deepcopy, json.dumps), integers beyond
``sys.get_int_max_str_digits`` (ValueError), floats that overflow to infinity (PostgreSQL jsonb
refuses them), NUL characters (PostgreSQL refuses them in text and jsonb) and lone surrogates
(not encodable as UTF-8), and duplicate keys (which value counts is ambiguous). ``load_json``
refuses all of them with ``UnsafeJson`` whose text is fixed (never quotes the input).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# FHIR resources nest perhaps 15 levels (a Bundle's entry, an extension inside an extension);
# 64 leaves room for any real document and none for a stack-exhaustion attack.
MAX_DEPTH = 64
# NUL and lone UTF-16 surrogates: valid in JSON text, unstorable in PostgreSQL / UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnsafeJson(ValueError):
    """The body is not JSON the hub accepts; ``reason`` is fixed text, ``code`` an issue type."""

    def __init__(self, reason: str, code: str = "structure") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def load_json(raw: bytes | bytearray | memoryview) -> Any:
    """Decode UTF-8 (a byte-order mark is tolerated) and parse, refusing unsafe JSON."""
    raw = bytes(raw)
    try:
        # utf-8-sig: tolerate a byte-order mark, which some Windows senders add.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Only the offset: the bytes themselves may be part of a name.
        raise UnsafeJson(f"body is not UTF-8 (byte offset {exc.start})") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        # exc.msg is fixed parser text and the position is safe; the document is never quoted.
        where = f"line {exc.lineno}, column {exc.colno}"
        raise UnsafeJson(f"body is not valid JSON: {exc.msg} ({where})") from None
    except UnsafeJson:
        raise
    except RecursionError:
        raise UnsafeJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        # int() refusing more digits than sys.get_int_max_str_digits (4300).
        raise UnsafeJson("a JSON number has too many digits", "value") from None
    check_tree(data)
    return data


def check_tree(data: Any) -> None:
    """Depth, NULs and lone surrogates of an already parsed document (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _UNSTORABLE.search(node):
                raise UnsafeJson("a string contains a NUL character or a lone surrogate", "value")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise UnsafeJson(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                stack.append((key, depth))
                stack.append((value, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are invalid in FHIR JSON and make "which value counts" ambiguous between
    # the hub and the recipients' parsers.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise UnsafeJson("duplicate property name in a JSON object")
        obj[key] = value
    return obj


def _reject_constant(_name: str) -> Any:
    raise UnsafeJson("NaN and Infinity are not JSON numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJson("a JSON number is out of range", "value")
    return value
