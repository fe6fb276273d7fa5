"""Temporal glue: the client, Quire's search attributes and the audit interceptor.

``AuditInterceptor`` subclasses both the client and the worker interceptor: passed to
``Client.connect`` it records workflow starts, queries, signals and cancels made through the
client (queries never reach workflow history, so the client is where they are seen), and
workers built from that client pick it up to record every activity attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import uuid
from typing import Any

import structlog
from temporalio import activity, client, worker
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from core.telemetry import ACTIVITIES, ACTIVITY_RETRIES
from db.audit import ACTIVITY_SEQ
from db.session import Database, JobGone
from services.telemetry import temporal_interceptors

log = structlog.get_logger(__name__)

HEARTBEAT_EVERY_S = 2.0
# Which worker process ran an activity (Temporal's own default identity has this form).
WORKER_IDENTITY = f"{os.getpid()}@{socket.gethostname()}"

SA_JOB_ID = SearchAttributeKey.for_keyword("QuireJobId")
SA_KIND = SearchAttributeKey.for_keyword("QuireKind")
SA_USER = SearchAttributeKey.for_keyword("QuireUser")
SA_TARGET_WORDS = SearchAttributeKey.for_int("QuireTargetWords")
SEARCH_ATTRIBUTES: list[SearchAttributeKey[Any]] = [SA_JOB_ID, SA_KIND, SA_USER, SA_TARGET_WORDS]


def search_attribute_args() -> list[str]:
    """`temporal server start-dev` arguments that register Quire's search attributes."""
    types: dict[SearchAttributeKey[Any], str] = {
        SA_JOB_ID: "Keyword",
        SA_KIND: "Keyword",
        SA_USER: "Keyword",
        SA_TARGET_WORDS: "Int",
    }
    out: list[str] = []
    for key, kind in types.items():
        out += ["--search-attribute", f"{key.name}={kind}"]
    return out


def llm_task_queue(task_queue: str) -> str:
    """The task queue of the steps that call the model, beside the main one."""
    return f"{task_queue}-llm"


def workflow_id(job_id: uuid.UUID | str) -> str:
    return f"job-{job_id}"


def job_id_from_workflow_id(wid: str) -> uuid.UUID | None:
    if not wid.startswith("job-"):
        return None
    try:
        return uuid.UUID(wid[4:40])
    except ValueError:
        return None


async def connect(address: str, namespace: str, db: Database) -> client.Client:
    """A client that audits (and, when tracing is on, traces) what it does, as do workers made from it."""
    return await client.Client.connect(
        address, namespace=namespace, interceptors=[*temporal_interceptors(), AuditInterceptor(db)]
    )


async def record(db: Database, job_id: uuid.UUID | None, kind: str, action: str, data: dict[str, Any]) -> int | None:
    """Write one audit event in its own transaction and return its seq; a deleted job is not an
    error here (None)."""
    if job_id is None:
        return None
    try:
        async with db.job_tx(job_id) as tx:
            tx.event(kind, action, data)
    except JobGone:
        log.info("audit.skipped_deleted_job", job_id=str(job_id), kind=kind, action=action)
        return None
    return tx.last_seq


class AuditInterceptor(client.Interceptor, worker.Interceptor):
    def __init__(self, db: Database) -> None:
        self.db = db

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _ClientAudit(next, self.db)

    def intercept_activity(self, next: worker.ActivityInboundInterceptor) -> worker.ActivityInboundInterceptor:
        return _ActivityAudit(next, self.db)


class _ClientAudit(client.OutboundInterceptor):
    def __init__(self, next: client.OutboundInterceptor, db: Database) -> None:
        super().__init__(next)
        self.db = db

    async def _record(self, wid: str, action: str, **data: Any) -> None:
        await record(self.db, job_id_from_workflow_id(wid), "workflow", action, {"workflow_id": wid, **data})

    async def start_workflow(self, input: client.StartWorkflowInput) -> client.WorkflowHandle[Any, Any]:
        handle = await super().start_workflow(input)
        await self._record(
            input.id, "start", workflow=input.workflow, task_queue=input.task_queue, run_id=handle.result_run_id
        )
        return handle

    async def query_workflow(self, input: client.QueryWorkflowInput) -> Any:
        t0 = time.perf_counter()
        result = await super().query_workflow(input)
        await self._record(
            input.id, "query", query=input.query, duration_ms=round((time.perf_counter() - t0) * 1000, 2)
        )
        return result

    async def signal_workflow(self, input: client.SignalWorkflowInput) -> None:
        await super().signal_workflow(input)
        await self._record(input.id, "signal", signal=input.signal)

    async def cancel_workflow(self, input: client.CancelWorkflowInput) -> None:
        await super().cancel_workflow(input)
        await self._record(input.id, "cancel")

    async def terminate_workflow(self, input: client.TerminateWorkflowInput) -> None:
        await super().terminate_workflow(input)
        await self._record(input.id, "terminate", reason=input.reason)


class _ActivityAudit(worker.ActivityInboundInterceptor):
    def __init__(self, next: worker.ActivityInboundInterceptor, db: Database) -> None:
        super().__init__(next)
        self.db = db

    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        info = activity.info()
        job_id = _job_id_of(input.args)
        base = {
            "activity": info.activity_type,
            "activity_id": info.activity_id,
            "attempt": info.attempt,
            "workflow_id": info.workflow_id,
            "task_queue": info.task_queue,
            "worker": WORKER_IDENTITY,
            "input": _input_of(input.args),
        }
        if info.attempt > 1:
            ACTIVITY_RETRIES.labels(info.activity_type).inc()
        # Every event this attempt writes from here on (its end or error too) names its start. Each
        # attempt runs in an asyncio task of its own, so the value ends with it.
        ACTIVITY_SEQ.set(await record(self.db, job_id, "activity", "start", base))
        t0 = time.perf_counter()
        beat = asyncio.create_task(_heartbeat())
        try:
            result = await super().execute_activity(input)
        except BaseException as exc:
            beat.cancel()
            cancelled = isinstance(exc, asyncio.CancelledError)
            ACTIVITIES.labels(info.activity_type, "cancelled" if cancelled else "failed").inc()
            await record(
                self.db,
                job_id,
                "activity",
                "error",
                {
                    **base,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
                    "error_type": type(exc).__name__,
                    "error": str(exc),  # whole: the log cuts nothing it cannot point to
                },
            )
            raise
        beat.cancel()
        ACTIVITIES.labels(info.activity_type, "completed").inc()
        await record(
            self.db,
            job_id,
            "activity",
            "end",
            {**base, "duration_ms": round((time.perf_counter() - t0) * 1000, 2), "outcome": "completed"},
        )
        return result


async def _heartbeat() -> None:
    """Heartbeat while an activity runs, so that a dead worker is noticed within the
    heartbeat timeout instead of the (long) start-to-close timeout of a model call."""
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def _job_id_of(args: Any) -> uuid.UUID | None:
    if not args:
        return None
    raw = getattr(args[0], "job_id", None)
    try:
        return uuid.UUID(str(raw)) if raw is not None else None
    except ValueError:
        return None


def _input_of(args: Any) -> dict[str, Any] | None:
    """The activity's input (ids and small numbers only), minus the job id already on the event."""
    if not args or not dataclasses.is_dataclass(args[0]) or isinstance(args[0], type):
        return None
    return {k: v for k, v in dataclasses.asdict(args[0]).items() if k != "job_id"}


async def workflow_open(c: client.Client, wid: str) -> bool | None:
    """Whether a workflow is still running: True, False, or None when Temporal can't say.
    (A describe is not a job action: the audit interceptor records starts, queries, signals,
    cancels and terminations only.)"""
    try:
        desc = await c.get_workflow_handle(wid).describe()
    except RPCError as exc:
        return False if exc.status == RPCStatusCode.NOT_FOUND else None
    except Exception:  # noqa: BLE001 - Temporal unreachable: unknown
        return None
    return desc.status == client.WorkflowExecutionStatus.RUNNING
