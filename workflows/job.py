"""The job workflow: plan; write the units (chapters) up to ``parallelism`` at a time, each a child
workflow; complete them in order, each only once the seam with its predecessor is validated;
then finalize, topping up until the length is met or finalize gives up.

Deterministic orchestration only: every step is an activity that reads its inputs from Postgres
by id and writes its results there; this passes ids and small numbers and decides what runs next.
The history stays short: a child workflow per unit, and continue-as-new (once the running units
have drained) when Temporal suggests it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

from workflows.steps import MODEL, QUICK, Durability, cause, continue_as_new, step, was_cancelled
from workflows.unit import UnitInput, UnitWorkflow
from workflows.webhook import WebhookInput, WebhookWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.contracts import FailInput, JobRef, NodeRef, PlanResult, RoundRef
    from activities.finalize import FinalizeActivities
    from activities.plan import PlanActivities
    from activities.review import ReviewActivities, ReviewRef
    from activities.seams import SeamActivities
    from core.review import budgets_problem
    from core.spec import ErrorCode
    from core.webhooks import RetrySchedule


@dataclass
class JobInput:
    job_id: str
    llm_queue: str  # the task queue of the steps that call the model
    # Where a continued-as-new run picks up; a fresh job starts at "plan".
    stage: str = "plan"
    next_unit: int = 0  # units before it are complete
    round: int = 0
    webhook: RetrySchedule | None = None  # the job has a webhook: its end is POSTed on this schedule
    durability: Durability = field(default_factory=Durability)
    # A resumed run (quire resume): where to pick up is read from what the job stored.
    resumed: bool = False
    witness: bool = False  # the operator has a witness: the job's last checkpoint is POSTed to it


@dataclass
class PlanReviewInput:
    """An Update to a job waiting for its plan's review: the version its author proposed (stored
    in Postgres, ``plan_versions``) and its top-level budgets, which the validator checks."""

    version: int
    budgets: list[int] = field(default_factory=list)


@workflow.defn(name="JobWorkflow")
class JobWorkflow:
    def __init__(self) -> None:
        self.job_id = ""
        self.reviewing = False  # waiting for the plan's review (options.review_plan)
        self.plan_version = 0  # the plan's latest version
        self.target_words = 0

    @workflow.update
    async def review_plan(self, inp: PlanReviewInput) -> int:
        """Approve the plan, as is or as its author edited it: the proposed version is applied
        (the outline laid out again) and the job goes on to write it. Answers the version."""
        version = await step(
            ReviewActivities.apply_review, ReviewRef(self.job_id, inp.version), QUICK, f"plan v{inp.version}"
        )
        self.plan_version, self.reviewing = version, False
        return version

    @review_plan.validator
    def _review_plan_ok(self, inp: PlanReviewInput) -> None:
        """Refused before it enters the history: no review awaited, a stale version, budgets
        that do not reach the target."""
        if not self.reviewing:
            raise ValueError("the job is not waiting for its plan to be reviewed")
        if inp.version <= self.plan_version:
            raise ValueError(f"plan version {inp.version} is not newer than version {self.plan_version}")
        problem = budgets_problem(inp.budgets, self.target_words)
        if problem is not None:
            raise ValueError(problem)

    @workflow.run
    async def run(self, inp: JobInput) -> str:
        self.durability = inp.durability  # every step's retry window (workflows.steps.durability)
        try:
            result = await self._outcome(inp)
        except (asyncio.CancelledError, ApplicationError):
            await _notify(inp)  # the job's end is recorded (failed or cancelled): tell its webhook
            raise
        await _notify(inp)
        return result

    async def _outcome(self, inp: JobInput) -> str:
        try:
            return await self._run(inp)
        except asyncio.CancelledError:
            # Everything written stays; the job is marked cancelled, then the workflow ends cancelled.
            await _mark_cancelled(inp.job_id)
            raise
        except (ActivityError, ChildWorkflowError) as err:
            if was_cancelled(err):  # the cancel reached a child or activity before this run
                await _mark_cancelled(inp.job_id)
                raise asyncio.CancelledError() from err
            code, reason = cause(err)
            fail = FailInput(inp.job_id, code, reason)
            await step(FinalizeActivities.fail_job, fail, QUICK, f"fail: {code}", outlive=True)
            raise ApplicationError(reason, type=code, non_retryable=True) from err

    async def _run(self, inp: JobInput) -> str:
        jid, q = inp.job_id, inp.llm_queue
        self.job_id = jid
        # plan_job is idempotent: on a continued run it returns the stored plan.
        plan = await step(PlanActivities.plan_job, JobRef(jid), MODEL, "plan", q)
        if plan.review and inp.stage == "plan":  # wait, durably, for its author to approve the plan
            wait = await step(ReviewActivities.await_review, JobRef(jid), QUICK, "await plan review")
            if wait.awaiting:
                self.plan_version, self.target_words, self.reviewing = wait.version, plan.target_words, True
                await workflow.wait_condition(lambda: not self.reviewing)
                plan = await step(PlanActivities.plan_job, JobRef(jid), MODEL, "plan as reviewed", q)
        if inp.resumed:  # from what the earlier runs committed: the units complete, the last round
            inp.resumed, inp.next_unit, inp.round = False, plan.units_done, plan.round
            inp.stage = "units" if plan.units_done < len(plan.units) else "finalize"
        if inp.stage == "plan":
            inp.stage = "units"
        if inp.stage == "units":
            await self._units(inp, plan)
            inp.stage = "finalize"
        while True:
            res = await step(
                FinalizeActivities.finalize, RoundRef(jid, inp.round), QUICK, f"finalize round {inp.round}"
            )
            if res.met:
                return "succeeded"
            if res.give_up:
                raise ApplicationError(
                    res.reason or "length not met",
                    type=res.error_code or ErrorCode.LENGTH_NOT_MET,
                    non_retryable=True,
                )
            unit = await step(
                FinalizeActivities.add_continuation,
                RoundRef(jid, inp.round),
                QUICK,
                f"top-up round {inp.round + 1}: {res.target_words - res.words} words short",
            )
            inp.round += 1
            await _unit(inp, unit, f"top-up {inp.round}")
            await step(SeamActivities.complete_unit, NodeRef(jid, unit), MODEL, f"seam of top-up {inp.round}", q)
            if workflow.info().is_continue_as_new_suggested():
                continue_as_new(replace(inp, stage="finalize"))

    async def _units(self, inp: JobInput, plan: PlanResult) -> None:
        """Write the units, ``plan.parallelism`` at a time, while completing them in order (a
        seam needs its predecessor's real end), so that a free slot is refilled at once."""
        jid, q, units = inp.job_id, inp.llm_queue, plan.units
        writing: dict[int, asyncio.Task[None]] = {}
        expanded: set[int] = set()
        run = {"started": inp.next_unit, "stopped": False}

        async def complete_in_order() -> None:
            while True:
                await workflow.wait_condition(lambda: inp.next_unit < run["started"] or bool(run["stopped"]))
                if inp.next_unit >= run["started"]:
                    return
                k = inp.next_unit
                await writing[k]  # a failed unit fails the job here
                await step(SeamActivities.complete_unit, NodeRef(jid, units[k]), MODEL, f"seam of chapter {k + 1}", q)
                inp.next_unit += 1

        completing = asyncio.create_task(complete_in_order())
        first = inp.next_unit
        while run["started"] < len(units):
            await workflow.wait_condition(
                lambda: completing.done() or sum(not t.done() for t in writing.values()) < plan.parallelism
            )
            if completing.done():
                break  # it failed (it ends by itself only once stopped)
            if workflow.info().is_continue_as_new_suggested() and run["started"] > first:
                break  # let the started units finish, then start afresh from here
            i = run["started"]
            parent = plan.parents[i]
            if parent and parent not in expanded:  # a part: its chapters are planned first
                await step(PlanActivities.expand_node, NodeRef(jid, parent), MODEL, "plan part", q)
                expanded.add(parent)
            writing[i] = asyncio.create_task(_unit(inp, units[i], f"chapter {i + 1}", key_points=plan.review))
            run["started"] = i + 1
        run["stopped"] = True
        await completing
        if run["started"] < len(units):
            continue_as_new(replace(inp, stage="units"))


async def _unit(inp: JobInput, unit_id: int, label: str, key_points: bool = False) -> None:
    await workflow.execute_child_workflow(
        UnitWorkflow.run,
        UnitInput(inp.job_id, unit_id, inp.llm_queue, label, durability=inp.durability, key_points=key_points),
        id=f"{workflow.info().workflow_id}-u{unit_id}",
        static_summary=label,
        # The job's search attributes (QuireJobId...): its units are found with it, and deleted with it.
        search_attributes=workflow.info().typed_search_attributes,
        # Don't wait for the child to acknowledge: a cancel request sent to a child run that has
        # since continued-as-new is lost. The job is marked cancelled at once, and the child's
        # next activity refuses to run for a cancelled job (JobNotRunnable).
        cancellation_type=ChildWorkflowCancellationType.TRY_CANCEL,
    )


async def _notify(inp: JobInput) -> None:
    """Start the delivery of the job's end to its webhook (and of its last checkpoint to the
    operator's witness), and return: a child workflow that outlives this one (ABANDON) retries it
    for hours; the job's outcome waits for none of it."""
    if inp.webhook is None and not inp.witness:
        return
    try:
        await workflow.start_child_workflow(
            WebhookWorkflow.run,
            WebhookInput(
                inp.job_id, inp.webhook or RetrySchedule(), deliver=inp.webhook is not None, witness=inp.witness
            ),
            id=f"{workflow.info().workflow_id}-webhook",
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary="webhook",
        )
    except WorkflowAlreadyStartedError:  # a reset re-ran this end: one delivery is enough
        workflow.logger.info("webhook already started for job %s", inp.job_id)


async def _mark_cancelled(job_id: str) -> None:
    await step(
        FinalizeActivities.fail_job,
        FailInput(job_id, ErrorCode.CANCELLED, "cancelled by request", status="cancelled"),
        QUICK,
        "mark cancelled",
        outlive=True,
    )
