"""The access log: every /v1 request becomes an ``account_events`` row (user if authenticated, time,
IP, user agent, method, path, status). Headers are not stored: the API key never reaches a row or a
log line. A request refused for want of a valid key (401, or 429 once an address keeps failing)
writes no row, so that a flood of them cannot fill the database:
``quire_api_refused_total{reason="unauthenticated"}`` counts them, and api.limits slows them down."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request

from services import telemetry
from services.accounts import Access, record_access

log = structlog.get_logger(__name__)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            if request.method == "POST" and request.url.path == "/v1/jobs" and "location" in response.headers:
                telemetry.tag_job(response.headers["location"].rsplit("/", 1)[-1])  # the new job, on its span
            return response
        finally:
            caller = getattr(request.state, "caller", None)
            refused = caller is None and status in (401, 429)  # no valid key: counted, not stored
            if request.url.path.startswith("/v1/") and not refused:
                try:
                    await record_access(
                        request.app.state.db, _access(request, caller.user_id if caller else None, status)
                    )
                except Exception as exc:  # noqa: BLE001 - the access log must not break the request
                    log.warning("access_log.failed", error=str(exc))


def _access(request: Request, user_id: int | None, status: int) -> Access:
    raw_job = request.path_params.get("job_id") if request.path_params else None
    try:
        job_id = uuid.UUID(str(raw_job)) if raw_job is not None else None
    except ValueError:
        job_id = None
    return Access(
        user_id=user_id,
        method=request.method,
        path=request.url.path,
        status=status,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        job_id=job_id,
    )
