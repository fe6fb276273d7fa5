"""The section workflow: each chunk in order (write, check, extend while short, commit), strictly
chained, then the section's stitch. Continues as new when Temporal suggests it."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

from workflows.steps import MODEL, QUICK, step

with workflow.unsafe.imports_passed_through():
    from activities.chunks import ChunkActivities
    from activities.contracts import ChunkRef, SectionRef
    from activities.stitch import StitchActivities


@dataclass
class SectionInput:
    job_id: str
    section: int  # the section's ordinal within the job
    label: str
    start_index: int = 0


@workflow.defn(name="SectionWorkflow")
class SectionWorkflow:
    @workflow.run
    async def run(self, inp: SectionInput) -> int:
        jid = inp.job_id
        chunks = await step(ChunkActivities.section_chunks, SectionRef(jid, inp.section), QUICK, f"{inp.label}: chunks")
        n = len(chunks.chunk_ids)
        for i in range(inp.start_index, n):
            await _chunk(jid, chunks.chunk_ids[i], f"chunk {i + 1}/{n} ({inp.label})")
            if workflow.info().is_continue_as_new_suggested() and i + 1 < n:
                workflow.continue_as_new(SectionInput(jid, inp.section, inp.label, i + 1))
        await step(StitchActivities.stitch_section, SectionRef(jid, inp.section), MODEL, f"stitch {inp.label}")
        return n


async def _chunk(jid: str, chunk_id: int, label: str) -> None:
    """Write, then check and extend until the chunk passes or stalls, then commit it."""
    st = await step(ChunkActivities.write_chunk, ChunkRef(jid, chunk_id, 1), MODEL, f"write {label}")
    while True:
        st = await step(
            ChunkActivities.check_length,
            ChunkRef(jid, chunk_id, st.attempts),
            QUICK,
            f"check {label} attempt {st.attempts}",
        )
        if st.passed or st.stalled:
            break
        st = await step(
            ChunkActivities.extend_chunk,
            ChunkRef(jid, chunk_id, st.attempts + 1),
            MODEL,
            f"extend {label} attempt {st.attempts + 1}",
        )
    await step(ChunkActivities.commit_chunk, ChunkRef(jid, chunk_id, st.attempts), QUICK, f"commit {label}")
