"""The job workflow: plan, one section child workflow after another, then finalize, topping up
with continuation sections until the length is met or finalize gives up.

Deterministic orchestration only: every step is an activity that reads its inputs from Postgres
by id and writes its results there; this passes ids and small numbers and decides what runs next.
The history stays short: a child workflow per section, and continue-as-new when Temporal says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowCancellationType

from workflows.section import SectionInput, SectionWorkflow
from workflows.steps import MODEL, QUICK, cause, step, was_cancelled

with workflow.unsafe.imports_passed_through():
    from activities.contracts import FailInput, JobRef, RoundRef
    from activities.finalize import FinalizeActivities
    from activities.plan import PlanActivities
    from core.spec import ErrorCode


@dataclass
class JobInput:
    job_id: str
    # Where a continued-as-new run picks up; a fresh job starts at "plan".
    stage: str = "plan"
    next_section: int = 0
    round: int = 0


@workflow.defn(name="JobWorkflow")
class JobWorkflow:
    @workflow.run
    async def run(self, inp: JobInput) -> str:
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
            await step(FinalizeActivities.fail_job, FailInput(inp.job_id, code, reason), QUICK, f"fail: {code}")
            raise ApplicationError(reason, type=code, non_retryable=True) from err

    async def _run(self, inp: JobInput) -> str:
        jid = inp.job_id
        # plan_job is idempotent: on a continued run it returns the stored plan.
        plan = await step(PlanActivities.plan_job, JobRef(jid), MODEL, "plan")
        if inp.stage == "plan":
            inp.stage = "sections"
        if inp.stage == "sections":
            while inp.next_section < plan.sections:
                await _section(jid, inp.next_section)
                inp.next_section += 1
                if workflow.info().is_continue_as_new_suggested() and inp.next_section < plan.sections:
                    workflow.continue_as_new(JobInput(jid, "sections", inp.next_section, inp.round))
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
            ordinal = await step(
                FinalizeActivities.add_continuation,
                RoundRef(jid, inp.round),
                QUICK,
                f"top-up round {inp.round + 1}: {res.target_words - res.words} words short",
            )
            inp.round += 1
            await _section(jid, ordinal)
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(JobInput(jid, "finalize", inp.next_section, inp.round))


async def _section(jid: str, ordinal: int) -> None:
    await workflow.execute_child_workflow(
        SectionWorkflow.run,
        SectionInput(jid, ordinal, f"section {ordinal + 1}"),
        id=f"{workflow.info().workflow_id}-s{ordinal + 1}",
        static_summary=f"section {ordinal + 1}",
        # Don't wait for the child to acknowledge: a cancel request sent to a child run that has
        # since continued-as-new is lost. The job is marked cancelled at once, and the child's
        # next activity refuses to run for a cancelled job (JobNotRunnable).
        cancellation_type=ChildWorkflowCancellationType.TRY_CANCEL,
    )


async def _mark_cancelled(job_id: str) -> None:
    await step(
        FinalizeActivities.fail_job,
        FailInput(job_id, ErrorCode.CANCELLED, "cancelled by request", status="cancelled"),
        QUICK,
        "mark cancelled",
    )
