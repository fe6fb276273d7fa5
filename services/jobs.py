"""Job commands: submit (validate, persist job + input + first audit events in one transaction,
then start workflow ``job-<id>``), cancel, resume (a new run, ``job-<id>-r<n>``, picking up from what
the job committed); deleting one is ``services.deletion``. Shared by the API, the tests and
benchmarks."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.errors import JobGone
from core.quota import resume_refusal, submit_refusal
from core.runs import run_of
from core.spec import ErrorCode, JobSpec
from core.text import count_words, sha256
from core.webhooks import RetrySchedule
from db import usage
from db.models import Document, Job
from db.session import Database, lock_job
from services import faults, settle
from services.config import Settings
from services.deploys import job_priority
from services.temporal import SA_JOB_ID, SA_KIND, SA_TARGET_WORDS, SA_USER, llm_task_queue, workflow_id
from workflows.job import JobInput, JobWorkflow
from workflows.steps import Durability

log = structlog.get_logger(__name__)


async def find_by_idempotency_key(db: Database, user_id: int, key: str) -> Job | None:
    async with db.tx() as s:
        return (
            await s.execute(select(Job).where(Job.user_id == user_id, Job.idempotency_key == key))
        ).scalar_one_or_none()


async def same_request(db: Database, job: Job, spec: JobSpec, default_model: str) -> bool:
    """Whether ``spec`` asks for exactly what ``job`` was made from (an Idempotency-Key replay)."""
    if (job.kind, job.target_words, job.prompt, job.title, job.model, job.params) != (
        spec.kind,
        spec.target_words,
        spec.prompt,
        spec.title,
        spec.model or default_model,
        spec.options.model_dump(),
    ):
        return False
    if spec.webhook_url is not None and spec.webhook_url != job.webhook_url:
        return False
    if spec.input_text is None:
        return True
    async with db.tx() as s:
        stored = (
            await s.execute(select(Document.sha256).where(Document.job_id == job.id, Document.role == "input"))
        ).scalar_one_or_none()
    return stored == sha256(spec.input_text)


class IdempotencyConflict(Exception):
    """The Idempotency-Key already names a job made from a different request (the API's 409)."""

    def __init__(self, key: str, job: Job) -> None:
        super().__init__(f"Idempotency-Key {key!r} was used for a different request (job {job.id})")
        self.job = job


async def replay(db: Database, key: str, job: Job, spec: JobSpec, default_model: str) -> Job:
    """The job an Idempotency-Key already made, if ``spec`` asks for exactly it; else IdempotencyConflict."""
    if not await same_request(db, job, spec, default_model):
        raise IdempotencyConflict(key, job)
    return job


async def submit(
    db: Database,
    client: Client,
    *,
    user_id: int,
    user_name: str,
    spec: JobSpec,
    task_queue: str,
    default_model: str,
    idempotency_key: str | None = None,
    filename: str | None = None,
    durability: Durability | None = None,
    webhook_url: str | None = None,
    webhook_retry: RetrySchedule | None = None,
    witness: bool = False,
) -> tuple[Job, bool]:
    """Create and start a job; returns (job, created). An existing Idempotency-Key returns the
    job it made (starting its workflow if an earlier attempt could not). A new job over one of
    the user's quotas raises ``core.quota.QuotaExceeded`` (nothing is stored); a key already used for
    another request, ``IdempotencyConflict`` (however the two requests raced)."""
    durability = durability or Durability()
    if idempotency_key:
        existing = await find_by_idempotency_key(db, user_id, idempotency_key)
        if existing is not None:
            await replay(db, idempotency_key, existing, spec, default_model)
            if existing.status == "queued":
                await start_workflow(
                    client, existing, user_name, task_queue, durability, webhook_retry=webhook_retry, witness=witness
                )
            return existing, False
    try:
        job = await create(
            db,
            user_id=user_id,
            user_name=user_name,
            spec=spec,
            default_model=default_model,
            idempotency_key=idempotency_key,
            filename=filename,
            webhook_url=webhook_url,
        )
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        if idempotency_key:
            existing = await find_by_idempotency_key(db, user_id, idempotency_key)
            if existing is not None:
                return await replay(db, idempotency_key, existing, spec, default_model), False
        raise
    faults.reached("submit")
    await start_workflow(client, job, user_name, task_queue, durability, webhook_retry=webhook_retry, witness=witness)
    return job, True


async def create(
    db: Database,
    *,
    user_id: int,
    user_name: str,
    spec: JobSpec,
    default_model: str,
    idempotency_key: str | None = None,
    filename: str | None = None,
    webhook_url: str | None = None,
) -> Job:
    """The job's row, its input and its first audit event, in one transaction (no workflow yet)."""
    job_id = uuid.uuid4()
    async with db.job_tx(job_id) as tx:
        # Under the user's row lock: two submits at once cannot both take the last place.
        quotas = await usage.quotas(tx.session, user_id, lock=True)
        if quotas.any:
            now = dt.datetime.now(dt.UTC)
            refused = submit_refusal(quotas, await usage.usage(tx.session, user_id, now), spec.target_words, now)
            if refused is not None:
                raise refused
        job = Job(
            id=job_id,
            user_id=user_id,
            kind=spec.kind,
            status="queued",
            title=spec.title,
            prompt=spec.prompt,
            target_words=spec.target_words,
            max_words=spec.max_words,
            model=spec.model or default_model,
            params=spec.options.model_dump(),
            idempotency_key=idempotency_key,
            workflow_id=workflow_id(job_id),
            webhook_url=webhook_url,
        )
        tx.session.add(job)
        await tx.session.flush()
        if spec.kind == "rewrite":
            assert spec.input_text is not None
            tx.session.add(
                Document(
                    job_id=job_id,
                    role="input",
                    version=1,
                    filename=filename,
                    text=spec.input_text,
                    sha256=sha256(spec.input_text),
                    word_count=count_words(spec.input_text),
                )
            )
        tx.event(
            "job",
            "created",
            {
                "kind": spec.kind,
                "target_words": spec.target_words,
                "max_words": spec.max_words,
                "model": job.model,
                "options": spec.options.model_dump(),
                "user": user_name,
                "input_words": count_words(spec.input_text or ""),
                "webhook_url": webhook_url,
            },
        )
    return job


async def start_workflow(
    client: Client,
    job: Job,
    user_name: str,
    task_queue: str,
    durability: Durability,
    *,
    resumed: bool = False,
    webhook_retry: RetrySchedule | None = None,
    witness: bool = False,
) -> bool:
    """Start the workflow of the job's current run (``job.workflow_id``); False if it was already
    started (a retried submit or resume)."""
    run = run_of(job.workflow_id) or 1
    webhook = (webhook_retry or RetrySchedule()) if job.webhook_url else None
    try:
        await client.start_workflow(
            JobWorkflow.run,
            JobInput(
                job_id=str(job.id),
                llm_queue=llm_task_queue(task_queue),
                durability=durability,
                resumed=resumed,
                webhook=webhook,
                witness=witness,
            ),
            id=job.workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            # Its user is its fairness key: the model's task queue serves users in turn (services.deploys).
            priority=job_priority(job.user_id),
            search_attributes=search_attributes(job, user_name),
            # Ids and numbers only: Temporal keeps summaries in clear (nothing a user wrote goes there).
            static_summary=f"{job.kind} {job.target_words} words" + (f", run {run}" if run > 1 else ""),
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


def search_attributes(job: Job, user_name: str) -> TypedSearchAttributes:
    """What finds a job's workflows in Temporal (its runs, units and edits): its id, kind, owner, target."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_JOB_ID, str(job.id)),
            SearchAttributePair(SA_KIND, job.kind),
            SearchAttributePair(SA_USER, user_name),
            SearchAttributePair(SA_TARGET_WORDS, job.target_words),
        ]
    )


async def cancel(db: Database, client: Client, job: Job) -> str:
    """Ask the job's workflow to cancel: it stops at the next activity boundary, what it wrote stays
    (``cancelling``). A job whose workflow has ended without recording it, or never started, is
    settled at once (``cancelled``, its partial work kept): a cancel always acts. (Temporal takes a
    cancel of a closed workflow without an error, and nothing happens: so its state is read first.)"""
    seen = await settle.state(client, job.workflow_id)
    if not seen.closed and seen.status != "not_found":  # running, or Temporal cannot say: ask it
        try:
            await client.get_workflow_handle(job.workflow_id).cancel()
            return "cancelling"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
        seen = await settle.state(client, job.workflow_id)  # it ended meanwhile
    end = settle.Closure("cancelled", ErrorCode.CANCELLED, f"cancelled by request (its workflow {seen.said})", "")
    if await settle.end_job_as(db, job.id, seen, end, by="cancel"):
        return "cancelled"
    async with db.tx() as s:  # it ended meanwhile, by itself
        raise NotCancellable(f"job already {await s.scalar(select(Job.status).where(Job.id == job.id)) or 'deleted'}")


class NotCancellable(Exception):
    """The job ended while its cancel was being made (the API's 409)."""


def durability(settings: Settings) -> Durability:
    """How long a job started now rides out outages, and the backoff's cap (from settings)."""
    return Durability(settings.quire_outage_window_s, settings.quire_retry_max_interval_s)


class NotResumable(Exception):
    """The job cannot be resumed (it succeeded, or it is still running): the API's 409."""


async def resume(
    db: Database,
    client: Client,
    job_id: uuid.UUID,
    *,
    user_name: str,
    task_queue: str,
    durability: Durability,
    webhook_retry: RetrySchedule | None = None,
    after_run: int = 0,
    witness: bool = False,
) -> Job:
    """Continue a failed or cancelled job as a new run (workflow ``job-<id>-r<n>``) that picks up
    from what it committed, in the same log. The job goes back to running under its row lock (the
    database allows failed|cancelled -> running only with a new workflow id: db.ddl), then the run
    starts. A job left running by a resume whose start did not reach Temporal is started again.
    ``after_run``: a run number Temporal already used (after a restore the database may not know it).
    Model work starting again goes through the owner's quotas as a submit does, under the same
    lock (their user row, then the job's): QuotaExceeded when they are used up."""
    moved = False
    async with db.job_tx(job_id) as tx:
        owner = (await tx.session.execute(select(Job.user_id).where(Job.id == job_id))).scalar_one_or_none()
        if owner is None:
            raise JobGone(str(job_id))
        quotas = await usage.quotas(tx.session, owner, lock=True)
        job = await lock_job(tx.session, job_id)  # db.session.JOB_LOCK: the one mode, and why
        if job is None:
            raise JobGone(str(job_id))
        if job.status == "succeeded":
            raise NotResumable("job already succeeded: there is nothing to resume")
        if job.status in ("failed", "cancelled"):
            if quotas.any:
                now = dt.datetime.now(dt.UTC)
                refused = resume_refusal(quotas, await usage.usage(tx.session, owner, now), now)
                if refused is not None:
                    raise refused
            run = max(run_of(job.workflow_id) or 1, after_run) + 1
            was = {"status": job.status, "error_code": job.error_code, "reason": job.failure_reason}
            job.status, job.workflow_id, job.current_step = "running", workflow_id(job.id, run), "resuming"
            job.completed_at, job.error_code, job.failure_reason = None, None, None
            tx.event("job", "resumed", {"run": run, "workflow_id": job.workflow_id, "was": was})
            moved = True
    faults.reached("resume")
    if (
        not await start_workflow(
            client, job, user_name, task_queue, durability, resumed=True, webhook_retry=webhook_retry, witness=witness
        )
        and not moved
    ):  # (moved: this resume's own run, started first by the reconciler)
        # Running: unless its workflow has ended without recording it; then it is settled, and resumed.
        seen = await settle.state(client, job.workflow_id)
        if not seen.closed or not await settle.end_job_as(
            db, job.id, seen, await settle.closure(client, seen), by="resume"
        ):
            raise NotResumable(f"job is {job.status}: its run {job.workflow_id} is already under way")
        return await resume(
            db,
            client,
            job_id,
            user_name=user_name,
            task_queue=task_queue,
            durability=durability,
            webhook_retry=webhook_retry,
            after_run=after_run,
            witness=witness,
        )
    log.info("job.resumed", job_id=str(job.id), workflow_id=job.workflow_id)
    return job


async def record_user_action(
    db: Database, job_id: uuid.UUID, action: str, data: dict[str, Any], *, download: bool = False
) -> int | None:
    """A user's action on a job (a view, a download, a cancel request) in the job's own log, as it
    happens; its seq. A job deleted meanwhile has no log left to write to: nothing is recorded.
    ``download``: a download of the log, whose write signs the checkpoint it ends with."""
    try:
        async with db.job_tx(job_id) as tx:
            tx.download = download
            tx.event("user", action, data)
        return tx.last_seq
    except JobGone:
        log.info("user_action.job_deleted", job_id=str(job_id), action=action)
        return None
