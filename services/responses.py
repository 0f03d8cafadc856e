"""The hub's JSON responses, rendered with orjson (the searchsets are the hot read path).

The same bytes a standard JSONResponse would send, compact and UTF-8, produced several times
faster. What orjson cannot encode (an integer beyond 64 bits, which JSON and a registry body
may hold) falls back to the standard encoder rather than failing the response.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StandardJSONResponse


class JSONResponse(_StandardJSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return json.dumps(
                content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode("utf-8")
