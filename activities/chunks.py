"""The chunk step: write a chunk, check its length, extend it while it is short (a continuation,
never a restart; every attempt kept), and commit it (its text as version 1, a trimmed version when
dedupe or trim change it, and the next link of the coherence chain derived from that version).

One heartbeating activity runs the whole loop, so the happy path costs one round trip through
Temporal; each attempt, check and commit is still its own transaction with its own rows and audit
events, and a retried activity resumes from what is stored (attempt numbers, checks, ``done``).
Model calls happen between transactions and are recorded on their own (``activities.llm``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from temporalio import activity

from activities.base import (
    ModelStep,
    add_version,
    job_options,
    load_job,
    now,
    record_length_check,
    text_of,
)
from activities.contracts import ChunkDone, ChunkRef, NodeRef, SectionChunks, UnitChunks
from activities.gating import claim
from activities.prompts import ChunkContext, chunk_messages, max_tokens_for
from core.coherence import delta, fold, handoff
from core.gate import gate
from core.length import COMPLIANCE_WINDOW, compliance, stalled, words_to_ask
from core.telemetry import CHUNK_ATTEMPTS, CHUNKS, WORDS
from core.text import (
    count_words,
    dedupe_paragraphs,
    join_continuation,
    tail_words,
    trim_to_words,
)
from db.models import Job
from db.session import JobTx
from db.writing import Chunk, ChunkAttempt, CoherenceState, PlanNode

TAIL_WORDS = 120  # of the previous chunk, in the next one's prompt
CUTS_IN_EVENT = 20  # in a chunk event (the attempt's row keeps them all)


@dataclass
class _Check:
    words: int
    attempts: int
    passed: bool
    stalled: bool


class ChunkActivities(ModelStep):
    @activity.defn(name="unit_chunks")
    async def unit_chunks(self, ref: NodeRef) -> UnitChunks:
        """The unit's sections and their chunks, in order; the unit is marked as being written."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            rows = (
                await tx.session.execute(
                    select(Chunk.section_id, Chunk.id).where(Chunk.unit_id == ref.node_id).order_by(Chunk.ordinal)
                )
            ).all()
            unit = await tx.session.get(PlanNode, ref.node_id)
            if unit is not None and unit.status in ("pending", "expanded"):
                unit.status = "writing"
        out: list[SectionChunks] = []
        for section_id, chunk_id in rows:
            if not out or out[-1].section_id != section_id:
                out.append(SectionChunks(section_id))
            out[-1].chunk_ids.append(chunk_id)
        return UnitChunks(out)

    @activity.defn(name="write_chunk")
    async def write_chunk(self, ref: ChunkRef) -> ChunkDone:
        """Write, check, extend while short, commit: until the chunk passes or the model stalls."""
        jid = uuid.UUID(ref.job_id)
        check = await self._check(jid, ref.chunk_id)  # where an earlier attempt of this activity left it
        while check is not None and not (check.passed or check.stalled):
            attempt_no = check.attempts + 1
            check = await self._attempt(jid, ref.chunk_id, attempt_no) or await self._check(jid, ref.chunk_id)
            activity.heartbeat(attempt_no)
        return await self._commit(jid, ref.chunk_id)

    async def _attempt(self, jid: uuid.UUID, chunk_id: int, attempt_no: int) -> _Check | None:
        """Attempt ``attempt_no`` (the first writes the chunk, later ones extend it) and its length
        check, stored together; None if an earlier try of this activity stored it already."""
        kind = "write" if attempt_no == 1 else "extend"
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.attempts >= attempt_no or chunk.status == "done":
                return None  # this attempt is already stored
            current = chunk.text or ""
            need = chunk.target_words if kind == "write" else max(1, chunk.target_words - chunk.word_count)
            ask = words_to_ask(need, await _compliance(tx, jid))
            ctx, state = await _context(tx, job, chunk)
            msgs = chunk_messages(
                ctx, style=self.llm.prompt_style, words=ask, current_text=current if kind == "extend" else ""
            )
            if chunk.status == "pending":
                chunk.status, chunk.state_before_id = "writing", state.id
            job.current_step = f"{kind} chunk {chunk.ordinal + 1}/{job.chunks_total}"
        res = await self.llm.complete(
            job_id=jid,
            chunk_id=chunk_id,
            purpose=kind,
            request_key=f"chunk:{chunk_id}:attempt:{attempt_no}",
            model=job.model,
            messages=msgs,
            max_tokens=max_tokens_for(max(ask, 8)),
            prose=True,
        )
        # Junk (echoes, loops, markup, meta-commentary, ...) never reaches the chunk or its count; nor
        # does what the document already says (claimed below, with the attempt). The event says what went.
        prompt = "\n".join(m["content"] for m in msgs)
        gated = gate(res.text, prompt=prompt, source=ctx.source_text or "", before=current or ctx.previous_tail)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.attempts >= attempt_no:
                return None
            gated = await claim(tx, chunk, attempt_no, gated)
            added = gated.text
            words_before = chunk.word_count
            text_after = join_continuation(current, added) if kind == "extend" else added
            words_after = count_words(text_after)
            tx.session.add(
                ChunkAttempt(
                    job_id=jid,
                    chunk_id=chunk.id,
                    attempt_no=attempt_no,
                    kind=kind,
                    llm_call_id=res.call_id,
                    words_asked=ask,
                    added_text=added,
                    text_after=text_after,
                    words_before=words_before,
                    words_added=words_after - words_before,
                    words_after=words_after,
                    words_model=gated.words_in,
                    cuts=gated.records(),
                )
            )
            chunk.text, chunk.word_count, chunk.attempts = text_after, words_after, attempt_no
            tx.event(
                "chunk",
                kind,
                {
                    "chunk": chunk.ordinal,
                    "attempt": attempt_no,
                    "words_in": words_before,
                    "words_out": words_after,
                    "words_added": words_after - words_before,
                    "target_words": chunk.target_words,
                    "min_words": chunk.min_words,
                    "words_asked": ask,
                    "finish_reason": res.finish_reason,
                    "llm_call_id": res.call_id,
                    "truncated": res.finish_reason == "length",
                    "words_model": gated.words_in,
                    "words_cut": gated.words_cut,
                    "cut_by_rule": gated.by_rule(),
                    "cuts": gated.records()[:CUTS_IN_EVENT],
                },
            )
            check = await _record_check(tx, job, chunk)
        CHUNK_ATTEMPTS.labels(kind).inc()  # after the commit: a rolled-back attempt is not counted
        return check

    async def _check(self, jid: uuid.UUID, chunk_id: int) -> _Check | None:
        """The length check of the chunk's latest attempt (written once), or None if it is done."""
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.status == "done":
                return None
            if chunk.attempts == 0:
                return _Check(0, 0, False, False)
            return await _record_check(tx, job, chunk)

    async def _commit(self, jid: uuid.UUID, chunk_id: int) -> ChunkDone:
        """Accept a chunk: its text as version 1, a trimmed version if dedupe or trim change it,
        and the next coherence state, derived from the latest version."""
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.status == "done":
                return _done(chunk)
            written = chunk.text or ""
            versions = [add_version(tx, chunk, 1, "written", written)]
            text = dedupe_paragraphs(written)
            if count_words(text) > chunk.max_words:
                text = trim_to_words(text, chunk.max_words, chunk.min_words)
            if text != written:
                versions.append(
                    add_version(tx, chunk, 2, "trim", text, {"words_removed": count_words(written) - count_words(text)})
                )
            await tx.session.flush()
            before = await tx.session.get(CoherenceState, chunk.state_before_id)
            assert before is not None
            d = delta(text, dict(before.glossary or {}))
            summary, glossary, threads = fold(
                before.summary,
                dict(before.glossary or {}),
                list(before.open_threads or []),
                d,
                f"chunk {chunk.ordinal + 1}",
            )
            after = CoherenceState(
                job_id=jid,
                kind="chunk",
                ordinal=chunk.ordinal + 1,
                parent_id=before.id,
                chunk_version_id=versions[-1].id,
                summary=summary,
                glossary=glossary,
                open_threads=threads,
                delta=d,
            )
            tx.session.add(after)
            await tx.session.flush()
            chunk.word_count = versions[-1].word_count
            chunk.state_after_id, chunk.status, chunk.completed_at = after.id, "done", now()
            await tx.session.flush()
            job.chunks_done = job.chunks_done + 1
            job.words_written = (
                await tx.session.execute(
                    select(func.coalesce(func.sum(Chunk.word_count), 0)).where(Chunk.job_id == jid)
                )
            ).scalar_one()
            tx.event(
                "chunk",
                "done",
                {
                    "chunk": chunk.ordinal,
                    "words": chunk.word_count,
                    "target_words": chunk.target_words,
                    "min_words": chunk.min_words,
                    "max_words": chunk.max_words,
                    "attempts": chunk.attempts,
                    "passed": chunk.word_count >= chunk.min_words,
                    "version": versions[-1].version,
                    "state_before": before.id,
                    "state_after": after.id,
                    "new_terms": d["new_terms"],
                },
            )
            done = _done(chunk)
        CHUNKS.inc()  # after the commit, once per chunk (a retried commit returned above)
        WORDS.inc(chunk.word_count)
        return done


def _done(chunk: Chunk) -> ChunkDone:
    return ChunkDone(chunk.word_count, chunk.min_words, chunk.attempts, chunk.word_count >= chunk.min_words)


async def _record_check(tx: JobTx, job: Job, chunk: Chunk) -> _Check:
    """The length check of the chunk's latest attempt, recorded once however often it is asked."""
    words = count_words(chunk.text or "")
    added = (
        (
            await tx.session.execute(
                select(ChunkAttempt.words_added)
                .where(ChunkAttempt.chunk_id == chunk.id)
                .order_by(ChunkAttempt.attempt_no)
            )
        )
        .scalars()
        .all()
    )
    done = stalled(added, words >= chunk.min_words, job_options(job).max_attempts_per_chunk)
    passed = await record_length_check(
        tx,
        scope="chunk",
        chunk_id=chunk.id,
        round=chunk.attempts,
        words=words,
        min_words=chunk.min_words,
        target_words=chunk.target_words,
        max_words=chunk.max_words,
        event={
            "chunk": chunk.ordinal,
            "attempt": chunk.attempts,
            "words": words,
            "min_words": chunk.min_words,
            "target_words": chunk.target_words,
            "stalled": done,
        },
    )
    return _Check(words, chunk.attempts, passed, done)


async def _chunk(tx: JobTx, jid: uuid.UUID, chunk_id: int) -> Chunk:
    chunk = await tx.session.get(Chunk, chunk_id)
    if chunk is None or chunk.job_id != jid:
        raise LookupError(f"chunk {chunk_id} is not a chunk of job {jid}")
    return chunk


async def _compliance(tx: JobTx, jid: uuid.UUID) -> float:
    """This job's recent (asked, added) attempts, for ``core.length.compliance``."""
    rows = (
        await tx.session.execute(
            select(ChunkAttempt.words_asked, ChunkAttempt.words_added)
            .where(ChunkAttempt.job_id == jid, ChunkAttempt.kind.in_(["write", "extend"]), ChunkAttempt.words_asked > 0)
            .order_by(ChunkAttempt.id.desc())
            .limit(COMPLIANCE_WINDOW)
        )
    ).all()
    return compliance([(r.words_asked, r.words_added) for r in rows])


async def _start_state(tx: JobTx, job: Job, chunk: Chunk) -> tuple[CoherenceState, str, str]:
    """(the state the chunk is written from, the tail of the text before it, the handoff note).

    The predecessor's real state when it is done; for a unit's first chunk whose predecessor is
    still being written (another chapter, in parallel), a handoff state derived from the plan."""
    if chunk.state_before_id is not None:  # chosen by an earlier attempt: keep it
        state = await tx.session.get(CoherenceState, chunk.state_before_id)
        assert state is not None
        prev_text = ""
        if state.kind == "chunk":
            prev = await _chunk_at(tx, job, chunk.ordinal - 1)
            prev_text = await text_of(tx, prev)
        return state, prev_text, state.delta.get("note", "") if state.kind == "handoff" else ""
    if chunk.ordinal == 0:
        root = (
            await tx.session.execute(
                select(CoherenceState).where(CoherenceState.job_id == job.id, CoherenceState.kind == "root")
            )
        ).scalar_one()
        return root, "", ""
    prev = await _chunk_at(tx, job, chunk.ordinal - 1)
    if prev.status == "done" and prev.state_after_id is not None:
        state = await tx.session.get(CoherenceState, prev.state_after_id)
        assert state is not None
        return state, await text_of(tx, prev), ""
    if prev.unit_id == chunk.unit_id:
        raise RuntimeError(f"chunk {chunk.ordinal} cannot start: chunk {prev.ordinal} is not done")
    state = await _handoff(tx, job, chunk)
    return state, "", state.delta.get("note", "")


async def _handoff(tx: JobTx, job: Job, chunk: Chunk) -> CoherenceState:
    """The state a unit starts from while its predecessor is still being written: the book's
    glossary and the entities planned up to here, the predecessor's planned synopsis, the
    threads the plan leaves open. Recorded as a coherence state of kind ``handoff``."""
    assert chunk.unit_id is not None
    unit = await tx.session.get(PlanNode, chunk.unit_id)
    assert unit is not None
    earlier = (
        (
            await tx.session.execute(
                select(PlanNode)
                .where(PlanNode.job_id == job.id, PlanNode.position < unit.position, PlanNode.level != "book")
                .order_by(PlanNode.position)
            )
        )
        .scalars()
        .all()
    )
    root = (
        await tx.session.execute(
            select(CoherenceState).where(CoherenceState.job_id == job.id, CoherenceState.kind == "root")
        )
    ).scalar_one()
    pred = next((n for n in reversed(earlier) if n.level == unit.level), None)
    h = handoff(
        glossary=dict(root.glossary or {}),
        planned=[(n.title or "", n.purpose, list(n.introduces or []), list(n.key_points or [])) for n in earlier],
        predecessor=(pred.title or "", pred.purpose) if pred else ("", ""),
    )
    state = CoherenceState(
        job_id=job.id,
        kind="handoff",
        ordinal=chunk.ordinal,
        parent_id=None,
        unit_id=unit.id,
        summary=h["summary"],
        glossary=h["glossary"],
        open_threads=h["open_threads"],
        delta={"note": h["note"], "from_plan_nodes": [n.id for n in earlier][-20:]},
    )
    tx.session.add(state)
    await tx.session.flush()
    tx.event("coherence", "handoff", {"chunk": chunk.ordinal, "unit": unit.id, "state": state.id, "note": h["note"]})
    return state


async def _chunk_at(tx: JobTx, job: Job, ordinal: int) -> Chunk:
    return (
        await tx.session.execute(select(Chunk).where(Chunk.job_id == job.id, Chunk.ordinal == ordinal))
    ).scalar_one()


async def _context(tx: JobTx, job: Job, chunk: Chunk) -> tuple[ChunkContext, CoherenceState]:
    """What a chunk is written from: skeleton, its place in the tree, the state before, the tail."""
    section = await tx.session.get(PlanNode, chunk.section_id)
    assert section is not None
    state, prev_text, note = await _start_state(tx, job, chunk)
    path: list[tuple[str, str, str]] = []
    cur = await tx.session.get(PlanNode, section.parent_id) if section.parent_id else None
    while cur is not None and cur.level != "book":
        path.append((cur.level, cur.title or "", cur.purpose))
        cur = await tx.session.get(PlanNode, cur.parent_id) if cur.parent_id else None
    path.reverse()
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
    ctx = ChunkContext(
        plan=job.skeleton,
        section_index=section.ordinal,
        section_title=title,
        section_summary=summary,
        key_points=list(section.key_points or []),
        state_summary=state.summary,
        glossary=dict(state.glossary or {}),
        open_threads=list(state.open_threads or []),
        brief=chunk.brief,
        source_text=chunk.source_text,
        previous_tail=tail_words(prev_text, TAIL_WORDS),
        path=path,
        handoff=note,
    )
    return ctx, state
