"""The chunk step's end: remember the chunk (the story memory's delta, from the model, the judge in
the same answer), check it against the ledger, repair what the checks find (``activities.repair``)
and commit it: its versions, its coherence state, its ledger entries and its findings. The write
and extend loop before it is ``activities/chunks.py``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from activities.answers import Answer, sentences_only, store_answers
from activities.base import ModelStep, add_version, check_version_length, load_job, now
from activities.context import chunk_context, chunk_of, job_and_chunk
from activities.contracts import ChunkDone
from activities.gating import gate
from activities.llm import Call
from activities.memory import Remembered, fallback, interpret, memory_request, remember
from activities.prompts import ChunkContext, chunk_messages, echo_source, max_tokens_for
from activities.repair import Checked, check_and_repair, first_check
from core.coherence import BASE_MODEL
from core.continuity import needs_repair
from core.memory import Ledger, open_threads_after
from core.quota import Quotas
from core.repair import established_only
from core.scope import ends_sentence
from core.text import count_words, trim_to_words
from db.manuscript import Chunk, CoherenceState
from db.memory import finding_events, finding_rows, ledger_before, store_memory
from db.models import Job
from db.session import JobTx
from metrics import CHUNKS, WORDS


@dataclass
class Next:
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
    whole: bool = True  # every chunk before it was written when its ledger was read


class CommitSteps(ModelStep):
    async def _open_memory(
        self,
        tx: JobTx,
        job: Job,
        chunk: Chunk,
        before: Call | None = None,
        first: bool = False,
        limits: tuple[float, Quotas] | None = None,
    ) -> Next:
        """The chunk passed (or stalled): the text it is committed with, the ledger before it, and
        the memory call's row (none for a small base model: the extractor remembers for it)."""
        written = chunk.text or ""
        text = written  # repeats were cut by the gate, answer by answer, before they counted
        if count_words(text) > chunk.max_words:
            text = trim_to_words(text, chunk.max_words, chunk.min_words)
        # Whether the ledger it is checked against is whole (no chunk before it still being written):
        # asked before the ledger is read, so that a chunk done in between is in it. A chunk
        # checked against part of it is checked again at its unit's seam.
        behind = (
            await tx.session.execute(
                select(func.count()).where(
                    Chunk.job_id == tx.job_id, Chunk.ordinal < chunk.ordinal, Chunk.status != "done"
                )
            )
        ).scalar_one()
        ledger = await ledger_before(tx, chunk.ordinal)
        call = memory_request(
            self.llm, job_id=tx.job_id, chunk_id=chunk.id, model=job.model, passage=text, ledger=ledger,
            request_key=f"chunk:{chunk.id}:memory:r0",
        )  # fmt: skip
        if call is not None:
            await self.llm.open_in(tx, call.follow(before, limits), first=first)
        return Next(
            call=call, remember=True, ledger=ledger, written=written, text=text, model=job.model,
            min_words=chunk.min_words, attempt_no=chunk.attempts, whole=behind == 0,
        )  # fmt: skip

    async def _remember_and_commit(self, jid: uuid.UUID, chunk_id: int, nxt: Next) -> ChunkDone:
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
            checked = first_check(text, rem, ledger)
            if not needs_repair(checked.findings):
                checked.remembered.memory = established_only(rem.memory, checked.findings)
                return await self._commit(jid, chunk_id, nxt, checked, call)
        if call is not None:
            await self.llm.settle(call)
        if rem is None:
            assert call is not None and call.result is not None
            rem = await remember(
                self.llm, job_id=jid, chunk_id=chunk_id, model=nxt.model, passage=text, ledger=ledger,
                request_key=f"chunk:{chunk_id}:memory:r0", after=(call.result.call_id, invalid),
            )  # fmt: skip

        async def extend(current: str, key: str) -> Answer:
            """A repair that left the passage short: continued, as any short passage is (whole
            sentences: the answer stored with the repair's, ``activities.answers``)."""
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
            gated = await gate(res.text, prompt=echo_source(msgs, ctx), source=ctx.source_text or "", before=current)
            return Answer("repair", "extension", res.call_id, sentences_only(gated, start=ends_sentence(current)))

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

    async def _commit(self, jid: uuid.UUID, chunk_id: int, nxt: Next, checked: Checked, call: Call | None) -> ChunkDone:
        """The chunk's commit (with ``call``'s answer when it is still to be stored): the step's
        last transaction."""
        fresh: list[bool] = []

        async def work(tx: JobTx) -> ChunkDone:
            fresh.clear()
            job, chunk = await job_and_chunk(tx, chunk_id)
            if chunk.status == "done":  # a retried commit
                return done_of(chunk)
            fresh.append(True)
            assert nxt.ledger is not None
            return await _store_commit(tx, job, chunk, nxt, checked)

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


async def _store_commit(tx: JobTx, job: Job, chunk: Chunk, nxt: Next, checked: Checked) -> ChunkDone:
    """The chunk's versions (written; trimmed; repaired, through the gate's claims), its coherence
    state (with how far its ledger went), its ledger entries and findings, and the counters."""
    written, text, ledger = nxt.written, nxt.text, nxt.ledger
    assert ledger is not None
    versions = [add_version(tx, chunk, 1, "written", written)]
    if text != written:
        versions.append(
            add_version(tx, chunk, 2, "trim", text, {"words_removed": count_words(written) - count_words(text)})
        )
    checked_version = versions[-1]
    # The repair's answers are the chunk's attempts, used or not (their words in the word account).
    kept, attempts = await store_answers(tx, chunk, checked.answers, checked.text)
    if checked.text != text:
        repaired = [f.subtype for f in checked.findings if checked.is_repaired(f)]
        detail = {"repaired": repaired, "attempts": attempts}
        versions.append(add_version(tx, chunk, len(versions) + 1, "continuity_repair", kept, detail))
        await check_version_length(tx, chunk, versions[-1])  # a repair may leave it short: said so
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
        open_threads=open_threads_after(ledger, rem.memory),
        delta={
            "memory": rem.memory.model_dump(),
            **rem.record(),
            "ledger_through": max([e.id for e in ledger.by_ref().values()], default=0),
            "ledger_whole": nxt.whole,
            **({"unchecked": checked.unchecked} if checked.unchecked else {}),
        },
        source=rem.source,
    )
    tx.session.add(after)
    await tx.session.flush()
    # The chunk's row is written once: done, with its memory (store_memory flushes it).
    chunk.word_count = versions[-1].word_count
    chunk.state_after_id, chunk.status, chunk.completed_at = after.id, "done", now()
    entries = await store_memory(tx, chunk, versions[-1].id, after.id, rem.memory, rem.source)
    repair = versions[-1].id if versions[-1].reason == "continuity_repair" else None
    findings = finding_rows(
        tx, checked.fates(), chunk=chunk, version_id=checked_version.id, repair_version_id=repair,
        call_id=rem.calls[0] if rem.calls else None, rounds=checked.rounds,
    )  # fmt: skip
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
            **({"unchecked": checked.unchecked} if checked.unchecked else {}),
            "findings": len(findings),
            "repaired": sum(1 for f in findings if f.status == "repaired"),
        },
    )
    return done_of(chunk)


def done_of(chunk: Chunk) -> ChunkDone:
    return ChunkDone(chunk.word_count, chunk.min_words, chunk.attempts, chunk.word_count >= chunk.min_words)
