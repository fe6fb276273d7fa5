"""The reconciler: where Postgres (what the user sees) and Temporal (what runs) disagree, each
disagreement found and settled (README: "Nothing stuck").

Every row that says something runs names its workflow, whose id is the row's: a job (``jobs.
workflow_id``, its current run), an edit (``edits.workflow_id``), a plan version sent for review
(``plan_versions.workflow_id``, the Update's id ``plan-v<n>``). What disagrees, and what settles it:

- a job queued or running whose run has closed: ended as Temporal ended it (failed with the
  workflow's code and reason, or cancelled), its partial work kept; one whose run never started:
  started (the start is idempotent: a running or closed id is not started again);
- an edit running whose workflow has closed: failed with the reason; never started: started;
- a plan version still proposed after the grace period: its Update delivered again to the run it
  names (the same id: Temporal applies it once); refused, or that run gone: the version rejected;
- a job's run or an edit's workflow still open for a job the database says ended (for longer than
  the grace period: a workflow ends a moment after it records its end), deleted, or on a later
  run, or for an edit that ended or is gone: terminated.

Chapters (``<run>-u<unit>``) and webhook deliveries need nothing of their own: a chapter ends with
its run (a terminated chapter fails its run), and a delivery ends by itself. Each settlement is
checked again under the job row's lock before it is written, and is an audit event (``reconcile``)
and a metric (``services.settle``). It runs on a Temporal Schedule (``ensure_schedule``: every
QUIRE_RECONCILE_EVERY_S, overlap SKIP, made or updated by each worker when it starts) whose
workflow (``workflows.reconcile``) runs ``Reconciler.reconcile``; ``quire doctor`` runs the same
check once. Only workflows of this deployment's task queue are looked at.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from core import runs
from core.spec import TERMINAL_STATUSES
from core.webhooks import RetrySchedule
from db.loop import Edit, PlanVersion
from db.models import Job, User
from db.session import Database
from services import jobs, loop, settle
from services.config import Settings
from services.settle import WorkflowState
from workflows.reconcile import ACTIVITY, ReconcileWorkflow
from workflows.steps import Durability

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Starts:
    """How this deployment starts a job's or an edit's workflow (as the API does: its settings)."""

    task_queue: str
    durability: Durability = field(default_factory=Durability)
    webhook_retry: RetrySchedule | None = None
    witness: bool = False


def starts_of(settings: Settings) -> Starts:
    """As the API starts a job (``api.jobs``), from the same settings."""
    return Starts(
        settings.temporal_task_queue,
        jobs.durability(settings),
        settings.webhook_retry,
        settings.quire_witness_url is not None,
    )


@dataclass
class Finding:
    """One disagreement: what (job, edit, review, workflow), the action that settles it, the
    workflow, the job, in words; after ``settle``, its outcome: settled, skipped (the row changed
    meanwhile: nothing to do), or failed (and why); ``found`` until then (or in a dry run)."""

    what: str
    action: str
    workflow_id: str
    job_id: str | None
    said: str
    temporal: str = ""
    ref: int | None = None  # the plan version, or the edit's id
    run_id: str | None = None
    outcome: str = "found"

    def line(self) -> str:
        return f"{self.what} {self.job_id or '-'}: {self.said} -> {self.action} [{self.outcome}]"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what Temporal could not say, in words
    checked: dict[str, int] = field(default_factory=dict)  # rows and workflows looked at, by what

    def counts(self) -> dict[str, int]:
        out = Counter(f"{f.action}.{f.outcome}" for f in self.findings)
        return {**out, "unchecked": len(self.unchecked)}


class Reconciler:
    def __init__(self, db: Database, client: Client, starts: Starts, *, grace_s: float = 60.0) -> None:
        self.db, self.client, self.starts, self.grace = db, client, starts, timedelta(seconds=grace_s)

    @activity.defn(name=ACTIVITY)
    async def reconcile(self) -> dict[str, int]:
        """The scheduled run: check, settle, and answer the counts."""
        report = await self.run(by="reconciler")
        if report.findings or report.unchecked:
            log.info("reconcile.done", **report.counts())
        return report.counts()

    async def run(self, *, by: str, dry_run: bool = False) -> Report:
        report = await self.check()
        if not dry_run:
            for f in report.findings:
                await self.settle(f, by=by)
        return report

    # -- finding ---------------------------------------------------------------------------------

    async def check(self) -> Report:
        """Every disagreement there is now (nothing is written)."""
        report = Report()
        opened = await self._open()
        if opened is None:
            report.unchecked.append("Temporal did not answer: nothing could be checked")
            return report
        now = dt.datetime.now(dt.UTC)
        async with self.db.tx() as s:
            live = (await s.execute(select(Job.id, Job.workflow_id).where(Job.status.in_(("queued", "running"))))).all()
            edits = (
                await s.execute(select(Edit.id, Edit.job_id, Edit.workflow_id).where(Edit.status == "running"))
            ).all()
            proposed = (
                await s.execute(
                    select(
                        PlanVersion.job_id, PlanVersion.version, PlanVersion.workflow_id, Job.status, Job.workflow_id
                    )
                    .join(Job, Job.id == PlanVersion.job_id)
                    .where(PlanVersion.status == "proposed", PlanVersion.created_at < now - self.grace)
                )
            ).all()
            owners = {runs.job_of(w) or _edit_job(w) for w in opened} - {None}
            jobs_of = {
                r.id: r
                for r in (
                    await s.execute(
                        select(Job.id, Job.status, Job.workflow_id, Job.completed_at).where(Job.id.in_(owners))
                    )
                ).all()
            }
            edits_of = {
                r.workflow_id: r
                for r in (
                    await s.execute(
                        select(Edit.workflow_id, Edit.status, Edit.completed_at).where(Edit.job_id.in_(owners))
                    )
                ).all()
            }
        report.checked = {"jobs": len(live), "edits": len(edits), "reviews": len(proposed), "workflows": len(opened)}
        for job_id, wid in live:
            if wid not in opened:
                await self._row(report, "job", wid, str(job_id), None)
        for edit_id, job_id, wid in edits:
            if wid not in opened:
                await self._row(report, "edit", wid, str(job_id), edit_id)
        for job_id, version, wid, status, current in proposed:
            wid = wid or current
            if status != "running" or wid != current:
                why = f"job is {status}" if status != "running" else f"its run {wid} is no longer the job's ({current})"
                report.findings.append(
                    Finding(
                        "review", "review_rejected", wid, str(job_id), f"plan v{version} proposed; {why}", ref=version
                    )
                )
            else:
                said = f"plan v{version} proposed {self.grace.total_seconds():g}+ s ago, not applied"
                report.findings.append(Finding("review", "update_delivered", wid, str(job_id), said, ref=version))
        for wid, run_id in opened.items():
            why = self._stray(wid, jobs_of, edits_of, now)
            if why is not None:
                owner = runs.job_of(wid) or _edit_job(wid)
                report.findings.append(
                    Finding(
                        "workflow",
                        "workflow_terminated",
                        wid,
                        str(owner) if owner else None,
                        why,
                        "running",
                        run_id=run_id,
                    )
                )
        return report

    async def _open(self) -> dict[str, str] | None:
        """The open workflows of jobs and edits on this deployment's task queue (id -> run id)."""
        queue = self.starts.task_queue.replace("\\", "\\\\").replace("'", "\\'")  # a literal in the query
        query = f"WorkflowId STARTS_WITH 'job-' AND ExecutionStatus = 'Running' AND TaskQueue = '{queue}'"
        try:
            return {wf.id: wf.run_id async for wf in self.client.list_workflows(query)}
        except RPCError:
            return None

    async def _row(self, report: Report, what: str, wid: str, job_id: str, ref: int | None) -> None:
        """A row that says it runs, its workflow not among the open ones: what Temporal says of it."""
        seen = await settle.state(self.client, wid)
        noun = "job" if what == "job" else "edit"
        if seen.status == "unknown":
            report.unchecked.append(f"{noun} {job_id}: Temporal did not say how {wid} is")
        elif seen.status == "not_found":
            said = f"{noun} says it runs; its workflow {wid} never started"
            report.findings.append(Finding(what, f"{noun}_started", wid, job_id, said, seen.status, ref))
        elif seen.closed:
            said = f"{noun} says it runs; its workflow {wid} {seen.said}"
            action = "job_cancelled" if what == "job" and seen.status == "canceled" else f"{noun}_failed"
            report.findings.append(Finding(what, action, wid, job_id, said, seen.status, ref, seen.run_id))

    def _stray(self, wid: str, jobs_of: dict[Any, Any], edits_of: dict[str, Any], now: dt.datetime) -> str | None:
        """Why an open workflow should not be open (None: it should)."""

        def ended_long_ago(at: dt.datetime | None) -> bool:  # a workflow ends a moment after it records its end
            return at is not None and at < now - self.grace

        number = runs.edit_of(wid)
        if number is not None:
            if wid.endswith(f"-e{number}"):  # an edit's own workflow (its top-ups end with it)
                job = jobs_of.get(_edit_job(wid))
                edit = edits_of.get(wid)
                if job is None or edit is None:
                    return "an edit's workflow open for an edit (or a job) that is deleted"
                if edit.status != "running" and ended_long_ago(edit.completed_at):
                    return f"an edit's workflow open for an edit that is {edit.status}"
            return None
        owner = runs.job_of(wid)
        if owner is None or wid != runs.workflow_id(owner, runs.run_of(wid) or 1):
            return None  # a chapter ends with its run; anything else is not a job's run
        job = jobs_of.get(owner)
        if job is None:
            return "a job's run open for a job that is deleted"
        if job.workflow_id != wid:
            return f"a job's run open beside the job's current run {job.workflow_id}"
        if job.status in TERMINAL_STATUSES and ended_long_ago(job.completed_at):
            return f"a job's run open for a job that is {job.status}"
        return None

    # -- settling --------------------------------------------------------------------------------

    async def settle(self, f: Finding, *, by: str) -> None:
        """Settle one finding, re-checked first; its ``outcome`` says what happened."""
        try:
            done = await self._settle(f, by)
            f.outcome = "settled" if done else "skipped"
        except Exception as exc:  # noqa: BLE001 - one finding's failure stops none of the others
            f.outcome = f"failed: {type(exc).__name__}: {exc}"
            log.warning("reconcile.failed", **asdict(f))

    async def _settle(self, f: Finding, by: str) -> bool:
        job_id = uuid.UUID(f.job_id) if f.job_id else None
        if f.action in ("job_failed", "job_cancelled", "edit_failed"):
            seen = WorkflowState(f.workflow_id, f.temporal, f.run_id)
            end = await settle.closure(self.client, seen)
            if f.what == "edit":
                return await settle.fail_edit_as(self.db, job_id, f.ref or 0, seen, end, by=by)  # type: ignore[arg-type]
            return await settle.end_job_as(self.db, job_id, seen, end, by=by)  # type: ignore[arg-type]
        if f.action in ("job_started", "edit_started"):
            return await self._start(f, job_id, by)  # type: ignore[arg-type]
        if f.action == "review_rejected":
            return await settle.reject_review(self.db, job_id, f.ref or 0, f.said, by=by)  # type: ignore[arg-type]
        if f.action == "update_delivered":
            return await self._deliver(f, job_id, by)  # type: ignore[arg-type]
        if f.action == "workflow_terminated":
            try:
                handle = self.client.get_workflow_handle(f.workflow_id, run_id=f.run_id)
                await handle.terminate(f"settled by the {by}: {f.said}")
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                return False  # it closed meanwhile
            await settle.note(self.db, job_id, "workflow", f.action, by, {"workflow_id": f.workflow_id, "why": f.said})
            return True
        raise ValueError(f"no settlement named {f.action}")

    async def _start(self, f: Finding, job_id: uuid.UUID, by: str) -> bool:
        """Start the row's workflow, if the row still says it runs on it (the start is idempotent)."""
        async with self.db.tx() as s:
            job = await s.get(Job, job_id)
            user = await s.scalar(select(User.name).where(User.id == job.user_id)) if job is not None else None
            edit = await s.get(Edit, f.ref) if f.what == "edit" and f.ref else None
        if job is None or user is None:
            return False
        if f.what == "edit":
            if edit is None or edit.status != "running" or edit.workflow_id != f.workflow_id:
                return False
            started = await loop.start_edit_workflow(
                self.client, job, edit, user, self.starts.task_queue, self.starts.durability
            )
        else:
            if job.status in TERMINAL_STATUSES or job.workflow_id != f.workflow_id:
                return False
            started = await jobs.start_workflow(
                self.client,
                job,
                user,
                self.starts.task_queue,
                self.starts.durability,
                resumed=True,  # from what the job committed (nothing, or what a lost run wrote)
                webhook_retry=self.starts.webhook_retry,
                witness=self.starts.witness,
            )
        if started:
            await settle.note(self.db, job_id, f.what, f.action, by, {"workflow_id": f.workflow_id, "edit": f.ref})
        return started

    async def _deliver(self, f: Finding, job_id: uuid.UUID, by: str) -> bool:
        """The proposed version's Update, delivered again (same id: applied once); refused, or its
        run gone, the version is rejected."""
        async with self.db.tx() as s:
            pv = (
                await s.execute(select(PlanVersion).where(PlanVersion.job_id == job_id, PlanVersion.version == f.ref))
            ).scalar_one_or_none()
        if pv is None or pv.status != "proposed":
            return False
        pv.workflow_id = pv.workflow_id or f.workflow_id
        try:
            await loop.deliver_review(self.client, pv, wait=WorkflowUpdateStage.ACCEPTED)
        except WorkflowUpdateFailedError as exc:
            why = f"its workflow refused it: {exc.cause or exc}"
            return await settle.reject_review(self.db, job_id, pv.version, why, by=by)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            why = f"its run {pv.workflow_id} ended before it was delivered"
            return await settle.reject_review(self.db, job_id, pv.version, why, by=by)
        data = {"workflow_id": pv.workflow_id, "version": pv.version, "update_id": loop.review_update_id(pv.version)}
        await settle.note(self.db, job_id, "review", f.action, by, data)
        return True


def _edit_job(wid: str) -> uuid.UUID | None:
    """The job of an edit's workflow id (``job-<id>-e<n>[-u<unit>]``)."""
    if runs.edit_of(wid) is None:
        return None
    try:
        return uuid.UUID(wid[4:40])
    except ValueError:
        return None


def schedule_id(task_queue: str) -> str:
    return f"{task_queue}-reconcile"


async def ensure_schedule(client: Client, task_queue: str, every_s: float) -> None:
    """The reconciler's Schedule, made once, or brought to ``every_s`` and ``task_queue`` if it
    exists (each worker calls this when it starts: idempotent, whichever comes first)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflow.run,
            id=schedule_id(task_queue),
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=15),  # a run that hangs does not SKIP every later one
            static_summary="reconcile",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id(task_queue), schedule)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(schedule_id(task_queue)).update(lambda _: ScheduleUpdate(schedule=schedule))
    log.info("reconcile.scheduled", schedule=schedule_id(task_queue), every_s=every_s)
