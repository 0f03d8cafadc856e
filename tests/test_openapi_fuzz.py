"""schemathesis against the hub's own /openapi.json: requests generated from the spec (request
bodies included, services/openapi.py), sent with valid tokens; no 5xx, 4xx bodies are
OperationOutcomes, and responses match the schemas the spec declares.

The spec is read from the app built over the ``api`` fixture's hub; cases are sent through
the same ASGI transport as every other test (on the loop the hub's database pool lives on)
and checked with schemathesis's own checks.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import openapi
from schemathesis.checks import not_a_server_error, response_schema_conformance

from services.app import create_app
from tests.hubtools import HOSPITAL
from tests.test_property_fuzz import REGION, Runner, assert_handled, runner  # noqa: F401

CHECKS = [not_a_server_error, response_schema_conformance]


def operations(runner: Runner) -> list:  # noqa: F811
    schema = openapi.from_dict(create_app(runner.api.hub).openapi())
    # A live stream never ends on its own: streams end at once, as at hub shutdown.
    runner.api.hub.notifications_routed.close_streams()
    # /readyz answers 503 by design here: the api fixture's hub has no broker.
    found = [result.ok() for result in schema.get_all_operations()]
    return [operation for operation in found if operation.path != "/readyz"]


def test_the_spec_declares_request_bodies(runner: Runner) -> None:  # noqa: F811
    spec = create_app(runner.api.hub).openapi()
    process = spec["paths"]["/fhir/$process-message"]["post"]["requestBody"]["content"]
    bundle = process["application/fhir+json"]["schema"]
    assert bundle["properties"]["resourceType"]["const"] == "Bundle"
    assert bundle["properties"]["type"]["const"] == "message"
    assert "application/json" in process
    put = spec["paths"]["/fhir/Patient/{resource_id}"]["put"]["requestBody"]["content"]
    assert put["application/fhir+json"]["schema"]["properties"]["resourceType"]["const"] == (
        "Patient"
    )
    link = spec["paths"]["/admin/unmatched-events/{event_id}/$link"]["post"]["requestBody"]
    shapes = link["content"]["application/json"]["schema"]["oneOf"]
    assert shapes[0]["properties"]["patient"]["pattern"].startswith("^Patient/")
    with_bodies = [
        f"{method} {path}"
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("post", "put")
        and "requestBody" in operation
        and not path.endswith(("$read", "$acknowledge"))
    ]
    assert len(with_bodies) == 14, with_bodies  # 6 POST + 6 PUT, $process-message, $link
    assert "/docs" not in json.dumps(spec["paths"])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_schemathesis_finds_no_server_error(runner: Runner, data: st.DataObject) -> None:  # noqa: F811
    found = operations_cache.get(id(runner))
    if found is None:
        found = operations_cache[id(runner)] = operations(runner)
    operation = data.draw(st.sampled_from(found))
    case = data.draw(operation.as_strategy())
    who = (HOSPITAL, "system") if operation.path == "/fhir/$process-message" else REGION
    if operation.path.startswith("/fhir/AuditEvent"):
        who = ("region-office", "auditor")  # the trail's only readers
    kwargs = case.as_transport_kwargs(base_url="http://hub")
    headers = {**(kwargs.pop("headers", None) or {}), **runner.api.headers(*who)}
    method, url = kwargs.pop("method"), kwargs.pop("url")
    # Only the arguments httpx takes; schemathesis may add transport options it does not.
    kept = {k: kwargs[k] for k in ("params", "json", "content", "data") if k in kwargs}
    response = runner.loop.run_until_complete(
        runner.api.client.request(method, url, headers=headers, **kept)
    )
    assert_handled(response)
    case.validate_response(response, checks=CHECKS)


operations_cache: dict[int, list] = {}
