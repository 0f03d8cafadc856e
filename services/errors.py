"""FHIR errors: every failure answers with an OperationOutcome, never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException

from schemas.outcome import InvalidMessage, Issue, operation_outcome
from services.responses import JSONResponse

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.issues = [Issue("error", code, diagnostics, expression)]
        self.headers = headers


def outcome_response(status: int, issues: list[Issue], headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        operation_outcome(issues), status_code=status, media_type=FHIR_JSON, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(_request: Request, error: FhirError) -> JSONResponse:
        return outcome_response(error.status, error.issues, error.headers)

    @app.exception_handler(InvalidMessage)
    async def invalid_message(_request: Request, error: InvalidMessage) -> JSONResponse:
        return outcome_response(error.status, error.issues)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden"}
        return outcome_response(
            error.status_code,
            [Issue("error", code.get(error.status_code, "processing"), str(error.detail), None)],
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        # Name the parameter, never echo the value (it may be personal data).
        issues = [
            Issue("error", "invalid", f"{item['msg']}", ".".join(str(p) for p in item["loc"]))
            for item in error.errors()
        ]
        return outcome_response(400, issues)

    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(OSError)
    async def database_error(request: Request, error: Exception) -> JSONResponse:
        if not database_unavailable(error):
            return await unexpected(request, error)
        # The database is away (stopped, restarting, unreachable, a SQLite lock held too long):
        # nothing was stored, so the sender may simply retry. 503, never a 500 or a silent 2xx.
        log.warning("database unavailable (%s); answered 503", type(error).__name__)
        return outcome_response(
            503,
            [
                Issue(
                    "error",
                    "transient",
                    "データベースに一時的に接続できません。再送してください / "
                    "the database is unavailable for a moment; nothing was stored, retry",
                    None,
                )
            ],
            {"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        return await unexpected(request, error)

    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error (%s)", type(error).__name__)
        return outcome_response(500, [Issue("error", "exception", "internal error", None)])


# PostgreSQL SQLSTATE classes of a server that is away: 08 connection exception, 57 operator
# intervention (shutting down, starting up, terminated by the administrator).
_AWAY_SQLSTATE_CLASSES = ("08", "57")


def database_unavailable(error: BaseException) -> bool:
    """The database (not the request) failed: stopped, restarting, its socket gone, a SQLite
    lock held too long. An integrity or programming error is not this: it stays a 500."""
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        return (
            error.connection_invalidated
            or sqlstate[:2] in _AWAY_SQLSTATE_CLASSES
            # asyncpg's connection left mid-protocol by a server that went away
            or type(error.orig).__name__ == "InternalClientError"
        )
    # Connecting failed below SQLAlchemy (asyncpg: the Unix socket is gone, refused, reset);
    # an OSError of anything else (a key file missing) is the hub's own fault, a 500.
    return isinstance(error, OSError) and _raised_in_database_driver(error)


_DRIVER_MODULES = ("asyncpg", "aiosqlite", "sqlalchemy")


def _raised_in_database_driver(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.split(".", 1)[0] in _DRIVER_MODULES:
            return True
        tb = tb.tb_next
    return False
