"""Property-based hostile input (hypothesis): mutated messages and registry resources, and
arbitrary JSON and query strings at every write and search endpoint. Whatever arrives: never a
5xx, never a traceback in the body, always an OperationOutcome on 4xx.

Hypothesis drives synchronous test functions; each request runs on the suite's event loop
(the one the ``api`` hub and its database pool live on), which is idle while a sync test runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import EventType
from services.demo_region import region_resources
from services.registry.models import REGISTRY_TYPES
from tests.endpoints import PROCESS, REGION, SEARCHES, WRITES
from tests.hubtools import HOSPITAL, load_region, message

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # no example database written into the repository
)

PARAMETER_NAMES = [
    "_count", "_offset", "_id", "identifier", "patient", "subject", "organization",
    "practitioner", "participant", "status", "category", "priority", "_since",
    "received:missing", "agent", "entity", "entity-type", "date", "type", "subtype", "action",
    "outcome", "_sort",
]  # fmt: skip

ODD_TEXT = ["\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "𠮷", "\uffff", "三沢\x00花子", "²"]


class Runner:
    """Runs the api's requests on the loop its hub lives on, from a synchronous test."""

    def __init__(self, api, loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.loop = loop

    def request(self, method: str, path: str, who: tuple[str, str], **kwargs) -> httpx.Response:
        headers = {**self.api.headers(*who), **kwargs.pop("headers", {})}
        call = self.api.client.request(method, path, headers=headers, **kwargs)
        return self.loop.run_until_complete(asyncio.wait_for(call, 60))


@pytest.fixture
async def runner(api) -> Runner:
    await load_region(api.hub)
    return Runner(api, asyncio.get_running_loop())


def assert_handled(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text
    if response.status_code >= 400 and response.url.path == "/oauth/token":
        # RFC 6749 5.2: the token endpoint's errors are OAuth JSON, what its clients parse.
        assert response.headers["content-type"].startswith("application/json")
        assert isinstance(response.json().get("error"), str)
    elif response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]


# --- strategies -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(ODD_TEXT)
)
any_json = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(ODD_TEXT), children, max_size=5)
    ),
    max_leaves=30,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"extension": leaf}
    return leaf


@st.composite
def mutated(draw: st.DrawFn, document: dict) -> dict:
    """``document`` with one to three fields dropped, duplicated, retyped, nested, blown up."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        operation = draw(
            st.sampled_from(["drop", "duplicate", "retype", "nest", "huge", "odd-text"])
        )
        if operation == "drop":
            del parent[key]
        elif operation == "duplicate":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(parent[key]))
            else:
                parent[key] = [parent[key], copy.deepcopy(parent[key])]
        elif operation == "retype":
            parent[key] = draw(any_json)
        elif operation == "nest":
            parent[key] = _nested(draw(st.integers(20, 200)), parent[key])
        elif operation == "huge":
            parent[key] = "x" * draw(st.integers(10_000, 300_000))
        else:
            parent[key] = draw(st.sampled_from(ODD_TEXT)) + draw(st.text(max_size=10))
    return doc


MESSAGES = [message(event) for event in EventType]
RESOURCES = region_resources()


def body_of(document: Any) -> bytes:
    # ensure_ascii: lone surrogates become \ud800 escapes, valid JSON text the hub must refuse.
    return json.dumps(document, ensure_ascii=True).encode()


# --- properties -----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_messages_never_break_the_intake(runner: Runner, data: st.DataObject) -> None:
    bundle = data.draw(st.sampled_from(MESSAGES).flatmap(mutated))
    header = bundle.get("entry", [{}])[0] if isinstance(bundle.get("entry"), list) else {}
    if isinstance(header, dict) and isinstance(header.get("resource"), dict):
        header["resource"]["id"] = data.draw(st.uuids()).hex  # not a repeat of an earlier one
    response = runner.request(
        "POST",
        PROCESS,
        (HOSPITAL, "system"),
        content=body_of(bundle),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert_handled(response)


@FUZZ
@given(data=st.data())
def test_mutated_registry_resources_never_break_the_registry(
    runner: Runner, data: st.DataObject
) -> None:
    original = data.draw(st.sampled_from(RESOURCES))
    resource = data.draw(mutated(original))
    resource_type, resource_id = original["resourceType"], original["id"]
    method = data.draw(st.sampled_from(["PUT", "POST"]))
    path = f"/fhir/{resource_type}" + (f"/{resource_id}" if method == "PUT" else "")
    response = runner.request(
        method,
        path,
        REGION,
        content=body_of(resource),
        headers={"Content-Type": "application/json"},
    )
    assert_handled(response)


@FUZZ
@given(
    endpoint=st.sampled_from(WRITES),
    document=any_json | st.dictionaries(st.just("resourceType"), st.sampled_from(REGISTRY_TYPES)),
)
def test_arbitrary_json_at_every_write_endpoint(runner: Runner, endpoint, document) -> None:
    method, path, who = endpoint
    response = runner.request(
        method, path, who, content=body_of(document), headers={"Content-Type": "application/json"}
    )
    assert_handled(response)


@FUZZ
@given(
    endpoint=st.sampled_from(SEARCHES),
    params=st.lists(
        st.tuples(
            st.sampled_from(PARAMETER_NAMES) | st.text(max_size=10),
            st.text(max_size=40) | st.sampled_from(ODD_TEXT) | st.integers().map(str),
        ),
        max_size=6,
    ),
)
def test_arbitrary_query_strings_at_every_search(runner: Runner, endpoint, params) -> None:
    path, who = endpoint
    # surrogatepass: a lone surrogate goes out as the (invalid UTF-8) bytes a client could send.
    query = urlencode(params, encoding="utf-8", errors="surrogatepass")
    response = runner.request("GET", f"{path}?{query}", who)
    assert_handled(response)
