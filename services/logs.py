"""Logging without personal data: the access log prints paths, never query strings.

Query strings carry search values (``identifier=system|chart number``, ``subject=``), so the
uvicorn access logger drops them before any handler (or a test's caplog) sees the record.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class PathOnlyAccessLog(logging.Filter):
    """uvicorn's access record args are (client, method, path with query, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def install() -> None:
    """Idempotent: the filter sits on the logger, so uvicorn's own dictConfig keeps it."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, PathOnlyAccessLog) for f in logger.filters):
        logger.addFilter(PathOnlyAccessLog())
