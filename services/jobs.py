"""Job commands: submit (validate, persist job + input + first audit events in one transaction,
then start workflow ``job-<id>``), cancel, resume (a new run, ``job-<id>-r<n>``, picking up from what
the job committed) and delete (the job's rows and its workflows in Temporal). Shared by the API, the
tests and benchmarks."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import psycopg
import structlog
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.errors import JobGone
from core.quota import resume_refusal, submit_refusal
from core.runs import run_of
from core.spec import TERMINAL_STATUSES, JobSpec
from core.text import count_words, sha256
from core.webhooks import RetrySchedule
from db import usage
from db.ddl import NOTIFY_CHANNEL
from db.models import AccountEvent, Document, Job
from db.session import Database
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


async def cancel(client: Client, job: Job) -> None:
    """Ask the job's workflow to cancel: it stops at the next activity boundary; what it wrote stays."""
    await client.get_workflow_handle(job.workflow_id).cancel()


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
    async with db.job_tx(job_id) as tx:
        owner = (await tx.session.execute(select(Job.user_id).where(Job.id == job_id))).scalar_one_or_none()
        if owner is None:
            raise JobGone(str(job_id))
        quotas = await usage.quotas(tx.session, owner, lock=True)
        # FOR NO KEY UPDATE: it serialises status changes without blocking the rows a running step
        # inserts under the job (their foreign keys take KEY SHARE): a plain FOR UPDATE waiting
        # here could deadlock with such a step upgrading its own lock on the job row.
        job = await tx.session.get(Job, job_id, with_for_update={"key_share": True}, populate_existing=True)
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
    if not await start_workflow(
        client, job, user_name, task_queue, durability, resumed=True, webhook_retry=webhook_retry, witness=witness
    ):
        raise NotResumable(f"job is {job.status}: its run {job.workflow_id} is already under way")
    log.info("job.resumed", job_id=str(job.id), workflow_id=job.workflow_id)
    return job


async def delete(db: Database, client: Client, job: Job, *, user_id: int, path: str) -> dict[str, Any]:
    """Delete a job and everything it owns, its workflows in Temporal included; the account log
    keeps what was deleted (and counts)."""
    if job.status not in TERMINAL_STATUSES:
        try:  # a running job is stopped first: nothing may write for it after the delete
            await client.get_workflow_handle(job.workflow_id).terminate("job deleted by its owner")
        except Exception:  # noqa: BLE001 - already closed or never started
            pass
    temporal = await delete_workflows(client, job.id)
    for attempt in range(DELETE_TRIES):
        try:
            return await _delete(db, job, user_id=user_id, path=path, temporal=temporal)
        except DBAPIError as exc:
            # An activity of the job may still be committing (terminate does not wait for it) and
            # hold rows the cascade needs while it waits for the job row: Postgres breaks the
            # deadlock by failing one side. Once that activity is done, the delete goes through.
            if not isinstance(exc.orig, psycopg.errors.DeadlockDetected) or attempt == DELETE_TRIES - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


DELETE_TRIES = 5


async def delete_workflows(client: Client, job_id: uuid.UUID) -> dict[str, Any]:
    """Delete every workflow execution of a job from Temporal (each run, each unit, each run they
    continued as new); what Temporal held of them (encrypted payloads, ids and numbers) goes with
    them. Temporal unreachable: the job is deleted all the same and this says what stayed behind
    there, until the namespace's retention period removes it."""
    deleted = 0
    try:
        async for wf in client.list_workflows(f"WorkflowId STARTS_WITH 'job-{job_id}'"):
            try:
                await client.workflow_service.delete_workflow_execution(
                    DeleteWorkflowExecutionRequest(
                        namespace=client.namespace,
                        workflow_execution=WorkflowExecution(workflow_id=wf.id, run_id=wf.run_id),
                    )
                )
                deleted += 1
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
    except RPCError as exc:
        log.warning("job.temporal_not_deleted", job_id=str(job_id), error=str(exc))
        return {"workflows_deleted": deleted, "left": f"Temporal unreachable ({exc.status.name}): left to retention"}
    return {"workflows_deleted": deleted}


async def _delete(db: Database, job: Job, *, user_id: int, path: str, temporal: dict[str, Any]) -> dict[str, Any]:
    async with db.tx() as s:
        counts = (
            await s.execute(
                text(
                    "SELECT (SELECT count(*) FROM audit_events WHERE job_id=:j),"
                    " (SELECT count(*) FROM chunks WHERE job_id=:j),"
                    " (SELECT count(*) FROM llm_calls WHERE job_id=:j)"
                ),
                {"j": job.id},
            )
        ).one()
        # What the job used stays counted for its owner (quotas, totals: db.usage) once it is gone.
        tokens_in, tokens_out, cost, unpriced = (await s.execute(usage.DELETED_USAGE_SQL, {"j": job.id})).one()
        edit_words = {m: int(n) for m, n in await s.execute(usage.DELETED_EDITS_SQL, {"j": job.id})}
        await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job.id})
        # Wake the job's live streams (in every API process) at commit: they end with "deleted".
        await s.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": f"{job.id}:0"})
        deleted = {
            "title": job.title,
            "kind": job.kind,
            "status": job.status,
            "target_words": job.target_words,
            "audit_events": counts[0],
            "chunks": counts[1],
            "llm_calls": counts[2],
            "created_at": job.created_at.astimezone(dt.UTC).isoformat(),
            "tokens_in": int(tokens_in),
            "tokens_out": int(tokens_out),
            "cost_micro_usd": int(cost),
            "unpriced_calls": int(unpriced),
            "edit_words": edit_words,
            "temporal": temporal,
        }
        s.add(
            AccountEvent(user_id=user_id, kind="job.deleted", job_id=job.id, method="DELETE", path=path, data=deleted)
        )
    log.info("job.deleted", job_id=str(job.id), user_id=user_id, audit_events=counts[0])
    return deleted


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
