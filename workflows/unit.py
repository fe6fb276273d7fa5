"""The unit workflow: one chapter (or the whole book, when it is only sections, or a top-up
section) written as one strictly chained run: its sections planned, then each chunk in order, each
section stitched when its chunks are done. Continues as new when Temporal suggests it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from temporalio import workflow

from workflows.steps import MODEL, QUICK, Durability, continue_as_new, step

with workflow.unsafe.imports_passed_through():
    from activities.chunks import ChunkActivities
    from activities.contracts import ChunkRef, NodeRef
    from activities.coverage import CoverageActivities
    from activities.plan import PlanActivities
    from activities.stitch import StitchActivities


@dataclass
class UnitInput:
    job_id: str
    unit_id: int
    llm_queue: str
    label: str
    done: int = 0  # steps (chunks and stitches) finished by earlier runs of this unit
    key_points: bool = False  # written from a reviewed plan: the key points its author added are checked
    durability: Durability = field(default_factory=Durability)


@workflow.defn(name="UnitWorkflow")
class UnitWorkflow:
    @workflow.run
    async def run(self, inp: UnitInput) -> int:
        self.durability = inp.durability  # every step's retry window (workflows.steps.durability)
        jid, label, q = inp.job_id, inp.label, inp.llm_queue
        unit = NodeRef(jid, inp.unit_id)
        await step(PlanActivities.expand_node, unit, MODEL, f"plan {label}", q)
        plan = await step(ChunkActivities.unit_chunks, unit, QUICK, f"{label}: chunks")
        n, k = sum(len(s.chunk_ids) for s in plan.sections), 0
        total = n + len(plan.sections)
        for section in plan.sections:
            for chunk_id in section.chunk_ids:
                if k >= inp.done:
                    await step(
                        ChunkActivities.write_chunk, ChunkRef(jid, chunk_id), MODEL, f"chunk {k + 1}/{n} of {label}", q
                    )
                k += 1
                self._maybe_continue(inp, k, total)
            if k >= inp.done:
                await step(
                    StitchActivities.stitch_section, NodeRef(jid, section.section_id), MODEL, f"stitch {label}", q
                )
            k += 1
            self._maybe_continue(inp, k, total)
        if inp.key_points and workflow.patched("unit-key-points"):
            await step(CoverageActivities.check_unit_coverage, unit, MODEL, f"{label}: key points", q)
        return n

    @staticmethod
    def _maybe_continue(inp: UnitInput, done: int, total: int) -> None:
        if inp.done < done < total and workflow.info().is_continue_as_new_suggested():
            continue_as_new(replace(inp, done=done))
