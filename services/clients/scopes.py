"""SMART scopes for system clients: v1 (``system/*.read``) and v2 (``system/*.rs``) syntax.

A client is granted at most what its role (``system``) may do: the intersection of what it asks
for and SYSTEM_CEILING, answered in v2 syntax. Other scopes (``patient/...``, ``openid``, v2
scopes with query parameters) are not granted.
"""

from __future__ import annotations

import re

V2_ORDER = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
# What the system role can do at all (kept in step with services.auth.policy): read the
# region's directory, post messages ($process-message takes a Bundle), read and mark its
# organization's notifications (Communication), read the receipts of what it sent
# (MessageHeader/$status).
SYSTEM_CEILING: dict[str, str] = {
    "Bundle": "c",
    "Communication": "rus",
    "MessageHeader": "r",
    "Organization": "rs",
    "Practitioner": "rs",
    "PractitionerRole": "rs",
}
# The region office's own clients may also read the hub's metrics (GET /metrics): a scraper.
# Not a FHIR resource type; a name of the hub's, in the same syntax.
REGION_OFFICE_CEILING: dict[str, str] = {**SYSTEM_CEILING, "Metrics": "r"}
SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|[cruds]{1,5})")

SCOPES_SUPPORTED = [
    "system/*.read", "system/*.rs", "system/*.*", "system/*.cruds",
    *(f"system/{resource}.{letters}" for resource, letters in REGION_OFFICE_CEILING.items()),
]  # fmt: skip


def _letters(permission: str) -> str | None:
    if permission in V1:
        return V1[permission]
    # v2: letters in the order c r u d s, each at most once.
    ordered = "".join(letter for letter in V2_ORDER if letter in permission)
    return permission if ordered == permission else None


def grant(requested: str, ceiling: dict[str, str] = SYSTEM_CEILING) -> str:
    """The granted scope string (v2 syntax, sorted); "" when nothing asked for can be given."""
    granted: dict[str, set[str]] = {}
    for scope in requested.split():
        match = SCOPE.fullmatch(scope)
        if match is None:
            continue
        resource, permission = match.groups()
        letters = _letters(permission)
        if letters is None:
            continue
        for name, allowed in ceiling.items():
            if resource in ("*", name):
                granted.setdefault(name, set()).update(set(letters) & set(allowed))
    return " ".join(
        f"system/{name}.{''.join(letter for letter in V2_ORDER if letter in letters)}"
        for name, letters in sorted(granted.items())
        if letters
    )


def allows(scopes: frozenset[str], resource: str, letter: str) -> bool:
    """Whether granted ``scopes`` (v2 syntax, as ``grant`` answers them) cover one interaction."""
    for scope in scopes:
        match = SCOPE.fullmatch(scope)
        if match is None:
            continue
        name, permission = match.groups()
        letters = _letters(permission) or ""
        if name in ("*", resource) and letter in letters:
            return True
    return False
