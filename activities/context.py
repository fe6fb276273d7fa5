"""What a chunk is written from, read from the tables: the state before it (its predecessor's,
or a handoff derived from the plan while another chapter is still being written), its place in
the plan, the story memory before it (cut to its budget), the tail of the text before it, and how
well the model has kept to the lengths asked of it. Shared by the chunk step and the edit step."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from temporalio import activity

from activities.base import job_options, load_job, runnable
from activities.prompts import ChunkContext
from core.length import COMPLIANCE_WINDOW, compliance
from core.quota import Quotas
from core.recall import build_context, prompt_budget
from core.runs import edit_of
from core.text import tail_words
from db.manuscript import Chunk, ChunkAttempt, ChunkVersion, CoherenceState, PlanNode
from db.memory import ledger_before, summaries_before
from db.models import Job, User
from db.session import JobTx
from db.usage import limits_columns, limits_of

TAIL_WORDS = 120  # of the previous chunk, in the next one's prompt


async def job_and_chunk(tx: JobTx, chunk_id: int) -> tuple[Job, Chunk]:
    """The job (if this step may work on it: ``load_job``) and one of its chunks, in one statement."""
    job, chunk, _ = await _job_and_chunk(tx, chunk_id, recent=False)
    return job, chunk


async def job_chunk_and_recent(
    tx: JobTx, chunk_id: int
) -> tuple[Job, Chunk, list[tuple[int, int]], tuple[float, Quotas] | None]:
    """``job_and_chunk``, the job's recent (asked, added) attempts (``compliance_of``) and what the
    step's model calls are held to (the job's deadline as a Unix time and its owner's quotas:
    ``Call.deadline``, ``Call.quotas``), in one statement: what a chunk step reads first. No
    limits for an edit's step, whose clock is the edit's (``db.loop.clock_start``)."""
    job, chunk, (pairs, *limits) = await _job_and_chunk(tx, chunk_id, recent=True)
    recent = [(a, b) for a, b in pairs or []]
    if activity.in_activity() and edit_of(activity.info().workflow_id) is not None:
        return job, chunk, recent, None
    started, owner = limits_of(job, limits)
    return job, chunk, recent, (started.timestamp() + job_options(job).max_wall_seconds, owner)


async def _job_and_chunk(tx: JobTx, chunk_id: int, recent: bool) -> tuple[Job, Chunk, tuple[Any, ...]]:
    q = select(Job, Chunk).join(Chunk, Chunk.job_id == Job.id).where(Job.id == tx.job_id, Chunk.id == chunk_id)
    if recent:
        last = _recent(tx.job_id).subquery()
        pairs = func.json_agg(func.json_build_array(last.c.words_asked, last.c.words_added))
        q = q.add_columns(select(pairs).scalar_subquery(), *limits_columns(tx.job_id))
        q = q.outerjoin(User, User.id == Job.user_id)
    row = (await tx.session.execute(q)).one_or_none()
    if row is None:  # which of the two is missing, and the error that says so
        await load_job(tx, tx.job_id)
        await chunk_of(tx, tx.job_id, chunk_id)
        raise LookupError(f"chunk {chunk_id} of job {tx.job_id} is gone")
    return runnable(row[0]), row[1], tuple(row[2:])


async def chunk_of(tx: JobTx, jid: uuid.UUID, chunk_id: int) -> Chunk:
    chunk = await tx.session.get(Chunk, chunk_id)
    if chunk is None or chunk.job_id != jid:
        raise LookupError(f"chunk {chunk_id} is not a chunk of job {jid}")
    return chunk


def _recent(jid: uuid.UUID) -> Select[tuple[int, int]]:
    return (
        select(ChunkAttempt.words_asked, ChunkAttempt.words_added)
        .where(ChunkAttempt.job_id == jid, ChunkAttempt.kind.in_(["write", "extend"]), ChunkAttempt.words_asked > 0)
        .order_by(ChunkAttempt.id.desc())
        .limit(COMPLIANCE_WINDOW)
    )


async def compliance_of(tx: JobTx, jid: uuid.UUID) -> float:
    """``core.length.compliance`` of this job's recent (asked, added) attempts."""
    return compliance([(a, b) for a, b in (await tx.session.execute(_recent(jid))).all()])


async def start_state(tx: JobTx, job: Job, chunk: Chunk) -> tuple[CoherenceState, str, str]:
    """(the state the chunk is written from, the tail of the text before it, the handoff note).

    The predecessor's real state when it is done; for a unit's first chunk whose predecessor is
    still being written (another chapter, in parallel), a handoff state derived from the plan."""
    if chunk.state_before_id is not None:  # chosen by an earlier attempt: keep it
        state = await tx.session.get(CoherenceState, chunk.state_before_id)
        assert state is not None
        prev_text = (await _previous(tx, job, chunk.ordinal - 1))[2] if state.kind == "chunk" else ""
        return state, prev_text, state.delta.get("note", "") if state.kind == "handoff" else ""
    if chunk.ordinal == 0:
        root = (
            await tx.session.execute(
                select(CoherenceState).where(CoherenceState.job_id == job.id, CoherenceState.kind == "root")
            )
        ).scalar_one()
        return root, "", ""
    prev, after, prev_text = await _previous(tx, job, chunk.ordinal - 1)
    if prev.status == "done" and after is not None:
        return after, prev_text, ""
    if prev.unit_id == chunk.unit_id:
        raise RuntimeError(f"chunk {chunk.ordinal} cannot start: chunk {prev.ordinal} is not done")
    state = await handoff_state(tx, job, chunk)
    return state, "", state.delta.get("note", "")


async def handoff_state(tx: JobTx, job: Job, chunk: Chunk) -> CoherenceState:
    """The state a unit starts from while its predecessor is still being written, derived from
    the plan and the ledger as it stands: the predecessor's planned synopsis, the threads open in
    the ledger before it (document order), and how far the ledger went (``ledger_through``), so
    that the seam check knows what the chapter could not have seen. Recorded as a coherence
    state of kind ``handoff``."""
    assert chunk.unit_id is not None
    unit = await tx.session.get(PlanNode, chunk.unit_id)
    assert unit is not None
    pred = (
        await tx.session.execute(
            select(PlanNode)
            .where(
                PlanNode.job_id == job.id,
                PlanNode.position < unit.position,
                PlanNode.level == unit.level,
                PlanNode.is_continuation.is_(False),
            )
            .order_by(PlanNode.position.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    ledger = await ledger_before(tx, chunk.ordinal)
    through = max([e.id for e in ledger.by_ref().values()], default=0)
    note = f"{pred.title or ''}: {pred.purpose}".strip(": ") if pred is not None else ""
    state = CoherenceState(
        job_id=job.id,
        kind="handoff",
        ordinal=chunk.ordinal,
        parent_id=None,
        unit_id=unit.id,
        summary=(pred.purpose if pred is not None else "")[:2000],
        glossary={},
        open_threads=[t.value for t in ledger.open_threads.values()][-12:],
        delta={
            "note": note,
            "predecessor": pred.id if pred is not None else None,
            "ledger_through": through,
            "ledger_entries": ledger.size,
        },
        source="derived",
    )
    tx.session.add(state)
    await tx.session.flush()
    tx.event(
        "coherence",
        "handoff",
        {"chunk": chunk.ordinal, "unit": unit.id, "state": state.id, "note": note, "ledger_entries": ledger.size},
    )
    return state


async def _previous(tx: JobTx, job: Job, ordinal: int) -> tuple[Chunk, CoherenceState | None, str]:
    """The chunk at ``ordinal``, its state after (once done) and its latest text, in one statement."""
    latest = (
        select(ChunkVersion.text)
        .where(ChunkVersion.chunk_id == Chunk.id)
        .order_by(ChunkVersion.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    prev, after, text = (
        await tx.session.execute(
            select(Chunk, CoherenceState, latest)
            .outerjoin(CoherenceState, CoherenceState.id == Chunk.state_after_id)
            .where(Chunk.job_id == job.id, Chunk.ordinal == ordinal)
        )
    ).one()
    return prev, after, text if text is not None else prev.text or ""


async def plan_path(tx: JobTx, section_id: int) -> tuple[PlanNode, list[PlanNode]]:
    """A section and the plan nodes above it up to the book (excluded), outermost first: one
    recursive query, however deep the plan."""
    up = select(PlanNode.id, PlanNode.parent_id).where(PlanNode.id == section_id).cte("up", recursive=True)
    up = up.union_all(select(PlanNode.id, PlanNode.parent_id).join(up, PlanNode.id == up.c.parent_id))
    nodes = {
        n.id: n for n in (await tx.session.execute(select(PlanNode).where(PlanNode.id.in_(select(up.c.id))))).scalars()
    }
    section = nodes[section_id]
    above: list[PlanNode] = []
    cur = nodes.get(section.parent_id) if section.parent_id else None
    while cur is not None and cur.level != "book":
        above.append(cur)
        cur = nodes.get(cur.parent_id) if cur.parent_id else None
    above.reverse()
    return section, above


async def chunk_context(tx: JobTx, job: Job, chunk: Chunk) -> tuple[ChunkContext, CoherenceState]:
    """What a chunk is written from: the skeleton, its place in the tree, its own brief, the
    story memory before it (cut to its budget), the tail of the text before it."""
    section, above = await plan_path(tx, chunk.section_id)
    state, prev_text, note = await start_state(tx, job, chunk)
    title, summary = section.title or "", section.purpose
    if section.is_continuation:  # top-ups continue the last planned section
        last = (
            await tx.session.execute(
                select(PlanNode)
                .where(PlanNode.job_id == job.id, PlanNode.level == "section", PlanNode.is_continuation.is_(False))
                .order_by(PlanNode.position.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if last is not None:
            title, summary = last.title or title, last.purpose
    # Who and what this passage is about, by the plan: its entries go first when the memory is cut.
    named = " ".join(
        [chunk.brief, title, summary]
        + [
            x
            for n in [*above, section]
            for x in [n.title or "", *(n.key_points or []), *(n.introduces or []), *(n.relies_on or [])]
        ]
    )
    memory = build_context(
        await ledger_before(tx, chunk.ordinal),
        await summaries_before(tx, chunk, [*above, section]),
        named=named,
        budget=prompt_budget(chunk.target_words),
    )
    ctx = ChunkContext(
        plan=job.skeleton,
        section_index=section.ordinal,
        section_title=title,
        section_summary=summary,
        brief=chunk.brief,
        source_text=chunk.source_text,
        previous_tail=tail_words(prev_text, TAIL_WORDS),
        path=[(n.level, n.title or "", n.purpose) for n in above],
        memory=memory,
        handoff=note,
        brief_words=chunk.target_words,
    )
    return ctx, state
