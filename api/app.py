"""The FastAPI app: ``uvicorn --factory api.app:create_app``.

Assembled from its rooms: the lifespan (``api.lifespan``), the middleware (``api.security``:
headers and body limits; ``api.access``: the access log), the error handlers (``api.errors``),
health and readiness (``api.health``), metrics (``api.metrics``), the /v1 routes and the pages.
Every response carries the security headers of ``api.security``; every /v1 request is held to
``api.limits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from temporalio.client import Client

from api import access, account, audit, codec, errors, health, jobs, keys, loop, metrics, pages, security
from api.intake import body_limit, multipart_schema, openapi_components
from api.lifespan import lifespan
from api.limits import RateLimits, StreamSlots
from api.schemas import error_schemas, tidy_parameters
from db.session import Database
from services import telemetry
from services.config import Settings, get_settings
from services.logging import configure

STATIC = Path(__file__).parent / "static"


def create_app(
    settings: Settings | None = None, *, db: Database | None = None, client: Client | None = None
) -> FastAPI:
    if settings is None:  # run by uvicorn --factory: this process is the API server
        settings = get_settings()
        configure(settings.quire_log_level)
    app = FastAPI(
        title="Quire",
        version="0.1.0",
        lifespan=lifespan(settings, db, client),
        docs_url=None,  # api.security serves /docs from this machine, under a CSP
        redoc_url=None,
        description="Durable, audited long-document writing. Every job: a document of at least the words "
        "asked for, and an audit log of every action taken.",
    )
    app.state.limits = RateLimits(settings.quire_rate_limit, settings.quire_auth_failure_limit)
    app.state.streams = StreamSlots(settings.quire_max_streams_per_user, settings.quire_max_streams)
    app.include_router(loop.estimates_router)  # before jobs: /v1/jobs/estimate is not a job
    for router in (jobs.router, loop.router, audit.router, keys.router, metrics.router):
        app.include_router(router)
    telemetry.instrument_app(app, telemetry.start_tracing("quire-api"))  # no-op unless OTLP is configured
    app.include_router(account.router)
    security.install(app, lambda content_type: body_limit(content_type, settings.quire_max_input_bytes))
    access.install(app)
    errors.install(app)
    app.include_router(health.router)

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
    codec.mount(app, settings.operator_token(), settings.codec_origins)  # operators' codec server for the Temporal UI
    security.mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
