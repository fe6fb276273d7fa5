"""How the API answers what went wrong: a service that is down is a 503 with Retry-After (worth
retrying), a validation error a 422 listing each bad field, anything else a 500 that shows
nothing of the server (the server log has the details)."""

from __future__ import annotations

import psycopg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from temporalio.service import RPCError, RPCStatusCode

from api import security

log = structlog.get_logger(__name__)
# Connection-level database failures (server down or restarting, pool exhausted): the request may
# succeed later, so they are 503s with Retry-After, not 500s.
DB_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
RETRY_AFTER_S = 5


def unavailable(exc: BaseException) -> str | None:
    """Which service an exception says is unreachable or busy (503: worth retrying), if any."""
    if isinstance(exc, DB_UNAVAILABLE):
        return "database"
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.UNAVAILABLE:
        return "Temporal"
    return None


def unavailable_response(exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the {unavailable(exc)} is unavailable: try again shortly"},
        status_code=503,
        headers={**security.SECURITY_HEADERS, "Retry-After": str(RETRY_AFTER_S)},
    )


async def internal(request: Request, exc: Exception) -> JSONResponse:
    # No exc_info here: a rich traceback prints frame locals, and those hold the request's headers
    # (the API key). The server logs the plain traceback as the exception leaves.
    log.error("api.internal_error", method=request.method, path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    if unavailable(exc):
        return unavailable_response(exc)
    # This handler runs outside the middleware stack: the security headers are added here.
    return JSONResponse(
        {"detail": "internal error: the server log has the details"}, status_code=500, headers=security.SECURITY_HEADERS
    )


async def retry_later(request: Request, exc: Exception) -> JSONResponse:
    if unavailable(exc) is None:  # an RPCError that is not "unavailable": a real error
        return await internal(request, exc)
    log.warning("api.unavailable", path=request.url.path, error=type(exc).__name__)
    return unavailable_response(exc)


async def validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, internal)
    # Handled where they are raised (not re-raised as a 500 would be): worth retrying later.
    for exc_type in (*DB_UNAVAILABLE, RPCError):
        app.add_exception_handler(exc_type, retry_later)
    app.add_exception_handler(RequestValidationError, validation)
