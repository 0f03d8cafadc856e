"""orjson on the hot paths gives the same JSON as the standard encoder, big integers included."""

from __future__ import annotations

import json

from renkei.crypto import dumps
from services.responses import JSONResponse

DOCUMENT = {"resourceType": "Basic", "text": "急変・看取り", "n": 12, "x": 0.5, "ok": True}
BIG = {"valueInteger": 2**80}  # valid JSON; beyond what orjson encodes


def standard(content: object) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def test_responses_render_as_the_standard_encoder_would() -> None:
    assert JSONResponse(DOCUMENT).body == standard(DOCUMENT)
    assert JSONResponse(BIG).body == standard(BIG)  # the fallback, not a 500


def test_sealed_documents_keep_every_digit() -> None:
    assert dumps(DOCUMENT) == standard(DOCUMENT)
    assert json.loads(dumps(BIG)) == BIG
