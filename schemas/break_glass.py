"""The break-glass MessageHeader extension, as the R4 StructureDefinition the hub publishes.

A sender marks an acute change as an emergency with
``{"url": BREAK_GLASS_EXTENSION, "valueString": "<why consent cannot wait>"}`` on the
MessageHeader (schemas/message.py checks it; consumers/routing/rules.py says what it does).
"""

from __future__ import annotations

from typing import Any

from schemas.canonical import BREAK_GLASS_EXTENSION

DESCRIPTION = (
    "An acute change (急変) that must reach the physicians, the visiting nurse and the "
    "emergency hospital at once, with or without the patient's consent "
    "(個人情報保護法 27条1項2号: to protect life or body when consent is difficult to obtain). "
    "valueString is the reason, required; only acute-change messages may carry it. "
    "The region office reviews every use."
)


def structure_definition() -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": "break-glass",
        "url": BREAK_GLASS_EXTENSION,
        "version": "1.0.0",
        "name": "RenkeiBreakGlass",
        "title": "連携ハブ 緊急時提供（ブレークグラス）",
        "status": "active",
        "publisher": "Renkei Hub",
        "description": DESCRIPTION,
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": "MessageHeader"}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Extension", "path": "Extension", "short": "Break-glass", "max": "1"},
                {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
                {
                    "id": "Extension.url",
                    "path": "Extension.url",
                    "fixedUri": BREAK_GLASS_EXTENSION,
                },
                {
                    "id": "Extension.value[x]",
                    "path": "Extension.value[x]",
                    "short": "Why consent cannot wait",
                    "min": 1,
                    "type": [{"code": "string"}],
                    "maxLength": 1000,
                },
            ]
        },
    }
