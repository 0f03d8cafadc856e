"""ASGI middleware in front of every route: request limits, and the security headers.

``RequestGuard`` refuses, before any route runs, what no route can handle: a body over the
size limit (413, whether announced by Content-Length or sent chunked), a body that is not JSON
by its Content-Type (415), and paths and query strings that would reach the database as
something it refuses or chokes on (NUL characters; thousands of values for one parameter; a
parameter given twice, whose meaning the hub does not define). ``SecurityHeaders`` stamps every
response so browsers and proxies never cache or reinterpret patient data.

Both are pure ASGI (no BaseHTTPMiddleware): the body is counted as it streams, never buffered.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from renkei.settings import Settings
from schemas.outcome import Issue, operation_outcome
from services.errors import FHIR_JSON, FhirError

Scope = dict[str, Any]
Receive = Any
Send = Any

# A search never needs more; the SQL of 2,000 ORed values is what it would cost (SQLite
# refuses the expression tree, PostgreSQL plans it slowly).
MAX_VALUES_PER_PARAMETER = 50
MAX_PARAMETERS = 30
MAX_QUERY_BYTES = 8 * 1024
MAX_PATH_CHARS = 2048
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
# The OAuth token endpoint takes a form (RFC 6749 4.4) and answers a wrong body itself, as an
# OAuth error (invalid_request) rather than an OperationOutcome: its clients expect that shape.
_FORM_PATHS = frozenset({"/oauth/token"})
# Searches that define a repeated parameter as AND: the audit trail's date range
# (date=ge2026-11-01&date=lt2026-12-01). Everywhere else a repeat is refused.
REPEATABLE_PARAMETERS: dict[str, frozenset[str]] = {"/fhir/AuditEvent": frozenset({"date"})}
_DIGITS = re.compile(r"^[0-9]{1,18}$")

# Cached or shown only where nothing is about a patient: the CapabilityStatement and the
# discovery documents.
_CACHEABLE_PREFIXES = ("/fhir/metadata", "/.well-known/")
# API responses are JSON, never a page: nothing may run, load or frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _outcome(status: int, code: str, diagnostics: str, expression: str | None = None) -> bytes:
    return json.dumps(
        operation_outcome([Issue("error", code, diagnostics, expression)]), ensure_ascii=False
    ).encode()


async def _answer(send: Send, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [
        (b"content-type", FHIR_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def target_problem(
    path: str, raw_path: bytes | None, query: bytes
) -> tuple[int, str, str, str | None] | None:
    """(status, issue code, diagnostics, expression) for a path or query the hub refuses."""
    if len(path) > MAX_PATH_CHARS:
        return 414, "too-long", f"the path is longer than {MAX_PATH_CHARS} characters", None
    if "\x00" in path:
        return 400, "value", "the path contains a NUL character", None
    try:
        # The server decodes with replacement characters; a path that is not UTF-8 names
        # nothing here, and saying so beats a search for U+FFFD.
        if raw_path is not None:
            unquote_to_bytes(raw_path.decode("latin-1")).decode("utf-8")
    except UnicodeDecodeError:
        return 400, "value", "the path is not UTF-8", None
    if len(query) > MAX_QUERY_BYTES:
        return 414, "too-long", f"the query string is longer than {MAX_QUERY_BYTES} bytes", None
    try:
        pairs = parse_qsl(
            query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        return 400, "value", "the query string is not UTF-8", None
    if len(pairs) > MAX_PARAMETERS:
        return 400, "too-costly", f"more than {MAX_PARAMETERS} query parameters", None
    seen: set[str] = set()
    for name, value in pairs:
        where = _safe_name(name)
        if "\x00" in name or "\x00" in value:
            return 400, "value", "a query parameter contains a NUL character", where
        if name in seen and name not in REPEATABLE_PARAMETERS.get(path, frozenset()):
            # FHIR reads a repeat as AND; no search here defines it, and silently keeping one
            # of the values would answer a different question than the one asked.
            text = "a query parameter is given twice; give it once (values separated by commas)"
            return 400, "not-supported", text, where
        seen.add(name)
        if value.count(",") >= MAX_VALUES_PER_PARAMETER:
            text = f"more than {MAX_VALUES_PER_PARAMETER} values for one query parameter"
            return 400, "too-costly", text, where
    return None


def _safe_name(name: str) -> str | None:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-:.]{0,63}", name) else None


def _content_type_problem(content_type: str | None, path: str) -> str | None:
    if content_type is None:
        return None  # tolerated: older clients send JSON without saying so
    media, _, params = content_type.partition(";")
    if path in _FORM_PATHS:
        return None
    if media.strip().lower() not in _JSON_TYPES:
        return "the body must be application/fhir+json (or application/json)"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return "the body must be UTF-8 (charset=utf-8)"
    return None


class RequestGuard:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings  # read per request: the limit is max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = target_problem(
            scope.get("path", ""), scope.get("raw_path"), scope.get("query_string", b"")
        )
        if problem is not None:
            status, code, text, where = problem
            await _answer(send, status, _outcome(status, code, text, where))
            return
        limit = self.settings.max_message_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not _DIGITS.match(declared.strip()):
                await _answer(send, 400, _outcome(400, "structure", "invalid Content-Length"))
                return
            if int(declared) > limit:
                await _answer(send, 413, _too_large(limit))
                return
        has_body = (declared or "0").strip() != "0" or _header(scope, b"transfer-encoding")
        if scope.get("method") in _BODY_METHODS and has_body:
            text = _content_type_problem(_header(scope, b"content-type"), scope.get("path", ""))
            if text is not None:
                await _answer(send, 415, _outcome(415, "not-supported", text, None))
                return
        await self.app(scope, _limited(receive, limit), send)


def _too_large(limit: int) -> bytes:
    return _outcome(413, "too-costly", f"the body is larger than {limit} bytes")


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 as soon as the body passes ``limit`` (chunked bodies too)."""
    seen = 0

    async def receive_limited() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise FhirError(413, "too-costly", f"the body is larger than {limit} bytes")
        return message

    return receive_limited


class SecurityHeaders:
    """Headers on every response: no caching of patient data, no sniffing, no referrer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope.get("path", "").startswith(_CACHEABLE_PREFIXES)

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                for key, value in _security_headers(cacheable):
                    if key not in present:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _security_headers(cacheable: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]
    if not cacheable:
        headers.append((b"cache-control", b"no-store"))
    return headers
