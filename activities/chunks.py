"""The chunk step: write a chunk, check its length, extend it while it is short (a continuation,
never a restart; every attempt kept), remember it (the story memory's delta, from the model) and
check it against the ledger, and commit it (its text as version 1, a trimmed version when trim
changes it, a repaired one when the checks do, and the next link of the coherence chain).

One heartbeating activity runs the whole loop. It costs two transactions per model call, and a
chunk written in one attempt three in all (the activity's own start and end events ride in the
first and the last):
1. read what the chunk is written from and commit the write call's row ``pending`` (a paid call
   is on record before the request leaves);
2. store the answer, the attempt and its length check; when it passes, commit the memory call's
   row in the same transaction (else the next attempt's: an extension costs two more);
3. store the memory's answer and, when the checks find nothing to repair, commit the chunk, its
   versions, its coherence state and its ledger entries.
A retried activity resumes from what is stored (attempt numbers, checks, ``done``), and an answer
stored by an earlier try is reused, not paid for again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from temporalio import activity

from activities.base import job_options, load_job, record_length_check
from activities.chunk_commit import CommitSteps, Next, done_of
from activities.context import chunk_context, job_and_chunk, job_chunk_and_recent
from activities.contracts import ChunkDone, ChunkRef, NodeRef, SectionChunks, UnitChunks
from activities.gating import claim, gate
from activities.prompts import chunk_messages, echo_source, max_tokens_for
from core.gate import Gated
from core.length import COMPLIANCE_WINDOW, compliance, stalled, words_to_ask
from core.quota import Quotas
from core.text import count_words, join_continuation
from db.manuscript import Chunk, ChunkAttempt, PlanNode
from db.models import Job
from db.session import JobTx
from metrics import CHUNK_ATTEMPTS

CUTS_IN_EVENT = 20  # in a chunk event (the attempt's row keeps them all)


@dataclass
class _Check:
    words: int
    attempts: int
    passed: bool
    stalled: bool


class ChunkActivities(CommitSteps):
    @activity.defn(name="unit_chunks")
    async def unit_chunks(self, ref: NodeRef) -> UnitChunks:
        """The unit's sections and their chunks, in order; the unit is marked as being written."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid, final=True) as tx:
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
        """Write, check, extend while short, remember, check, commit: until the chunk passes or
        the model stalls (a stalled chunk is committed short: the job tops the document up)."""
        jid, chunk_id = uuid.UUID(ref.job_id), ref.chunk_id
        async with self.db.job_tx(jid) as tx:  # where an earlier try of this activity left it
            nxt = await self._next(tx, chunk_id)
        while nxt.done is None and not nxt.remember:
            nxt = await self._attempt(jid, chunk_id, nxt)
            activity.heartbeat(nxt.attempt_no)
        if nxt.done is not None:
            return nxt.done
        return await self._remember_and_commit(jid, chunk_id, nxt)

    async def _next(
        self,
        tx: JobTx,
        chunk_id: int,
        check: _Check | None = None,
        prev: Next | None = None,
        rows: tuple[Job, Chunk] | None = None,
    ) -> Next:
        """In ``tx``: what the chunk needs next, with its model call opened (committed by ``tx``).
        ``prev``: the attempt before it in this activity, whose context and deadline still hold."""
        limits = None  # the deadline and quotas the step's calls are held to, when this read has them
        if rows is None:
            job, chunk, recent, limits = await job_chunk_and_recent(tx, chunk_id)
        else:
            (job, chunk), recent = rows, prev.recent if prev is not None else []
        if chunk.status == "done":
            tx.final = True
            return Next(done=done_of(chunk))
        # An attempt stored by this very transaction: what follows it was never opened before.
        first = check is not None
        if check is None:
            check = _Check(0, 0, False, False) if chunk.attempts == 0 else await _record_check(tx, job, chunk)
        before = prev.call if prev is not None else None
        if check.passed or check.stalled:
            return await self._open_memory(tx, job, chunk, before, first, limits)
        return await self._open_attempt(tx, job, chunk, check.attempts + 1, prev, first, recent, limits)

    async def _open_attempt(
        self,
        tx: JobTx,
        job: Job,
        chunk: Chunk,
        attempt_no: int,
        prev: Next | None,
        first: bool,
        recent: list[tuple[int, int]],
        limits: tuple[float, Quotas] | None = None,
    ) -> Next:
        """Attempt ``attempt_no`` (the first writes the chunk, later ones extend it): its prompt,
        from the chunk's context (read once per activity: an extension is written from what the
        write was), and its call's row."""
        kind = "write" if attempt_no == 1 else "extend"
        current = chunk.text or ""
        need = chunk.target_words if kind == "write" else max(1, chunk.target_words - chunk.word_count)
        ask = words_to_ask(need, compliance(recent))
        first = first or chunk.status == "pending"  # a chunk never started has had no call
        if prev is not None and prev.ctx is not None and chunk.status != "pending":
            ctx = prev.ctx
        else:
            ctx, state = await chunk_context(tx, job, chunk)
            if chunk.status == "pending":
                chunk.status, chunk.state_before_id = "writing", state.id
        msgs = chunk_messages(
            ctx, style=self.llm.prompt_style, words=ask, current_text=current if kind == "extend" else ""
        )
        call = self.llm.request(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            purpose=kind,
            request_key=f"chunk:{chunk.id}:attempt:{attempt_no}",
            model=job.model,
            messages=msgs,
            max_tokens=max_tokens_for(max(ask, 8)),
            prose=True,
        )
        await self.llm.open_in(tx, call.follow(prev.call if prev is not None else None, limits), first=first)
        return Next(
            call=call, attempt_no=attempt_no, kind=kind, ask=ask, current=current, ctx=ctx, messages=msgs,
            memory=ctx.memory.record(), added=[] if attempt_no == 1 else prev.added if prev is not None else None,
            recent=recent,
        )  # fmt: skip

    async def _attempt(self, jid: uuid.UUID, chunk_id: int, nxt: Next) -> Next:
        """Send the attempt's call; store its answer, the attempt and its length check, and open
        what comes next, in one transaction."""
        call, ctx = nxt.call, nxt.ctx
        assert call is not None and ctx is not None
        if call.reused is None:
            await self.llm.send(call)
        res = call.result
        assert res is not None
        # Junk (echoes, loops, markup, meta-commentary, ...) never reaches the chunk or its count; nor
        # does what the document already says (claimed below, with the attempt). The event says what went.
        # The memory's lines are the document's own earlier text, not instructions: no echo of them.
        gated = await gate(
            res.text, prompt=echo_source(nxt.messages, ctx), source=ctx.source_text or "",
            before=nxt.current or ctx.previous_tail,
        )  # fmt: skip
        stored: list[bool] = []
        added, recent = nxt.added, nxt.recent  # as they were: a retried transaction starts again from them

        async def work(tx: JobTx) -> Next:
            stored.clear()
            nxt.added, nxt.recent = added, recent
            job, chunk = await job_and_chunk(tx, chunk_id)
            check = await self._store_attempt(tx, job, chunk, nxt, gated)
            stored.append(check is not None)
            return await self._next(tx, chunk_id, check, nxt, (job, chunk))

        out = await self.llm.settle(call, work)
        assert out is not None
        if stored and stored[0]:
            CHUNK_ATTEMPTS.labels(nxt.kind).inc()  # after the commit: a rolled-back attempt is not counted
        return out

    async def _store_attempt(self, tx: JobTx, job: Job, chunk: Chunk, nxt: Next, gated: Gated) -> _Check | None:
        """The attempt and its length check; None if an earlier try of this activity stored it."""
        attempt_no, kind, res = nxt.attempt_no, nxt.kind, nxt.call.result  # type: ignore[union-attr]
        assert res is not None
        if chunk.attempts >= attempt_no or chunk.status == "done":
            return None
        gated = await claim(tx, chunk, attempt_no, gated)
        added = gated.text
        words_before = chunk.word_count
        text_after = join_continuation(nxt.current, added) if kind == "extend" else added
        words_after = count_words(text_after)
        tx.session.add(
            ChunkAttempt(
                job_id=tx.job_id,
                chunk_id=chunk.id,
                attempt_no=attempt_no,
                kind=kind,
                llm_call_id=res.call_id,
                words_asked=nxt.ask,
                added_text=added,
                text_after=text_after,
                words_before=words_before,
                words_added=words_after - words_before,
                words_after=words_after,
                memory=nxt.memory,
                words_model=gated.words_in,
                cuts=gated.records(),
            )
        )
        chunk.text, chunk.word_count, chunk.attempts = text_after, words_after, attempt_no
        nxt.added = None if nxt.added is None else [*nxt.added, words_after - words_before]
        nxt.recent = [(nxt.ask, words_after - words_before), *nxt.recent][:COMPLIANCE_WINDOW]
        # The attempt's event carries its length check's verdict (the check's row is in the log too).
        check = await _record_check(tx, job, chunk, fresh=True, added=nxt.added, told=True)
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
                "words_asked": nxt.ask,
                "finish_reason": res.finish_reason,
                "llm_call_id": res.call_id,
                "truncated": res.finish_reason == "length",
                "words_model": gated.words_in,
                "words_cut": gated.words_cut,
                "cut_by_rule": gated.by_rule(),
                "cuts": gated.records()[:CUTS_IN_EVENT],
                "passed": check.passed,
                "stalled": check.stalled,
            },
        )
        return check


async def _record_check(
    tx: JobTx, job: Job, chunk: Chunk, *, fresh: bool = False, added: list[int] | None = None, told: bool = False
) -> _Check:
    """The length check of the chunk's latest attempt, recorded once however often it is asked
    (``fresh``: the attempt was stored by ``tx`` itself, so no check of it can exist yet;
    ``added``: the words each attempt added, when the step knows them; ``told``: the attempt's
    event, written by ``tx``, says the verdict)."""
    words = count_words(chunk.text or "")
    if added is None or len(added) != chunk.attempts:
        rows = await tx.session.execute(
            select(ChunkAttempt.words_added).where(ChunkAttempt.chunk_id == chunk.id).order_by(ChunkAttempt.attempt_no)
        )
        added = list(rows.scalars().all())
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
        fresh=fresh,
        told=told,
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
