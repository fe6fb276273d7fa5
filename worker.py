"""The Temporal worker: registers the workflows, the activities and the audit interceptor.

Run with ``python -m worker`` (``quire up`` does); configuration comes from the environment.
It serves its metrics on ``QUIRE_WORKER_METRICS_PORT`` when set, and traces when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is (``services.telemetry``).
"""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities import gating
from activities.chunks import ChunkActivities
from activities.coverage import CoverageActivities
from activities.edit_checks import EditCheckActivities
from activities.edits import EditActivities
from activities.finalize import FinalizeActivities
from activities.llm import LlmClient
from activities.plan import PlanActivities
from activities.prompts import LOCAL_SAMPLING
from activities.review import ReviewActivities
from activities.seams import SeamActivities
from activities.stitch import StitchActivities
from activities.webhooks import WebhookActivities, WebhookConfig
from core.sealing import Sealer
from core.webhooks import WebhookPolicy
from db.session import Database
from services import telemetry
from services.config import Settings, get_settings
from services.deploys import promote, version
from services.logging import configure
from services.temporal import WORKER_IDENTITY, connect, llm_task_queue
from workflows.edit import EditWorkflow
from workflows.job import JobWorkflow
from workflows.unit import UnitWorkflow
from workflows.webhook import WebhookWorkflow

log = structlog.get_logger(__name__)
PINNED = VersioningBehavior.PINNED


class Workers:
    """The two workers of a Quire process: one for the workflows and the database steps, one
    for the steps that call the model, on their own task queue, so that the model's limits (calls
    at once per worker, calls per second across all workers, enforced by Temporal) bound those
    steps alone."""

    def __init__(self, main: Worker, model: Worker) -> None:
        self.workers = (main, model)

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.workers))

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers))

    async def __aenter__(self) -> Workers:
        for w in self.workers:
            await w.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in reversed(self.workers):
            await w.__aexit__(None, None, None)


def build_worker(
    client: Client,
    db: Database,
    llm: LlmClient,
    task_queue: str,
    *,
    llm_concurrency: int = 16,
    llm_calls_per_second: float | None = None,
    webhooks: WebhookConfig | None = None,
    deployment: WorkerDeploymentVersion | None = None,
) -> Workers:
    """The workers for every workflow and activity of a job, with the activities' dependencies;
    both declare ``deployment`` when given (Worker Versioning: services.deploys), else none."""
    plan, chunks, stitch, seams, finalize = (
        PlanActivities(db, llm),
        ChunkActivities(db, llm),
        StitchActivities(db, llm),
        SeamActivities(db, llm),
        FinalizeActivities(db),
    )
    review, edits, checks = ReviewActivities(db), EditActivities(db, llm), EditCheckActivities(db, llm)
    coverage = CoverageActivities(db, llm)
    # Without a config (benchmarks), deliveries are refused: no key opens a signing secret.
    hooks = WebhookActivities(db, webhooks or WebhookConfig(WebhookPolicy(), None, "http://127.0.0.1:8000"))
    # Every workflow is pinned to the version it started on and moves on only when it continues as
    # new (workflows.steps.continue_as_new). Set here, not on the workflow definitions: Temporal
    # refuses a definition's behavior from an unversioned worker (the tests' and benchmarks').
    versioned = (
        WorkerDeploymentConfig(deployment, use_worker_versioning=True, default_versioning_behavior=PINNED)
        if deployment
        else None
    )
    # The audit interceptor comes with the client (it is both a client and a worker
    # interceptor); passing it here as well would record every activity twice.
    main = Worker(
        client,
        task_queue=task_queue,
        workflows=[JobWorkflow, UnitWorkflow, WebhookWorkflow, EditWorkflow],
        activities=[
            chunks.unit_chunks,
            finalize.finalize,
            finalize.add_continuation,
            finalize.fail_job,
            hooks.deliver,
            hooks.witness,
            review.await_review,
            review.apply_review,
            edits.start_edit,
            checks.publish_edit,
            checks.fail_edit,
        ],
        max_concurrent_activities=20,
        deployment_config=versioned,
    )
    model = Worker(
        client,
        task_queue=llm_task_queue(task_queue),
        activities=[
            plan.plan_job,
            plan.expand_node,
            chunks.write_chunk,
            stitch.stitch_section,
            seams.complete_unit,
            edits.edit_chunk,
            checks.recheck_edit,
            coverage.check_edit_coverage,
            coverage.check_unit_coverage,
        ],
        max_concurrent_activities=llm_concurrency,
        max_task_queue_activities_per_second=llm_calls_per_second,
        deployment_config=versioned,
    )
    return Workers(main, model)


def llm_from_settings(db: Database, settings: Settings) -> LlmClient:
    base_url = settings.openai_base_url or f"http://127.0.0.1:{settings.llm_port}/v1"
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return LlmClient(
        db,
        base_url=base_url,
        api_key=key,
        model=settings.quire_model,
        timeout=settings.quire_llm_timeout_s,
        prompt_style=settings.prompt_style,
        prices=settings.quire_prices,
        judge_model=settings.quire_judge_model,
        sampling=LOCAL_SAMPLING if settings.uses_local_model else None,
    )


def webhooks_from_settings(settings: Settings) -> WebhookConfig:
    return WebhookConfig(
        policy=settings.webhook_policy,
        sealer=Sealer(settings.secret_keys()),
        public_url=settings.public_url,
        timeout_s=settings.quire_webhook_timeout_s,
        witness_url=settings.quire_witness_url,
        witness_secret=settings.quire_witness_secret.get_secret_value() if settings.quire_witness_secret else None,
    )


async def run(settings: Settings) -> None:
    if settings.database_url is None or settings.temporal_address is None:
        raise SystemExit("worker: DATABASE_URL and TEMPORAL_ADDRESS must be set (quire up sets them)")
    metrics = None
    if settings.quire_worker_metrics_port:  # before connecting: a busy port stops the worker at once
        metrics = telemetry.serve_metrics(settings.quire_worker_metrics_host, settings.quire_worker_metrics_port)
    telemetry.start_tracing("quire-worker")  # before connecting: the client then carries the tracing interceptor
    db = Database(
        settings.database_url,
        secrets=settings.secrets(),
        pool_size=settings.db_pool_size,
        signer=settings.audit_signer(),
        checkpoint_every=settings.quire_checkpoint_every,
    )
    client = await connect(settings.temporal_address, settings.temporal_namespace, db, settings.temporal_keys())
    llm = llm_from_settings(db, settings)
    if settings.quire_gate_process:
        await gating.start_gate_process()
    deployment = version(settings.temporal_task_queue, settings.quire_build_id)
    worker = build_worker(
        client,
        db,
        llm,
        settings.temporal_task_queue,
        llm_concurrency=settings.llm_concurrency,
        llm_calls_per_second=settings.quire_llm_calls_per_second,
        webhooks=webhooks_from_settings(settings),
        deployment=deployment if settings.quire_worker_versioning else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        current = None
        if settings.quire_worker_versioning and settings.quire_worker_promote:
            current = await promote(client, deployment, WORKER_IDENTITY)
        log.info(
            "worker started",
            version=deployment.to_canonical_string() if settings.quire_worker_versioning else None,
            current=current,
            task_queue=settings.temporal_task_queue,
            model=settings.quire_model,
            llm=llm.base_url,
            llm_concurrency=settings.llm_concurrency,
            db_pool_size=settings.db_pool_size,
            metrics=_metrics_url(settings) if metrics else None,
            tracing=telemetry.tracing_configured(),
        )
        await stop.wait()
    await llm.close()
    await gating.stop_gate_process()
    await db.dispose()
    telemetry.stop_tracing()  # sends the spans still batched
    if metrics is not None:
        metrics[0].shutdown()
    log.info("worker stopped")


def _metrics_url(settings: Settings) -> str:
    host = settings.quire_worker_metrics_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{settings.quire_worker_metrics_port}/metrics"


def main() -> None:
    # The worker makes many short-lived objects per chunk (rows, events, parsed answers) and keeps
    # few: with the default thresholds the collector ran ~850 times in a 200,000-word book, 4% of
    # the worker's CPU, most of it rescanning startup's objects. Those are frozen out of its scans,
    # and it runs less often (5,000, not 700: 20,000 cost 23 MiB of peak RSS at 500,000 words).
    gc.freeze()
    gc.set_threshold(5_000, 10, 10)
    settings = get_settings()
    configure(settings.quire_log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
