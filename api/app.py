"""The FastAPI app: ``uvicorn --factory api.app:create_app``.

Lifespan: one Database, one Temporal client (with the audit interceptor, so starts, queries,
signals and cancels made here are recorded in each job's log) and one LISTEN connection for the
live audit streams. Every response carries the security headers of ``api.security``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.staticfiles import StaticFiles
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api import account, audit, jobs, keys, metrics, pages, security
from api.intake import body_limit, multipart_schema, openapi_components
from api.live import AuditListener
from api.schemas import ERRORS, Health, Readiness, error_schemas, tidy_parameters
from core.sealing import Sealer
from db.session import Database
from services import telemetry
from services.accounts import Access, record_access
from services.config import Settings, get_settings
from services.logging import configure
from services.temporal import connect

log = structlog.get_logger(__name__)
STATIC = Path(__file__).parent / "static"
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


def create_app(
    settings: Settings | None = None, *, db: Database | None = None, client: Client | None = None
) -> FastAPI:
    if settings is None:  # run by uvicorn --factory: this process is the API server
        settings = get_settings()
        configure(settings.quire_log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        if settings.database_url is None and db is None:
            raise SystemExit("api: DATABASE_URL is not set (quire up sets it)")
        app.state.db = db or Database(
            settings.database_url or "",
            secrets=settings.secrets(),
            signer=settings.audit_signer(),
            checkpoint_every=settings.quire_checkpoint_every,
        )
        if client is None:
            if settings.temporal_address is None:
                raise SystemExit("api: TEMPORAL_ADDRESS is not set (quire up sets it)")
            app.state.client = await connect(
                settings.temporal_address, settings.temporal_namespace, app.state.db, settings.temporal_key()
            )
        else:
            app.state.client = client
        app.state.settings = settings
        app.state.sealer = Sealer(settings.secret_keys())  # seals webhook signing secrets
        app.state.listener = AuditListener(app.state.db)
        app.state.listener.start()
        try:  # streams opened before LISTEN is up would wait for the fallback poll
            await asyncio.wait_for(app.state.listener.ready.wait(), 10)
        except TimeoutError:
            log.warning("api.listener_not_ready", after_s=10)
        log.info("api.started", temporal=settings.temporal_address, task_queue=settings.temporal_task_queue)
        try:
            yield
        finally:
            await app.state.listener.stop()
            if own_db:
                await app.state.db.dispose()
            telemetry.stop_tracing()  # sends the spans still batched (if tracing is on)

    app = FastAPI(
        title="Quire",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # api.security serves /docs from this machine, under a CSP
        redoc_url=None,
        description="Durable, audited long-document writing. Every job: a document of at least the words "
        "asked for, and an audit log of every action taken.",
    )
    app.include_router(jobs.router)
    app.include_router(audit.router)
    app.include_router(keys.router)
    app.include_router(metrics.router)
    telemetry.instrument_app(app, telemetry.start_tracing("quire-api"))  # no-op unless OTLP is configured
    app.include_router(account.router)
    security.install(app, lambda content_type: body_limit(content_type, settings.quire_max_input_bytes))

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        """Every /v1 request -> account_events (user if authenticated, time, IP, user agent, method,
        path, status). Headers are not stored: the API key never reaches a row or a log line."""
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            if request.method == "POST" and request.url.path == "/v1/jobs" and "location" in response.headers:
                telemetry.tag_job(response.headers["location"].rsplit("/", 1)[-1])  # the new job, on its span
            return response
        finally:
            if request.url.path.startswith("/v1/"):
                try:
                    await record_access(request.app.state.db, _access(request, status))
                except Exception as exc:  # noqa: BLE001 - the access log must not break the request
                    log.warning("access_log.failed", error=str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # No exc_info here: a rich traceback prints frame locals, and those hold the request's
        # headers (the API key). The server logs the plain traceback as the exception leaves.
        log.error(
            "api.internal_error", method=request.method, path=request.url.path, error=f"{type(exc).__name__}: {exc}"
        )
        if _unavailable(exc):
            return _unavailable_response(exc)
        # This handler runs outside the middleware stack: the security headers are added here.
        return JSONResponse(
            {"detail": "internal error: the server log has the details"},
            status_code=500,
            headers=security.SECURITY_HEADERS,
        )

    async def _retry_later(request: Request, exc: Exception) -> JSONResponse:
        if _unavailable(exc) is None:  # an RPCError that is not "unavailable": a real error
            return await _internal(request, exc)
        log.warning("api.unavailable", path=request.url.path, error=type(exc).__name__)
        return _unavailable_response(exc)

    # Handled where they are raised (not re-raised as a 500 would be): worth retrying later.
    for exc_type in (*DB_UNAVAILABLE, RPCError):
        app.add_exception_handler(exc_type, _retry_later)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/healthz", tags=["health"], summary="The process is alive", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Postgres, Temporal and the live-stream listener are up",
        response_model=Readiness,
        responses={
            503: {"model": Readiness, "description": "something is not reachable; each check says what"},
            500: ERRORS[500],
        },
    )
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with request.app.state.db.tx() as s:
                await s.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"error: {exc}"
        try:
            await request.app.state.client.service_client.check_health()
            checks["temporal"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["temporal"] = f"error: {exc}"
        checks["listener"] = "ok" if request.app.state.listener.ready.is_set() else "connecting"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", **checks}, status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(openapi_components(settings.allowed_models))
            components["JobUpload"] = multipart_schema(settings.allowed_models)
            components.update(error_schemas())
            tidy_parameters(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(pages.router)
    security.mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _unavailable_response(exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the {_unavailable(exc)} is unavailable: try again shortly"},
        status_code=503,
        headers={**security.SECURITY_HEADERS, "Retry-After": str(RETRY_AFTER_S)},
    )


def _unavailable(exc: Exception) -> str | None:
    """Which service an exception says is unreachable or busy (503: worth retrying), if any."""
    if isinstance(exc, DB_UNAVAILABLE):
        return "database"
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.UNAVAILABLE:
        return "Temporal"
    return None


def _access(request: Request, status: int) -> Access:
    caller = getattr(request.state, "caller", None)
    raw_job = request.path_params.get("job_id") if request.path_params else None
    try:
        job_id = uuid.UUID(str(raw_job)) if raw_job is not None else None
    except ValueError:
        job_id = None
    return Access(
        user_id=caller.user_id if caller else None,
        method=request.method,
        path=request.url.path,
        status=status,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        job_id=job_id,
    )
