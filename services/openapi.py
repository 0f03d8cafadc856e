"""Request-body schemas for /openapi.json.

The routes read their bodies raw (the hub's own FHIR validation gives better errors than
FastAPI's), so FastAPI cannot see them; these ``openapi_extra`` declarations put them in the
spec, for client generators and for schemathesis (tests/test_openapi_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from services.errors import FHIR_JSON

FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    content = {FHIR_JSON: {"schema": schema}, "application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def resource_schema(resource_type: str) -> dict[str, Any]:
    """A FHIR resource object: its resourceType, the rest as FHIR R4 says (checked by the hub)."""
    return {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "const": resource_type},
            "id": {"type": "string", "pattern": FHIR_ID},
        },
        "additionalProperties": True,
    }


def resource_body(resource_type: str) -> dict[str, Any]:
    return _body(resource_schema(resource_type), f"a FHIR R4 {resource_type} resource")


def message_body() -> dict[str, Any]:
    bundle = resource_schema("Bundle")
    bundle["required"] = ["resourceType", "type", "entry"]
    bundle["properties"] |= {
        "type": {"type": "string", "const": "message"},
        "entry": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "fullUrl": {"type": "string"},
                    "resource": {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {"resourceType": {"type": "string"}},
                    },
                },
            },
        },
    }
    return _body(bundle, "a FHIR R4 message Bundle whose first entry is a MessageHeader")


def link_body() -> dict[str, Any]:
    reference = {"type": "string", "pattern": r"^Patient/[A-Za-z0-9\-.]{1,64}$"}
    plain = {
        "type": "object",
        "required": ["patient"],
        "properties": {"patient": reference},
    }
    parameters = {
        "type": "object",
        "required": ["resourceType", "parameter"],
        "properties": {
            "resourceType": {"type": "string", "const": "Parameters"},
            "parameter": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "valueReference"],
                    "properties": {
                        "name": {"type": "string", "const": "patient"},
                        "valueReference": {
                            "type": "object",
                            "required": ["reference"],
                            "properties": {"reference": reference},
                        },
                    },
                },
            },
        },
    }
    return _body(
        {"oneOf": [plain, parameters]},
        'the registry Patient: {"patient": "Patient/<id>"} or a FHIR Parameters',
    )


def search_parameters(names: list[str]) -> dict[str, Any]:
    """Query parameters of a registry search (read from the raw query string by the view)."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in ["_count", "_offset", "_id", "identifier", *names]
        ]
    }
