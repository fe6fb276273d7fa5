"""Temporal glue: the client, Quire's search attributes and the audit interceptor.

``AuditInterceptor`` subclasses both the client and the worker interceptor: passed to
``Client.connect`` it records workflow starts, queries, signals, updates and cancels made through the
client (queries never reach workflow history, so the client is where they are seen), and
workers built from that client pick it up to record every activity attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from sqlalchemy import text
from temporalio import activity, client, worker
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode

from core import runs
from core.errors import NON_RETRYABLE, JobGone
from db.capture import AuditBuffer
from db.outage import is_transient
from db.session import STEP, UNRECORDED, Database, StepEvents, Unrecorded
from metrics import ACTIVITIES, ACTIVITY_RETRIES
from services.codec import data_converter
from services.telemetry import temporal_interceptors
from workflows.steps import LOGIC_ATTEMPTS, TRANSIENT_MARK

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


def workflow_id(job_id: uuid.UUID | str, run: int = 1) -> str:
    return runs.workflow_id(job_id, run)


def job_id_from_workflow_id(wid: str) -> uuid.UUID | None:
    if not wid.startswith("job-"):
        return None
    try:
        return uuid.UUID(wid[4:40])
    except ValueError:
        return None


async def connect(address: str, namespace: str, db: Database, keys: bytes | Sequence[bytes]) -> client.Client:
    """The client of the API and of every worker: audited (and, when tracing is on, traced), and
    with every payload and failure encrypted with ``keys`` (services.codec: the first encrypts)."""
    return await client.Client.connect(
        address,
        namespace=namespace,
        interceptors=[*temporal_interceptors(), AuditInterceptor(db)],
        data_converter=data_converter(keys),
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

    async def start_workflow_update(self, input: client.StartWorkflowUpdateInput) -> client.WorkflowUpdateHandle[Any]:
        handle = await super().start_workflow_update(input)
        outcome: dict[str, Any] = {}
        if input.wait_for_stage == client.WorkflowUpdateStage.COMPLETED:
            try:  # the outcome came with the answer: no second call to Temporal
                await handle.result()
            except client.WorkflowUpdateFailedError as exc:  # refused by its validator, or failed
                outcome = {"refused": str(exc.cause or exc)}
        await self._record(input.id, "update", update=input.update, update_id=handle.id, **outcome)
        return handle

    async def cancel_workflow(self, input: client.CancelWorkflowInput) -> None:
        await super().cancel_workflow(input)
        await self._record(input.id, "cancel")

    async def terminate_workflow(self, input: client.TerminateWorkflowInput) -> None:
        await super().terminate_workflow(input)
        await self._record(input.id, "terminate", reason=input.reason)


class _ActivityAudit(worker.ActivityInboundInterceptor):
    """One activity attempt: its ``start`` and its end (``end`` or ``error``) in the job's log, its
    heartbeat, and the verdict on a failure (``_verdict``).

    An attempt that fails because the database is gone cannot write its ``error`` event, nor the
    record of a transaction the outage rolled back: it hands them to the next attempt in its
    heartbeat details (with the count of the step's own failures so far), and the first attempt
    that reaches the database again writes them before its own ``start``. So every attempt that
    has a start has an end, across an outage too."""

    def __init__(self, next: worker.ActivityInboundInterceptor, db: Database) -> None:
        super().__init__(next)
        self.db = db
        self.carry = _Carry()

    def init(self, outbound: worker.ActivityOutboundInterceptor) -> None:
        super().init(_CarryingHeartbeat(outbound, self))

    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        info = activity.info()
        self.carry = _Carry.of(info.heartbeat_details)
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
        try:
            await self._flush()
        except Exception as exc:  # the log cannot take what earlier attempts left: nothing began
            self._fail(exc, info.attempt)
        # The start and end go into the step's own transactions (db.session.StepEvents): every
        # event the step writes names its start. Each attempt runs in an asyncio task of its own,
        # so the value ends with it.
        step = StepEvents(job_id, base) if job_id is not None else None
        STEP.set(step)
        t0 = time.perf_counter()
        sink: list[Unrecorded] = []
        token = UNRECORDED.set(sink)  # rollbacks the database could not take are kept here
        beat = asyncio.create_task(_heartbeat())
        failure: BaseException | None = None
        completed = False
        try:
            result = await super().execute_activity(input)
            completed = True
        except BaseException as exc:
            failure = exc
        finally:
            beat.cancel()
            UNRECORDED.reset(token)
        self.carry.pending += [
            {"id": uuid.uuid4().hex, "job_id": str(j), "events": _portable(evs), "check": check}
            for j, evs, check in sink
        ]
        ms = round((time.perf_counter() - t0) * 1000, 2)
        outcome = (
            "completed" if failure is None else "cancelled" if isinstance(failure, asyncio.CancelledError) else "failed"
        )
        ACTIVITIES.labels(info.activity_type, outcome).inc()
        if failure is None:
            try:
                await self._flush()
                if step is not None and not step.ended:  # the step had no final transaction
                    await self._end(step, "end", {**base, "duration_ms": ms, "outcome": "completed"})
                return result
            except Exception as exc:  # its work is committed: retried, the step finds it done
                failure = exc
        error = {
            **base,
            "duration_ms": ms,
            "error_type": type(failure).__name__,
            "error": str(failure),  # whole: the log cuts nothing it cannot point to
            **({"completed_unrecorded": True} if completed else {}),
        }
        if isinstance(failure, asyncio.CancelledError):  # "Activity cancelled" alone says not by whom
            error["cancelled_because"] = _why_cancelled()
            log.warning("activity.cancelled", activity=info.activity_type, why=error["cancelled_because"])
        try:
            await self._flush()
            if step is not None:
                await self._end(step, "error", error)
        except Exception as exc:  # the database is still gone: the next attempt writes it
            self.carry.pending.append(
                {"id": uuid.uuid4().hex, "job_id": str(job_id) if job_id else None, "activity_error": error}
            )
            log.warning("audit.deferred", job_id=str(job_id), activity=info.activity_type, why=str(exc))
        if isinstance(failure, Exception):
            self._fail(failure, info.attempt)
        activity.heartbeat()  # cancelled: the carry still goes to whatever runs next
        raise failure

    async def _end(self, step: StepEvents, action: str, data: dict[str, Any]) -> None:
        """The attempt's end (or error), with its start when no transaction of the step carried it."""
        if step.seq is not None:  # this task's STEP: the event names the start
            await record(self.db, step.job_id, "activity", action, data)
            return
        buf = AuditBuffer(job_id=step.job_id, redactor=self.db.redactor)
        buf.add("activity", "start", step.start)
        buf.add("activity", action, data)
        try:
            await self.db.record_events(step.job_id, buf.finished(), lead=True)
        except JobGone:
            log.info("audit.skipped_deleted_job", job_id=str(step.job_id), kind="activity", action=action)

    async def _flush(self) -> None:
        """Write what earlier attempts could not, in order, each once: an item is marked with its id
        (``deferred``) in the log, so that one written by an attempt that died before it could say
        so (in a heartbeat) is not written again."""
        while self.carry.pending:
            item = self.carry.pending[0]
            jid = uuid.UUID(item["job_id"]) if item.get("job_id") else None
            check = item.get("check")  # an ambiguous commit's (seq, hash): no record if it landed
            if jid is not None and not await _deferred_written(self.db, jid, item["id"]):
                try:
                    if check and await self.db.landed(jid, (int(check[0]), str(check[1]))):
                        pass
                    elif "events" in item:
                        await self.db.record_events(jid, _restored(item["events"], item["id"]))
                    else:
                        late = {**item["activity_error"], "recorded_late": True, "deferred": item["id"]}
                        await record(self.db, jid, "activity", "error", late)
                except JobGone:
                    pass
            self.carry.pending.pop(0)

    def _fail(self, exc: Exception, attempt: int) -> NoReturn:
        verdict = self._verdict(exc, attempt)
        if verdict is exc:
            # As it is: ``raise exc from exc`` makes its cause a loop Temporal cannot encode.
            raise exc
        raise verdict from exc

    def _verdict(self, exc: Exception, attempt: int) -> BaseException:
        """What Temporal is told. An outage (``is_transient``) is retried for the whole window,
        quietly (a benign error: no stack trace per attempt in the worker's log); an error of the
        step itself is retried until it has failed ``LOGIC_ATTEMPTS`` times, then fails for good.
        The heartbeat sent here hands the carry to the next attempt."""
        if isinstance(exc, ApplicationError) or type(exc).__name__ in NON_RETRYABLE:
            activity.heartbeat()
            return exc
        if is_transient(exc):
            log.info("activity.outage", error_type=type(exc).__name__, error=str(exc), attempt=attempt)
            activity.heartbeat()
            return ApplicationError(
                str(exc), TRANSIENT_MARK, type=type(exc).__name__, category=ApplicationErrorCategory.BENIGN
            )
        self.carry.logic_failures += 1
        activity.heartbeat()
        if self.carry.logic_failures >= LOGIC_ATTEMPTS:
            return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
        return exc


CARRY_KEY = "quire_carry"


@dataclass
class _Carry:
    """What an activity attempt hands the next one through its heartbeat details."""

    pending: list[dict[str, Any]] = field(default_factory=list)  # audit records not yet written
    logic_failures: int = 0  # attempts that failed with an error of the step (not an outage)

    @classmethod
    def of(cls, details: Any) -> _Carry:
        for d in details or ():
            if isinstance(d, dict) and CARRY_KEY in d:
                c = d[CARRY_KEY]
                return cls(list(c.get("pending", [])), int(c.get("logic_failures", 0)))
        return cls()

    def detail(self) -> dict[str, Any]:
        return {CARRY_KEY: {"pending": self.pending, "logic_failures": self.logic_failures}}


class _CarryingHeartbeat(worker.ActivityOutboundInterceptor):
    """Every heartbeat (the activity's own and ours) also carries the attempt's ``_Carry``: the
    last one an attempt sends is what the next attempt finds in its heartbeat details."""

    def __init__(self, next: worker.ActivityOutboundInterceptor, audit: _ActivityAudit) -> None:
        super().__init__(next)
        self.audit = audit

    def heartbeat(self, *details: Any) -> None:
        carry = self.audit.carry
        super().heartbeat(*details, *([carry.detail()] if carry.pending or carry.logic_failures else []))


def _portable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished audit events as JSON (their ts as text), to ride in a heartbeat."""
    return [{**e, "ts": e["ts"].isoformat()} for e in events]


def _restored(events: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    late = {"recorded_late": True, "deferred": key}
    return [{**e, "ts": dt.datetime.fromisoformat(e["ts"]), "data": {**e["data"], **late}} for e in events]


async def _deferred_written(db: Database, job_id: uuid.UUID, key: str) -> bool:
    async with db.tx() as s:
        found = await s.execute(
            text("SELECT 1 FROM audit_events WHERE job_id = :j AND data->>'deferred' = :k LIMIT 1"),
            {"j": job_id, "k": key},
        )
        return found.first() is not None


def _why_cancelled() -> str:
    """What the server gave as the reason it cancelled this attempt: a cancel request, a heartbeat
    that timed out, a pause (`temporal activity pause`), a reset, a run that is gone, or the
    worker shutting down; "unknown" when it gave none (a cancel from inside the worker)."""
    details = activity.cancellation_details()
    named = [k for k in _CANCEL_REASONS if details is not None and getattr(details, k)]
    return ", ".join(named) or "unknown"


_CANCEL_REASONS = ("cancel_requested", "timed_out", "paused", "reset", "not_found", "worker_shutdown")


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
