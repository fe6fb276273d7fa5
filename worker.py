"""The Temporal worker: registers the workflows, the activities and the audit interceptor.

Run with ``python -m worker`` (``quire up`` does); configuration comes from the environment.
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.chunks import ChunkActivities
from activities.finalize import FinalizeActivities
from activities.llm import LlmClient
from activities.plan import PlanActivities
from activities.stitch import StitchActivities
from db.session import Database
from services.config import Settings, get_settings
from services.logging import configure
from services.temporal import connect
from workflows.job import JobWorkflow
from workflows.section import SectionWorkflow

log = structlog.get_logger(__name__)


def build_worker(client: Client, db: Database, llm: LlmClient, task_queue: str) -> Worker:
    """A worker for every workflow and activity of a job, with the activities' dependencies."""
    plan, chunks, stitch, finalize = (
        PlanActivities(db, llm),
        ChunkActivities(db, llm),
        StitchActivities(db, llm),
        FinalizeActivities(db),
    )
    # The audit interceptor comes with the client (it is both a client and a worker
    # interceptor); passing it here as well would record every activity twice.
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[JobWorkflow, SectionWorkflow],
        activities=[
            plan.plan_job,
            chunks.section_chunks,
            chunks.write_chunk,
            chunks.check_length,
            chunks.extend_chunk,
            chunks.commit_chunk,
            stitch.stitch_section,
            finalize.finalize,
            finalize.add_continuation,
            finalize.fail_job,
        ],
        max_concurrent_activities=20,
    )


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
    )


async def run(settings: Settings) -> None:
    if settings.database_url is None or settings.temporal_address is None:
        raise SystemExit("worker: DATABASE_URL and TEMPORAL_ADDRESS must be set (quire up sets them)")
    db = Database(settings.database_url, secrets=settings.secrets())
    client = await connect(settings.temporal_address, settings.temporal_namespace, db)
    llm = llm_from_settings(db, settings)
    worker = build_worker(client, db, llm, settings.temporal_task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        log.info(
            "worker started", task_queue=settings.temporal_task_queue, model=settings.quire_model, llm=llm.base_url
        )
        await stop.wait()
    await llm.close()
    await db.dispose()
    log.info("worker stopped")


def main() -> None:
    settings = get_settings()
    configure(settings.quire_log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
