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
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.base import ModelStep, add_version, job_options, load_job, now, record_length_check
from activities.context import chunk_context, chunk_of, job_and_chunk, job_chunk_and_recent
from activities.contracts import ChunkDone, ChunkRef, NodeRef, SectionChunks, UnitChunks
from activities.gating import claim, gate
from activities.llm import Call
from activities.memory import (
    BASE_MODEL,
    Checked,
    Remembered,
    check_and_repair,
    fallback,
    finding_events,
    finding_rows,
    interpret,
    ledger_before,
    memory_request,
    remember,
    store_memory,
)
from activities.prompts import ChunkContext, chunk_messages, echo_source, max_tokens_for
from core.continuity import check, needs_repair
from core.gate import Gated
from core.length import COMPLIANCE_WINDOW, compliance, stalled, words_to_ask
from core.memory import Ledger, open_threads_after
from core.quota import Quotas
from core.text import count_words, join_continuation, trim_to_words
from db.manuscript import Chunk, ChunkAttempt, CoherenceState, PlanNode
from db.models import Job
from db.session import JobTx
from metrics import CHUNK_ATTEMPTS, CHUNKS, WORDS

CUTS_IN_EVENT = 20  # in a chunk event (the attempt's row keeps them all)


@dataclass
class _Check:
    words: int
    attempts: int
    passed: bool
    stalled: bool


@dataclass
class _Next:
    """What a chunk needs next, decided (and its model call's row committed) in one transaction:
    nothing (``done``), an attempt (``kind`` write or extend), or its memory (``remember``)."""

    done: ChunkDone | None = None
    call: Call | None = None
    # an attempt
    attempt_no: int = 0
    kind: str = ""
    ask: int = 0
    current: str = ""
    ctx: ChunkContext | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    added: list[int] | None = None  # words each stored attempt added, when this step knows them
    # the job's recent (asked, added) attempts, newest first (``core.length.compliance``): read with
    # the step's first statement, then kept by the step with its own attempts
    recent: list[tuple[int, int]] = field(default_factory=list)
    # its memory
    remember: bool = False
    ledger: Ledger | None = None
    written: str = ""
    text: str = ""
    model: str = ""
    min_words: int = 0


class ChunkActivities(ModelStep):
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
        prev: _Next | None = None,
        rows: tuple[Job, Chunk] | None = None,
    ) -> _Next:
        """In ``tx``: what the chunk needs next, with its model call opened (committed by ``tx``).
        ``prev``: the attempt before it in this activity, whose context and deadline still hold."""
        limits = None  # the deadline and quotas the step's calls are held to, when this read has them
        if rows is None:
            job, chunk, recent, limits = await job_chunk_and_recent(tx, chunk_id)
        else:
            (job, chunk), recent = rows, prev.recent if prev is not None else []
        if chunk.status == "done":
            tx.final = True
            return _Next(done=_done(chunk))
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
        prev: _Next | None,
        first: bool,
        recent: list[tuple[int, int]],
        limits: tuple[float, Quotas] | None = None,
    ) -> _Next:
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
        return _Next(
            call=call, attempt_no=attempt_no, kind=kind, ask=ask, current=current, ctx=ctx, messages=msgs,
            memory=ctx.memory.record(), added=[] if attempt_no == 1 else prev.added if prev is not None else None,
            recent=recent,
        )  # fmt: skip

    async def _attempt(self, jid: uuid.UUID, chunk_id: int, nxt: _Next) -> _Next:
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

        async def work(tx: JobTx) -> _Next:
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

    async def _store_attempt(self, tx: JobTx, job: Job, chunk: Chunk, nxt: _Next, gated: Gated) -> _Check | None:
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

    async def _open_memory(
        self,
        tx: JobTx,
        job: Job,
        chunk: Chunk,
        before: Call | None = None,
        first: bool = False,
        limits: tuple[float, Quotas] | None = None,
    ) -> _Next:
        """The chunk passed (or stalled): the text it is committed with, the ledger before it, and
        the memory call's row (none for a small base model: the extractor remembers for it)."""
        written = chunk.text or ""
        text = written  # repeats were cut by the gate, answer by answer, before they counted
        if count_words(text) > chunk.max_words:
            text = trim_to_words(text, chunk.max_words, chunk.min_words)
        ledger = await ledger_before(tx, chunk.ordinal)
        call = memory_request(
            self.llm, job_id=tx.job_id, chunk_id=chunk.id, model=job.model, passage=text, ledger=ledger,
            request_key=f"chunk:{chunk.id}:memory:r0",
        )  # fmt: skip
        if call is not None:
            await self.llm.open_in(tx, call.follow(before, limits), first=first)
        return _Next(
            call=call, remember=True, ledger=ledger, written=written, text=text, model=job.model,
            min_words=chunk.min_words, attempt_no=chunk.attempts,
        )  # fmt: skip

    async def _remember_and_commit(self, jid: uuid.UUID, chunk_id: int, nxt: _Next) -> ChunkDone:
        """Remember the chunk and check it against the ledger; when nothing needs repair (the usual
        case), the memory's answer and the chunk's commit are one transaction. Otherwise the answer
        is stored, the repairs are made (``check_and_repair``, each call on its own), and the
        commit follows."""
        call, ledger, text = nxt.call, nxt.ledger, nxt.text
        assert ledger is not None
        rem: Remembered | None = fallback(text, BASE_MODEL) if call is None else None
        invalid = ""
        if call is not None:
            if call.reused is None:
                await self.llm.send(call)
            assert call.result is not None
            got = interpret(call.result, text, ledger)
            rem, invalid = (None, got) if isinstance(got, str) else (got, "")
        if rem is not None:
            checked = Checked(text, rem, check(text, rem.memory, ledger))
            if not needs_repair(checked.findings):
                return await self._commit(jid, chunk_id, nxt, checked, call)
        if call is not None:
            await self.llm.settle(call)
        if rem is None:
            assert call is not None and call.result is not None
            rem = await remember(
                self.llm, job_id=jid, chunk_id=chunk_id, model=nxt.model, passage=text, ledger=ledger,
                request_key=f"chunk:{chunk_id}:memory:r0", after=(call.result.call_id, invalid),
            )  # fmt: skip

        async def extend(current: str, key: str) -> str:
            """A repair that left the passage short: continued, as any short passage is."""
            async with self.db.job_tx(jid) as tx:
                ctx, _ = await chunk_context(tx, await load_job(tx, jid), await chunk_of(tx, jid, chunk_id))
            need = max(1, nxt.min_words - count_words(current))
            msgs = chunk_messages(ctx, style=self.llm.prompt_style, words=need + 20, current_text=current)
            res = await self.llm.complete(
                job_id=jid,
                chunk_id=chunk_id,
                purpose="extend",
                request_key=f"{key}:extend",
                model=nxt.model,
                messages=msgs,
                max_tokens=max_tokens_for(need + 40),
            )
            added = (
                await gate(res.text, prompt=echo_source(msgs, ctx), source=ctx.source_text or "", before=current)
            ).text
            return join_continuation(current, added)

        checked = await check_and_repair(
            self.llm,
            job_id=jid,
            chunk_id=chunk_id,
            model=nxt.model,
            passage=text,
            ledger=ledger,
            request_key=f"chunk:{chunk_id}:memory",
            min_words=nxt.min_words,
            extend=extend,
            remembered=rem,
        )
        return await self._commit(jid, chunk_id, nxt, checked, None)

    async def _commit(
        self, jid: uuid.UUID, chunk_id: int, nxt: _Next, checked: Checked, call: Call | None
    ) -> ChunkDone:
        """The chunk's commit (with ``call``'s answer when it is still to be stored): the step's
        last transaction."""
        fresh: list[bool] = []

        async def work(tx: JobTx) -> ChunkDone:
            fresh.clear()
            job, chunk = await job_and_chunk(tx, chunk_id)
            if chunk.status == "done":  # a retried commit
                return _done(chunk)
            fresh.append(True)
            assert nxt.ledger is not None
            return await _store_commit(tx, job, chunk, nxt.written, nxt.text, checked, ledger_threads=nxt.ledger)

        if call is not None:
            done = await self.llm.settle(call, work, final=True)
        else:
            async with self.db.job_tx(jid, final=True) as tx:
                done = await work(tx)
        assert done is not None
        if fresh:
            CHUNKS.inc()  # after the commit, once per chunk
            WORDS.inc(done.words)
        return done


async def _store_commit(
    tx: JobTx, job: Job, chunk: Chunk, written: str, text: str, checked: Checked, ledger_threads: Ledger
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
    before_id = chunk.state_before_id
    assert before_id is not None
    rem = checked.remembered
    after = CoherenceState(
        job_id=tx.job_id,
        kind="chunk",
        ordinal=chunk.ordinal + 1,
        parent_id=before_id,
        chunk_version_id=versions[-1].id,
        summary=rem.memory.summary,
        glossary={},
        open_threads=open_threads_after(ledger_threads, rem.memory),
        delta={"memory": rem.memory.model_dump(), **rem.record()},
        source=rem.source,
    )
    tx.session.add(after)
    await tx.session.flush()
    # The chunk's row is written once: done, with its memory (store_memory flushes it).
    chunk.word_count = versions[-1].word_count
    chunk.state_after_id, chunk.status, chunk.completed_at = after.id, "done", now()
    entries = await store_memory(tx, chunk, versions[-1].id, after.id, rem)
    repair = versions[-1].id if versions[-1].reason == "continuity_repair" else None
    findings = finding_rows(tx, checked, chunk=chunk, version_id=checked_version.id, repair_version_id=repair)
    await tx.session.flush()
    # Counters by increment: a book's commit never re-adds every chunk before it.
    job.chunks_done = job.chunks_done + 1
    job.words_written = job.words_written + chunk.word_count
    job.current_step = f"wrote chunk {chunk.ordinal + 1}/{job.chunks_total}"  # in the counters' UPDATE
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
            "state_before": before_id,
            "state_after": after.id,
            "memory": rem.source,
            "findings": len(findings),
            "repaired": sum(1 for f in findings if f.status == "repaired"),
        },
    )
    return _done(chunk)


def _done(chunk: Chunk) -> ChunkDone:
    return ChunkDone(chunk.word_count, chunk.min_words, chunk.attempts, chunk.word_count >= chunk.min_words)


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
