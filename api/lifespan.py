"""What an API process holds for its lifetime: one Database (signing checkpoints with the
operator's key), one Temporal client (with the audit interceptor, so starts, queries, signals
and cancels made here are recorded in each job's log), the sealer of webhook secrets and one
LISTEN connection for the live audit streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from fastapi import FastAPI
from temporalio.client import Client

from api.live import AuditListener
from core.sealing import Sealer
from db.session import Database
from services import alarms, telemetry
from services.config import Settings
from services.temporal import connect

log = structlog.get_logger(__name__)
LISTENER_READY_S = 10


def lifespan(
    settings: Settings, db: Database | None, client: Client | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan; ``db`` and ``client`` are the caller's when given (tests), else made here."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        if settings.database_url is None and db is None:
            raise SystemExit("api: DATABASE_URL is not set (quire up sets it)")
        app.state.db = db or Database(
            settings.database_url or "",
            secrets=settings.secrets(),
            signer=settings.audit_signer(),
            checkpoint_every=settings.quire_checkpoint_every,
            witnesses=settings.witnesses(),
            witness_quorum=settings.quire_witness_quorum,
        )
        if client is None:
            if settings.temporal_address is None:
                raise SystemExit("api: TEMPORAL_ADDRESS is not set (quire up sets it)")
            app.state.client = await connect(
                settings.temporal_address, settings.temporal_namespace, app.state.db, settings.temporal_keys()
            )
        else:
            app.state.client = client
        app.state.settings = settings
        alarms.install(app.state.db, app.state.client, settings.temporal_task_queue, settings.webhook_retry)
        app.state.sealer = Sealer(settings.secret_keys())  # seals webhook signing secrets
        app.state.listener = AuditListener(app.state.db)
        app.state.listener.start()
        try:  # streams opened before LISTEN is up would wait for the fallback poll
            await asyncio.wait_for(app.state.listener.ready.wait(), LISTENER_READY_S)
        except TimeoutError:
            log.warning("api.listener_not_ready", after_s=LISTENER_READY_S)
        log.info("api.started", temporal=settings.temporal_address, task_queue=settings.temporal_task_queue)
        try:
            yield
        finally:
            await app.state.listener.stop()
            if own_db:
                await app.state.db.dispose()
            telemetry.stop_tracing()  # sends the spans still batched (if tracing is on)

    return run
