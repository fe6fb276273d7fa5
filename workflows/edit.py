"""An edit of a finished job, as a workflow of its own (``job-<id>-e<n>``): decide what it writes,
write each chunk (a selection no answer stayed inside of fails the edit there, nothing committed),
check a regenerate's instruction against the new text, check the seams and flag what relied on the
change, then make the document's new version, topped up first (one more unit, as finalize does)
while it is short.

Why a workflow per edit rather than Updates on the job's workflow: a succeeded job's workflow has
ended (its history closed and its webhook sent), edits may come weeks later, and each edit is a
bounded piece of work with a beginning and an end, its own history, retries and failure. Only ids
cross Temporal; the edit's text and instruction are in its ``edits`` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from workflows.steps import MODEL, QUICK, Durability, cause, step
from workflows.unit import UnitInput, UnitWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.contracts import NodeRef, RoundRef
    from activities.coverage import CoverageActivities
    from activities.edit_checks import EditCheckActivities, EditFailure
    from activities.edit_rows import EditChunkRef, EditRef
    from activities.edits import EditActivities
    from activities.finalize import FinalizeActivities
    from activities.seams import SeamActivities


@dataclass
class EditInput:
    job_id: str
    edit_id: int
    number: int
    llm_queue: str
    durability: Durability = field(default_factory=Durability)


@workflow.defn(name="EditWorkflow")
class EditWorkflow:
    @workflow.run
    async def run(self, inp: EditInput) -> int:
        """Returns the document version the edit made."""
        self.durability = inp.durability  # every step's retry window (workflows.steps.durability)
        try:
            return await self._edit(inp)
        except (ActivityError, ChildWorkflowError) as err:
            code, reason = cause(err)
            await step(
                EditCheckActivities.fail_edit, EditFailure(inp.job_id, inp.edit_id, code, reason), QUICK, "failed"
            )
            raise ApplicationError(reason, type=code, non_retryable=True) from err

    async def _edit(self, inp: EditInput) -> int:
        jid, q, ref = inp.job_id, inp.llm_queue, EditRef(inp.job_id, inp.edit_id)
        plan = await step(EditActivities.start_edit, ref, QUICK, f"edit {inp.number}")
        for i, chunk_id in enumerate(plan.chunk_ids):
            label = f"edit {inp.number}: chunk {i + 1}/{len(plan.chunk_ids)}"
            done = await step(EditActivities.edit_chunk, EditChunkRef(jid, inp.edit_id, chunk_id), MODEL, label, q)
            if done is not None and done.error_code:  # refused before anything was committed
                reason = done.reason or done.error_code
                failure = EditFailure(jid, inp.edit_id, done.error_code, reason)
                await step(EditCheckActivities.fail_edit, failure, QUICK, "failed")
                raise ApplicationError(reason, type=done.error_code, non_retryable=True)
        if plan.check_instruction and workflow.patched("edit-coverage"):
            await step(CoverageActivities.check_edit_coverage, ref, MODEL, f"edit {inp.number}: instruction", q)
        await step(EditCheckActivities.recheck_edit, ref, MODEL, f"edit {inp.number}: seams", q)
        while True:
            res = await step(EditCheckActivities.publish_edit, ref, QUICK, f"edit {inp.number}: document")
            if res.published:
                return res.version
            if res.give_up:
                code, reason = res.error_code or "E_LENGTH_NOT_MET", res.reason or "length not met"
                await step(EditCheckActivities.fail_edit, EditFailure(jid, inp.edit_id, code, reason), QUICK, "failed")
                raise ApplicationError(reason, type=code, non_retryable=True)
            unit = await step(FinalizeActivities.add_continuation, RoundRef(jid, res.round), QUICK, "top-up")
            await workflow.execute_child_workflow(
                UnitWorkflow.run,
                UnitInput(jid, unit, q, f"top-up of edit {inp.number}", durability=inp.durability),
                id=f"{workflow.info().workflow_id}-u{unit}",
                static_summary=f"top-up of edit {inp.number}",
            )
            await step(SeamActivities.complete_unit, NodeRef(jid, unit), MODEL, "seam of the top-up", q)
