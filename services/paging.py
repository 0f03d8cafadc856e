"""``_count`` and ``_offset`` of every paged search, read strictly.

``str.isdigit`` accepts "²" and "١٢" (which ``int`` then refuses) and pydantic's int accepts
"5_0" and " 5"; an unbounded offset overflows the database's 64-bit integer. Only ASCII digits
are numbers here, and offsets stop at MAX_OFFSET.
"""

from __future__ import annotations

import re

from services.errors import FhirError

# A million rows into one search is further than any client pages; past it is an attack or a bug.
MAX_OFFSET = 1_000_000
_ASCII_NUMBER = re.compile(r"^[0-9]{1,12}$")


def paging_int(value: str | None, name: str, default: int, maximum: int) -> int:
    """The parameter's value, 400 when it is not an ASCII number or is beyond ``maximum``."""
    if value is None:
        return default
    if not _ASCII_NUMBER.match(value):
        raise FhirError(400, "invalid", f"{name} must be a non-negative integer", name)
    number = int(value)
    if number > maximum:
        raise FhirError(400, "too-costly", f"{name} must be at most {maximum}", name)
    return number
