"""What Temporal says of a workflow, and the settlement of a row that disagrees with it.

Postgres says what the user sees, Temporal what runs (README: "Nothing stuck"). Where a row says
that something runs and its workflow has closed without recording its end (terminated by an
operator, failed in the very step that records the failure), the row is settled from here: the job
ended as its workflow ended (its code and reason, read from the workflow's failure), its partial
work kept; the edit failed; the plan proposal rejected. Each settlement is checked again under the
job row's lock (the row must still say what was seen), written with an audit event of its own
(``reconcile``, in the same transaction) and counted (``metrics.SETTLED``). The reconciler
(``services.reconcile``), ``quire doctor`` and a cancel or resume that finds the workflow gone
settle through these functions.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from core.controls import storable
from core.errors import JobGone
from core.spec import TERMINAL_STATUSES, ErrorCode
from db.endings import end_edit, end_job
from db.loop import Edit, PlanVersion
from db.session import Database, JobTx, lock_job
from metrics import SETTLED
from workflows.steps import code_of

log = structlog.get_logger(__name__)

# What a closed run's status says, in a reason's words.
_ENDED = {
    "completed": "completed",
    "failed": "failed",
    "canceled": "was cancelled",
    "terminated": "was terminated",
    "timed_out": "timed out",
}


@dataclass(frozen=True)
class WorkflowState:
    """A workflow id's latest run as Temporal describes it: ``running``, a closed status
    (``completed``, ``failed``, ``canceled``, ``terminated``, ``timed_out``), ``not_found`` (never
    started, or removed by retention), or ``unknown`` (Temporal did not answer)."""

    workflow_id: str
    status: str
    run_id: str | None = None

    @property
    def closed(self) -> bool:
        return self.status in _ENDED

    @property
    def said(self) -> str:
        """The state in words, for a reason or a report."""
        if self.status == "not_found":
            return "never started"
        return _ENDED.get(self.status, self.status)


async def state(client: Client, workflow_id: str) -> WorkflowState:
    """The latest run of ``workflow_id`` (a run continued as new: the newest)."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        return WorkflowState(workflow_id, "not_found" if exc.status == RPCStatusCode.NOT_FOUND else "unknown")
    except Exception:  # noqa: BLE001 - Temporal unreachable: unknown, never a verdict
        return WorkflowState(workflow_id, "unknown")
    status = desc.status.name.lower() if desc.status is not None else "unknown"
    return WorkflowState(workflow_id, status, desc.run_id)


@dataclass(frozen=True)
class Closure:
    """How a closed workflow ended, as its row's end: a job's status (failed, cancelled), code and
    reason; ``detail`` is what Temporal says of it (a termination's reason, the failure's message)."""

    status: str
    error_code: str
    reason: str
    detail: str


async def closure(client: Client, st: WorkflowState) -> Closure:
    """The end of a closed run, read from its close event (the failure the workflow ended with
    carries the job's code and reason: ``workflows.job``); storable whatever Temporal holds."""
    detail, etype = "", None
    try:
        await client.get_workflow_handle(st.workflow_id, run_id=st.run_id).result(follow_runs=False)
    except WorkflowFailureError as exc:
        e: BaseException | None = exc.cause
        while isinstance(e, ActivityError | ChildWorkflowError) and e.cause is not None:
            e = e.cause
        if e is not None:
            detail = e.message if isinstance(e, FailureError) else str(e)
            etype = e.type if isinstance(e, ApplicationError) else type(e).__name__
    except Exception as exc:  # noqa: BLE001 - its end unreadable: the status alone says it
        detail = f"(its end could not be read: {type(exc).__name__})"
    detail = storable(detail)[:2000]
    if st.status == "canceled":
        return Closure("cancelled", ErrorCode.CANCELLED, f"cancelled: its workflow {st.workflow_id} was cancelled", "")
    code = code_of(etype) if st.status == "failed" else ErrorCode.INTERNAL
    what = f"its workflow {st.workflow_id} {st.said}"
    if st.status == "failed" and etype in {c.value for c in ErrorCode}:
        reason = f"{detail} ({what} before it could record this)"  # the job's own reason
    else:
        reason = f"{what} without recording the job's end" + (f": {detail}" if detail else "")
    return Closure("failed", code, reason, detail)


def _event(tx: JobTx, what: str, action: str, by: str, data: dict[str, Any]) -> None:
    tx.event("reconcile", action, {"what": what, "by": by, **data})


def _counted(what: str, action: str, by: str, **where: Any) -> None:
    SETTLED.labels(what, action, by).inc()
    log.info("settled", what=what, action=action, by=by, **where)


async def end_job_as(
    db: Database, job_id: uuid.UUID, seen: WorkflowState, end: Closure, *, by: str, action: str | None = None
) -> bool:
    """End the job as ``end`` says, if it still says it runs on ``seen``'s workflow (re-read under
    its lock); whether it did. ``action``: the event's, by default ``job_<status>``."""
    action = action or f"job_{end.status}"
    try:
        async with db.job_tx(job_id) as tx:
            job = await lock_job(tx.session, job_id)
            if job is None or job.status in TERMINAL_STATUSES or job.workflow_id != seen.workflow_id:
                return False
            await end_job(tx, job, status=end.status, error_code=end.error_code, reason=storable(end.reason))
            data = {"workflow_id": seen.workflow_id, "temporal": seen.status, "status": end.status}
            _event(tx, "job", action, by, {**data, "error_code": end.error_code, "reason": storable(end.reason)})
    except JobGone:
        return False
    _counted("job", action, by, job_id=str(job_id), workflow_id=seen.workflow_id)
    return True


async def fail_edit_as(
    db: Database, job_id: uuid.UUID, edit_id: int, seen: WorkflowState, end: Closure, *, by: str
) -> bool:
    """Fail the edit as its workflow ended, if it still runs on ``seen``'s workflow; whether it did."""
    try:
        async with db.job_tx(job_id) as tx:
            job = await lock_job(tx.session, job_id)
            edit = await tx.session.get(Edit, edit_id, populate_existing=True)
            if job is None or edit is None or edit.status != "running" or edit.workflow_id != seen.workflow_id:
                return False
            await end_edit(tx, job, edit, error_code=end.error_code, reason=storable(end.reason))
            _event(
                tx,
                "edit",
                "edit_failed",
                by,
                {"edit": edit.number, "workflow_id": seen.workflow_id, "temporal": seen.status, "reason": end.reason},
            )
    except JobGone:
        return False
    _counted("edit", "edit_failed", by, job_id=str(job_id), workflow_id=seen.workflow_id)
    return True


async def reject_review(db: Database, job_id: uuid.UUID, version: int, why: str, *, by: str) -> bool:
    """Reject a plan version still proposed (its workflow refused it, or ended before taking it)."""
    why = storable(why)[:1000]
    try:
        async with db.job_tx(job_id) as tx:
            await lock_job(tx.session, job_id)
            pv = (
                await tx.session.execute(
                    select(PlanVersion).where(PlanVersion.job_id == job_id, PlanVersion.version == version)
                )
            ).scalar_one_or_none()
            if pv is None or pv.status != "proposed":
                return False
            pv.status, pv.reason, pv.decided_at = "rejected", why, dt.datetime.now(dt.UTC)
            tx.event("plan", "rejected", {"version": version, "reason": why})
            if by != "api":
                _event(tx, "review", "review_rejected", by, {"version": version, "workflow_id": pv.workflow_id})
    except JobGone:
        return False
    if by != "api":
        _counted("review", "review_rejected", by, job_id=str(job_id), version=version)
    return True


async def note(db: Database, job_id: uuid.UUID | None, what: str, action: str, by: str, data: dict[str, Any]) -> None:
    """A settlement that changed Temporal, not a row (a start, an Update delivered again, a
    termination): its event in the job's log (none for a deleted job) and its count."""
    if job_id is not None:
        try:
            async with db.job_tx(job_id) as tx:
                _event(tx, what, action, by, data)
        except JobGone:
            pass
    _counted(what, action, by, job_id=str(job_id) if job_id else None, workflow_id=data.get("workflow_id"))
