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

from sqlalchemy import select
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
from activities.memory import (
    Checked,
    check_and_repair,
    finding_events,
    finding_rows,
    ledger_before,
    store_memory,
    summaries_before,
)
from activities.prompts import ChunkContext, chunk_messages, echo_source, max_tokens_for
from core.gate import gate
from core.length import COMPLIANCE_WINDOW, compliance, stalled, words_to_ask
from core.memory import build_context, open_threads_after, prompt_budget
from core.telemetry import CHUNK_ATTEMPTS, CHUNKS, WORDS
from core.text import (
    count_words,
    join_continuation,
    tail_words,
    trim_to_words,
)
from db.manuscript import Chunk, ChunkAttempt, CoherenceState, PlanNode
from db.models import Job
from db.session import JobTx

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
            memory = ctx.memory.record()
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
        # The memory's lines are the document's own earlier text, not instructions: no echo of them.
        gated = gate(
            res.text, prompt=echo_source(msgs, ctx), source=ctx.source_text or "", before=current or ctx.previous_tail
        )
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
                    memory=memory,
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
        """Accept a chunk: remember it and check it against the ledger (repairing what the checks
        find), then commit its text as version 1, a trimmed version if dedupe or trim changed it,
        a repaired version if the checks did, the next coherence state and the ledger entries of
        its delta, and the findings, in one transaction."""
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.status == "done":
                return _done(chunk)
            written = chunk.text or ""
            text = written  # repeats were cut by the gate, answer by answer, before they counted
            if count_words(text) > chunk.max_words:
                text = trim_to_words(text, chunk.max_words, chunk.min_words)
            ledger = await ledger_before(tx, chunk.ordinal)
            model, min_words = job.model, chunk.min_words

        async def extend(current: str, key: str) -> str:
            """A repair that left the passage short: continued, as any short passage is."""
            async with self.db.job_tx(jid) as tx:
                ctx, _ = await _context(tx, await load_job(tx, jid), await _chunk(tx, jid, chunk_id))
            need = max(1, min_words - count_words(current))
            msgs = chunk_messages(ctx, style=self.llm.prompt_style, words=need + 20, current_text=current)
            res = await self.llm.complete(
                job_id=jid,
                chunk_id=chunk_id,
                purpose="extend",
                request_key=f"{key}:extend",
                model=model,
                messages=msgs,
                max_tokens=max_tokens_for(need + 40),
            )
            added = gate(res.text, prompt=echo_source(msgs, ctx), source=ctx.source_text or "", before=current).text
            return join_continuation(current, added)

        checked = await check_and_repair(
            self.llm,
            job_id=jid,
            chunk_id=chunk_id,
            model=model,
            passage=text,
            ledger=ledger,
            request_key=f"chunk:{chunk_id}:memory",
            min_words=min_words,
            extend=extend,
        )
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            chunk = await _chunk(tx, jid, chunk_id)
            if chunk.status == "done":
                return _done(chunk)
            done = await _store_commit(tx, chunk, written, text, checked, ledger_threads=ledger)
        CHUNKS.inc()  # after the commit, once per chunk (a retried commit returned above)
        WORDS.inc(done.words)
        return done


async def _store_commit(
    tx: JobTx, chunk: Chunk, written: str, text: str, checked: Checked, ledger_threads
) -> ChunkDone:
    versions = [add_version(tx, chunk, 1, "written", written)]
    if text != written:
        versions.append(
            add_version(tx, chunk, 2, "trim", text, {"words_removed": count_words(written) - count_words(text)})
        )
    checked_version = versions[-1]
    if checked.text != text:
        versions.append(
            add_version(
                tx,
                chunk,
                len(versions) + 1,
                "continuity_repair",
                checked.text,
                {"repaired": [f.subtype for f in checked.findings if checked.is_repaired(f)]},
            )
        )
    await tx.session.flush()
    before = await tx.session.get(CoherenceState, chunk.state_before_id)
    assert before is not None
    rem = checked.remembered
    after = CoherenceState(
        job_id=tx.job_id,
        kind="chunk",
        ordinal=chunk.ordinal + 1,
        parent_id=before.id,
        chunk_version_id=versions[-1].id,
        summary=rem.memory.summary,
        glossary={},
        open_threads=open_threads_after(ledger_threads, rem.memory),
        delta={"memory": rem.memory.model_dump(), **rem.record()},
        source=rem.source,
    )
    tx.session.add(after)
    await tx.session.flush()
    entries = await store_memory(tx, chunk, versions[-1].id, after.id, rem)
    repair = versions[-1].id if versions[-1].reason == "continuity_repair" else None
    findings = finding_rows(tx, checked, chunk=chunk, version_id=checked_version.id, repair_version_id=repair)
    chunk.word_count = versions[-1].word_count
    chunk.state_after_id, chunk.status, chunk.completed_at = after.id, "done", now()
    await tx.session.flush()
    job = await load_job(tx, tx.job_id)
    # Counters by increment: a book's commit never re-adds every chunk before it.
    job.chunks_done = job.chunks_done + 1
    job.words_written = job.words_written + chunk.word_count
    tx.event(
        "memory",
        rem.source,
        {
            "chunk": chunk.ordinal,
            "state": after.id,
            "entries": len(entries),
            "entities": [e.name for e in rem.memory.entities][:40],
            "threads_opened": len(rem.memory.threads_opened),
            "threads_resolved": len(rem.memory.threads_resolved),
            "facts": len(rem.memory.facts),
            **rem.record(),
        },
    )
    finding_events(tx, findings, chunk, "chunk")
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
            "memory": rem.source,
            "findings": len(findings),
            "repaired": sum(1 for f in findings if f.status == "repaired"),
        },
    )
    return _done(chunk)


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


async def _chunk_at(tx: JobTx, job: Job, ordinal: int) -> Chunk:
    return (
        await tx.session.execute(select(Chunk).where(Chunk.job_id == job.id, Chunk.ordinal == ordinal))
    ).scalar_one()


async def _context(tx: JobTx, job: Job, chunk: Chunk) -> tuple[ChunkContext, CoherenceState]:
    """What a chunk is written from: the skeleton, its place in the tree, its own brief, the
    story memory before it (cut to its budget), the tail of the text before it."""
    section = await tx.session.get(PlanNode, chunk.section_id)
    assert section is not None
    state, prev_text, note = await _start_state(tx, job, chunk)
    above: list[PlanNode] = []
    cur = await tx.session.get(PlanNode, section.parent_id) if section.parent_id else None
    while cur is not None and cur.level != "book":
        above.append(cur)
        cur = await tx.session.get(PlanNode, cur.parent_id) if cur.parent_id else None
    above.reverse()
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
        await summaries_before(tx, chunk),
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
