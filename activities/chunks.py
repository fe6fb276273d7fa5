"""The chunk steps: write a chunk, check its length, extend it while it is short (a continuation,
never a restart; every attempt kept), and commit it (dedupe, trim overshoot at a sentence end,
fold its delta into the next link of the coherence chain).

Model calls happen between transactions and are recorded on their own (see ``activities.llm``),
so no transaction is held open while a model writes.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from temporalio import activity

from activities.base import ModelStep, job_options, load_job, now, record_length_check
from activities.contracts import ChunkRef, ChunkStatus, SectionChunks, SectionRef
from activities.prompts import ChunkContext, chunk_messages, max_tokens_for
from core.coherence import delta, fold
from core.length import COMPLIANCE_WINDOW, compliance, stalled, words_to_ask
from core.text import clean_model_output, count_words, dedupe_paragraphs, join_continuation, tail_words, trim_to_words
from db.models import Chunk, ChunkAttempt, CoherenceState, Job, Section
from db.session import JobTx

TAIL_WORDS = 120  # of the previous chunk, in the next one's prompt


class ChunkActivities(ModelStep):
    @activity.defn(name="section_chunks")
    async def section_chunks(self, ref: SectionRef) -> SectionChunks:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            section = (
                await tx.session.execute(select(Section).where(Section.job_id == jid, Section.ordinal == ref.section))
            ).scalar_one()
            ids = (
                await tx.session.execute(
                    select(Chunk.id).where(Chunk.section_id == section.id).order_by(Chunk.index_in_section)
                )
            ).scalars()
            if section.status == "pending":
                section.status = "writing"
            return SectionChunks(list(ids))

    @activity.defn(name="write_chunk")
    async def write_chunk(self, ref: ChunkRef) -> ChunkStatus:
        return await self._attempt(ref, "write")

    @activity.defn(name="extend_chunk")
    async def extend_chunk(self, ref: ChunkRef) -> ChunkStatus:
        return await self._attempt(ref, "extend")

    async def _attempt(self, ref: ChunkRef, kind: str) -> ChunkStatus:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, ref.chunk_id)
            if chunk.attempts >= ref.attempt_no or chunk.status == "done":
                return _status(chunk)  # this attempt is already stored
            current = chunk.text or ""
            words_before = chunk.word_count
            model = job.model
            need = chunk.target_words if kind == "write" else max(1, chunk.target_words - words_before)
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
            chunk_id=ref.chunk_id,
            purpose=kind,
            request_key=f"chunk:{ref.chunk_id}:attempt:{ref.attempt_no}",
            model=model,
            messages=msgs,
            max_tokens=max_tokens_for(max(ask, 8)),
        )
        # Echoed prompt lines and junk tokens never reach the chunk or its count; the event says what went.
        cleaned = clean_model_output(res.text, "\n".join(m["content"] for m in msgs), ctx.source_text or "")
        added = cleaned.text
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            chunk = await _chunk(tx, jid, ref.chunk_id)
            if chunk.attempts >= ref.attempt_no:
                return _status(chunk)
            text_after = join_continuation(current, added) if kind == "extend" else added
            words_after = count_words(text_after)
            tx.session.add(
                _attempt_row(chunk, ref.attempt_no, kind, text_after, llm_call_id=res.call_id, asked=ask, added=added)
            )
            chunk.text, chunk.word_count, chunk.attempts = text_after, words_after, ref.attempt_no
            tx.event(
                "chunk",
                kind,
                {
                    "chunk": chunk.ordinal,
                    "attempt": ref.attempt_no,
                    "words_in": words_before,
                    "words_out": words_after,
                    "words_added": words_after - words_before,
                    "target_words": chunk.target_words,
                    "min_words": chunk.min_words,
                    "words_asked": ask,
                    "finish_reason": res.finish_reason,
                    "llm_call_id": res.call_id,
                    "truncated": res.finish_reason == "length",
                    "removed": cleaned.removed_summary(),
                },
            )
            return _status(chunk)

    @activity.defn(name="check_length")
    async def check_length(self, ref: ChunkRef) -> ChunkStatus:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, ref.chunk_id)
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
                round=ref.attempt_no,
                words=words,
                min_words=chunk.min_words,
                target_words=chunk.target_words,
                max_words=chunk.max_words,
                event={
                    "chunk": chunk.ordinal,
                    "attempt": ref.attempt_no,
                    "words": words,
                    "min_words": chunk.min_words,
                    "target_words": chunk.target_words,
                    "stalled": done,
                },
            )
            return _status(chunk, passed=passed, stalled=done)

    @activity.defn(name="commit_chunk")
    async def commit_chunk(self, ref: ChunkRef) -> None:
        """Accept a chunk: dedupe and trim it, then fold its delta into the next coherence state."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, ref.chunk_id)
            if chunk.status == "done":
                return
            text = dedupe_paragraphs(chunk.text or "")
            if count_words(text) > chunk.max_words:
                text = trim_to_words(text, chunk.max_words, chunk.min_words)
            if text != (chunk.text or ""):
                n = chunk.attempts + 1
                tx.session.add(_attempt_row(chunk, n, "trim", text))
                chunk.attempts = n
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
                ordinal=chunk.ordinal + 1,
                parent_id=before.id,
                summary=summary,
                glossary=glossary,
                open_threads=threads,
                delta=d,
            )
            tx.session.add(after)
            await tx.session.flush()
            chunk.text, chunk.word_count = text, count_words(text)
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
                    "state_before": before.id,
                    "state_after": after.id,
                    "new_terms": d["new_terms"],
                },
            )


async def _chunk(tx: JobTx, jid: uuid.UUID, chunk_id: int) -> Chunk:
    chunk = await tx.session.get(Chunk, chunk_id)
    if chunk is None or chunk.job_id != jid:
        raise LookupError(f"chunk {chunk_id} is not a chunk of job {jid}")
    return chunk


def _attempt_row(
    chunk: Chunk,
    attempt_no: int,
    kind: str,
    text_after: str,
    *,
    llm_call_id: int | None = None,
    asked: int = 0,
    added: str = "",
) -> ChunkAttempt:
    """An attempt at a chunk (write, extend, or trim): what it asked for, added, and left."""
    words_after = count_words(text_after)
    return ChunkAttempt(
        job_id=chunk.job_id,
        chunk_id=chunk.id,
        attempt_no=attempt_no,
        kind=kind,
        llm_call_id=llm_call_id,
        words_asked=asked,
        added_text=added,
        text_after=text_after,
        words_before=chunk.word_count,
        words_added=words_after - chunk.word_count,
        words_after=words_after,
    )


def _status(chunk: Chunk, passed: bool = False, stalled: bool = False) -> ChunkStatus:
    return ChunkStatus(
        words=chunk.word_count, min_words=chunk.min_words, attempts=chunk.attempts, passed=passed, stalled=stalled
    )


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


async def _context(tx: JobTx, job: Job, chunk: Chunk) -> tuple[ChunkContext, CoherenceState]:
    """What a chunk is written from: skeleton, section plan, the state before, the tail."""
    section = await tx.session.get(Section, chunk.section_id)
    assert section is not None
    if chunk.ordinal == 0:
        state = (
            await tx.session.execute(
                select(CoherenceState).where(CoherenceState.job_id == job.id, CoherenceState.ordinal == 0)
            )
        ).scalar_one()
        prev_text = ""
    else:
        prev = (
            await tx.session.execute(select(Chunk).where(Chunk.job_id == job.id, Chunk.ordinal == chunk.ordinal - 1))
        ).scalar_one()
        if prev.status != "done" or prev.state_after_id is None:
            raise RuntimeError(f"chunk {chunk.ordinal} cannot start: chunk {prev.ordinal} is not done")
        found = await tx.session.get(CoherenceState, prev.state_after_id)
        assert found is not None
        state, prev_text = found, prev.text or ""
    sec_index = section.ordinal
    sections = job.skeleton.get("sections", [])
    title = section.title
    if section.is_continuation:  # top-ups continue the last planned section
        sec_index = max(0, len(sections) - 1)
        title = sections[sec_index]["title"] if sections else section.title
    ctx = ChunkContext(
        plan=job.skeleton,
        section_index=sec_index,
        section_title=title,
        section_summary=section.summary,
        key_points=list(section.key_points or []),
        state_summary=state.summary,
        glossary=dict(state.glossary or {}),
        open_threads=list(state.open_threads or []),
        brief=chunk.brief,
        source_text=chunk.source_text,
        previous_tail=tail_words(prev_text, TAIL_WORDS),
    )
    return ctx, state
