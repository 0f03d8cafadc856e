"""Turn pydantic validation errors from fhir.resources into Issues without personal data.

pydantic errors carry the offending input (``input``) and often echo it in ``msg``; both may be
a name, a birth date or an identifier. We keep only the location and a fixed description of
the kind of error, chosen from the error type or from fhir_core messages we know to be safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.outcome import Issue

MAX_DATATYPE_ISSUES = 20

# A location segment we are willing to echo: an element name. Anything else (e.g. an unknown
# JSON key, which the sender controls and could in theory be anything) is reported as "*".
_ELEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Segments pydantic adds that are not FHIR elements.
_INTERNAL_SEGMENTS = frozenset({"root"})

_PRIMITIVE_REGEX_MSG = re.compile(r"(\w+) value string does not match spec regex")
_CHOICE_REQUIRED_MSG = re.compile(r"Expect any of field value from this list \[([^\]]*)\]")
_CHOICE_MULTIPLE_MSG = re.compile(
    r"Any of one field value is expected from this list \[([^\]]*)\], but got multiple"
)

# pydantic error type -> (FHIR issue type, description). Descriptions never include input.
_BY_TYPE: dict[str, tuple[str, str]] = {
    "missing": ("required", "required element is missing"),
    "model_field_validation.missing": ("required", "required element is missing"),
    "extra_forbidden": ("structure", "unknown element"),
    "string_type": ("value", "expected a string"),
    "string_too_short": ("value", "string is too short (empty strings are not allowed)"),
    "string_pattern_mismatch": ("value", "value does not match the datatype's pattern"),
    "bool_type": ("value", "invalid boolean"),
    "bool_parsing": ("value", "invalid boolean"),
    "int_type": ("value", "invalid integer"),
    "int_parsing": ("value", "invalid integer"),
    "int_from_float": ("value", "invalid integer"),
    "float_type": ("value", "invalid decimal"),
    "float_parsing": ("value", "invalid decimal"),
    "decimal_type": ("value", "invalid decimal"),
    "decimal_parsing": ("value", "invalid decimal"),
    "date_from_datetime_inexact": ("value", "invalid date"),
    "date_type": ("value", "invalid date"),
    "date_parsing": ("value", "invalid date"),
    "datetime_type": ("value", "invalid dateTime"),
    "datetime_parsing": ("value", "invalid dateTime"),
    "list_type": ("structure", "expected an array"),
    "dict_type": ("structure", "expected an object"),
    "model_type": ("structure", "expected an object"),
    "model_attributes_type": ("structure", "expected an object"),
    "json_invalid": ("structure", "expected an object"),
    "model_validation_format": ("structure", "expected an object"),
    "url_parsing": ("value", "invalid URL"),
}


def fhirpath(loc: Sequence[Any], root: str = "Bundle") -> str:
    """('entry', 1, 'resource', 'birthDate') -> 'Bundle.entry[1].resource.birthDate'."""
    path = root
    for seg in loc:
        if isinstance(seg, int):
            path += f"[{seg}]"
        elif seg in _INTERNAL_SEGMENTS:
            continue
        elif isinstance(seg, str) and _ELEMENT_NAME.match(seg):
            path += f".{seg}"
        else:
            path += ".*"
    return path


def issues_from_pydantic(errors: Iterable[dict[str, Any]], root: str = "Bundle") -> list[Issue]:
    issues: list[Issue] = []
    for err in errors:
        if len(issues) == MAX_DATATYPE_ISSUES:
            issues.append(
                Issue("information", "too-costly", "further datatype errors were not reported")
            )
            break
        issues.append(_issue_from_error(err, root))
    return issues


def _issue_from_error(err: dict[str, Any], root: str) -> Issue:
    path = fhirpath(err.get("loc", ()), root)
    etype = str(err.get("type", ""))
    msg = str(err.get("msg", ""))
    if etype == "value_error":
        return _issue_from_value_error(msg, path)
    code, text = _BY_TYPE.get(etype, ("value", f"invalid value ({_safe_code(etype)})"))
    return Issue("error", code, text, path)


def _issue_from_value_error(msg: str, path: str) -> Issue:
    # fhir_core's own validators: known message shapes only; anything else is reported
    # generically because its text might contain the input.
    if m := _PRIMITIVE_REGEX_MSG.search(msg):
        primitive = m.group(1)
        primitive = primitive[:1].lower() + primitive[1:]  # "DateTime" -> "dateTime"
        return Issue("error", "value", f"invalid {_safe_code(primitive)}", path)
    if m := _CHOICE_REQUIRED_MSG.search(msg):
        names = _element_names(m.group(1))
        return Issue(
            "error",
            "required",
            f"one of {', '.join(names)} is required",
            _choice_path(path, names),
        )
    if m := _CHOICE_MULTIPLE_MSG.search(msg):
        names = _element_names(m.group(1))
        return Issue(
            "error",
            "structure",
            f"only one of {', '.join(names)} may be present",
            _choice_path(path, names),
        )
    return Issue("error", "value", "invalid value", path)


def _element_names(listing: str) -> list[str]:
    names = [n.strip().strip("'\"") for n in listing.split(",")]
    return [n for n in names if _ELEMENT_NAME.match(n)]


def _choice_path(path: str, names: list[str]) -> str:
    """Point at the choice element, e.g. 'deceasedBoolean', 'deceasedDateTime' -> deceased[x]."""
    prefix = _common_prefix(names)
    return f"{path}.{prefix}[x]" if prefix else path


def _common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _safe_code(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", text) else "unknown"
