"""Deleting a job: its rows, and its workflows in Temporal (what Temporal held of them goes too);
the account log keeps what was deleted, and counts."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.spec import TERMINAL_STATUSES
from db import usage
from db.ddl import NOTIFY_CHANNEL
from db.models import AccountEvent, Job
from db.session import Database

log = structlog.get_logger(__name__)


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
