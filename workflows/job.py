"""The job and section workflows: deterministic orchestration only.

Every step is an activity that reads its inputs from Postgres by id and writes its results
there; these classes pass ids and small numbers, decide what runs next, and keep their
histories short with a child workflow per section and continue-as-new.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.workflow import ChildWorkflowCancellationType

from workflows.contracts import (
    ChunkRef,
    ChunkStatus,
    ContinuationInput,
    FailInput,
    FinalizeInput,
    FinalizeResult,
    JobInput,
    JobRef,
    PlanResult,
    Progress,
    SectionChunks,
    SectionInput,
    SectionRef,
)

__all__ = ["JobInput", "JobWorkflow", "SectionWorkflow"]

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
    non_retryable_error_types=["JobGone", "JobNotRunnable"],
)
QUICK = timedelta(minutes=5)
LLM = timedelta(minutes=30)
# Activities heartbeat every few seconds (see quire.temporal): a worker killed mid-activity is
# noticed within this, not after the start-to-close timeout.
HEARTBEAT = timedelta(seconds=10)


async def _act(name: str, arg: object, result_type: type, limit: timedelta, summary: str) -> object:
    return await workflow.execute_activity(
        name,
        arg,
        result_type=result_type,
        start_to_close_timeout=limit,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=RETRY,
        summary=summary,
    )


def _cause(err: BaseException) -> tuple[str, str]:
    """(error code, readable reason) for a failure that ended a job."""
    e: BaseException | None = err
    while isinstance(e, ActivityError | ChildWorkflowError) and e.cause is not None:
        e = e.cause
    msg = e.message if isinstance(e, FailureError) else str(e)
    etype = e.type if isinstance(e, ApplicationError) else type(e).__name__
    code = "E_LLM_UNAVAILABLE" if etype in {"LlmUnavailable"} else "E_INTERNAL"
    return code, f"{etype}: {msg}"


async def _mark_cancelled(job_id: str) -> None:
    await _act(
        "fail_job",
        FailInput(job_id, "E_CANCELLED", "cancelled by request", status="cancelled"),
        type(None),
        QUICK,
        "mark cancelled",
    )


def _was_cancelled(err: BaseException) -> bool:
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, TemporalCancelledError):
            return True
        e = e.cause if isinstance(e, FailureError) else None
    return False


@workflow.defn(name="JobWorkflow")
class JobWorkflow:
    def __init__(self) -> None:
        self._progress = Progress(stage="queued", sections_done=0, sections_total=0, round=0, current="")

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, inp: JobInput) -> str:
        p = self._progress
        p.stage, p.sections_done, p.sections_total, p.round = inp.stage, inp.next_section, inp.sections_total, inp.round
        try:
            return await self._run(inp)
        except asyncio.CancelledError:
            # Everything written stays; the job is marked cancelled, then the workflow ends cancelled.
            await _mark_cancelled(inp.job_id)
            raise
        except (ActivityError, ChildWorkflowError) as err:
            if _was_cancelled(err):  # the cancel reached a child or activity before this run
                await _mark_cancelled(inp.job_id)
                raise asyncio.CancelledError() from err
            code, reason = _cause(err)
            await _act("fail_job", FailInput(inp.job_id, code, reason), type(None), QUICK, f"fail: {code}")
            raise ApplicationError(reason, type=code, non_retryable=True) from err

    async def _run(self, inp: JobInput) -> str:
        p = self._progress
        jid = inp.job_id
        plan: PlanResult = await _act("plan_job", JobRef(jid), PlanResult, LLM, "plan")  # type: ignore[assignment]
        # plan_job is idempotent: on a continued run it returns the stored plan.
        p.sections_total = plan.sections
        if inp.stage == "plan":
            inp.stage = "sections"
        if inp.stage == "sections":
            p.stage = "sections"
            while inp.next_section < plan.sections:
                await self._section(jid, inp.next_section)
                inp.next_section += 1
                p.sections_done = inp.next_section
                if workflow.info().is_continue_as_new_suggested() and inp.next_section < plan.sections:
                    workflow.continue_as_new(JobInput(jid, "sections", inp.next_section, plan.sections, inp.round))
            inp.stage = "finalize"
        p.stage = "finalize"
        while True:
            elapsed = int((workflow.now() - workflow.info().start_time).total_seconds())
            res: FinalizeResult = await _act(  # type: ignore[assignment]
                "finalize",
                FinalizeInput(jid, inp.round, elapsed),
                FinalizeResult,
                QUICK,
                f"finalize round {inp.round}",
            )
            if res.met:
                p.stage = "succeeded"
                return "succeeded"
            if res.give_up:
                p.stage = "failed"
                raise ApplicationError(
                    res.reason or "length not met", type=res.error_code or "E_LENGTH_NOT_MET", non_retryable=True
                )
            section_ordinal: int = await _act(  # type: ignore[assignment]
                "add_continuation",
                ContinuationInput(jid, inp.round),
                int,
                QUICK,
                f"top-up round {inp.round + 1}: {res.target_words - res.words} words short",
            )
            inp.round += 1
            p.round = inp.round
            await self._section(jid, section_ordinal)
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(JobInput(jid, "finalize", inp.next_section, plan.sections, inp.round))

    async def _section(self, jid: str, ordinal: int) -> None:
        self._progress.current = f"section {ordinal + 1}"
        await workflow.execute_child_workflow(
            "SectionWorkflow",
            SectionInput(jid, ordinal, f"section {ordinal + 1}"),
            id=f"{workflow.info().workflow_id}-s{ordinal + 1}",
            static_summary=f"section {ordinal + 1}",
            # Don't wait for the child to acknowledge: a cancel request sent to a child run that has
            # since continued-as-new is lost. The job is marked cancelled at once, and the child's
            # next activity refuses to run for a cancelled job (JobNotRunnable).
            cancellation_type=ChildWorkflowCancellationType.TRY_CANCEL,
        )


@workflow.defn(name="SectionWorkflow")
class SectionWorkflow:
    @workflow.run
    async def run(self, inp: SectionInput) -> int:
        jid = inp.job_id
        chunks: SectionChunks = await _act(  # type: ignore[assignment]
            "section_chunks", SectionRef(jid, inp.section), SectionChunks, QUICK, f"{inp.label}: chunks"
        )
        n = len(chunks.chunk_ids)
        for i in range(inp.start_index, n):
            await self._chunk(jid, chunks.chunk_ids[i], f"chunk {i + 1}/{n} ({inp.label})")
            if workflow.info().is_continue_as_new_suggested() and i + 1 < n:
                workflow.continue_as_new(SectionInput(jid, inp.section, inp.label, i + 1))
        await _act("stitch_section", SectionRef(jid, inp.section), type(None), LLM, f"stitch {inp.label}")
        return n

    async def _chunk(self, jid: str, chunk_id: int, label: str) -> None:
        st: ChunkStatus = await _act(  # type: ignore[assignment]
            "write_chunk", ChunkRef(jid, chunk_id, 1), ChunkStatus, LLM, f"write {label}"
        )
        while True:
            st = await _act(  # type: ignore[assignment]
                "check_length",
                ChunkRef(jid, chunk_id, st.attempts),
                ChunkStatus,
                QUICK,
                f"check {label} attempt {st.attempts}",
            )
            if st.passed or st.stalled:
                break
            st = await _act(  # type: ignore[assignment]
                "extend_chunk",
                ChunkRef(jid, chunk_id, st.attempts + 1),
                ChunkStatus,
                LLM,
                f"extend {label} attempt {st.attempts + 1}",
            )
        await _act("commit_chunk", ChunkRef(jid, chunk_id, st.attempts), type(None), QUICK, f"commit {label}")
