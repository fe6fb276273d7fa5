"""An author's edit of a finished job, step by step (``workflows.edit``): a node regenerated with
an optional instruction, its text replaced by hand, a selection in it rewritten, or the node rolled
back to an earlier version. Each changed chunk gets a new version (the old kept) and its memory
(ledger entries; the chunk's ``memory_version_id`` moves), checked against the ledger before it
like any chunk; then the node's seams with both neighbours are checked again (``activities.seams``:
the next node's chunks repaired as a seam is, unless locked), what later chapters relied on and
the edit changed is flagged in the coherence report, and a new version of the document is made,
topped up first if it fell below the target (``activities.edit_checks``).

Every model answer goes through the gate as a chunk's does (``activities.gating``): junk cut,
what the document already says elsewhere cut and the rest claimed, its words and cuts recorded
in its attempt; a regenerated passage starts and ends on sentence boundaries (a fragment before
its first sentence or after its last is cut, and recorded). A selection is rewritten within its
scope (``activities.selection``). Model text (the regenerated passages) may be repaired by the
continuity checks; an author's own words (a hand edit, the text around a selection) are checked
and reported, never rewritten, nor cut (a paragraph the document already has is reported).
Every step is idempotent: what it did is in the edit's ``detail``.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from temporalio import activity

from activities.base import ModelStep, job_options, latest_version, load_job, record_length_check
from activities.context import TAIL_WORDS, chunk_context, chunk_of, compliance_of
from activities.edit_rows import (
    EditChunkDone,
    EditChunkRef,
    EditPlan,
    EditRef,
    load_edit,
    note,
    output_version,
    rollback_targets,
    store_version,
)
from activities.gating import claim, gate
from activities.memory import (
    check_and_repair,
    ledger_before,
    summaries_before,
)
from activities.prompts import ChunkContext, chunk_messages, echo_source, max_tokens_for
from activities.selection import ScopeRefused, rewrite_selection
from core.edits import node_text, spans, split_text
from core.gate import Cut, Gated
from core.length import stalled, words_to_ask
from core.memory import build_context, prompt_budget
from core.scope import EditError, ends_sentence, whole_sentences
from core.text import count_words, dedupe_paragraphs, join_continuation, sha256, tail_words, trim_to_words
from db.loop import Edit
from db.manuscript import Chunk, ChunkAttempt, ChunkVersion, LedgerEntry, PlanNode
from db.models import Job
from db.session import JobTx
from db.tree import chunks_under, latest_text

CUTS_IN_EVENT = 20  # in a chunk event (the attempt's row keeps them all)


class EditActivities(ModelStep):
    @activity.defn(name="start_edit")
    async def start_edit(self, ref: EditRef) -> EditPlan:
        """What the edit will write, decided once: each chunk of the node as it stands (its
        version, memory, words, attempts: what a rollback goes back to), the ledger so far, and
        per kind the chunks to write (a hand edit: the text cut back into the chunks; a rewrite:
        the part of each chunk the selection covers; a rollback: the versions to go back to)."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, lock=True)
            edit = await load_edit(tx, ref.edit_id)
            asked = edit.kind == "regenerate" and bool(str((edit.params or {}).get("instruction") or "").strip())
            if "chunks" in (edit.detail or {}):
                return EditPlan(list(edit.detail["chunks"]), asked)
            node = await tx.session.get(PlanNode, edit.node_id)
            assert node is not None
            chunks = await chunks_under(tx.session, node)
            texts, before = {}, {}
            for c in chunks:
                v = await latest_version(tx, c.id)
                assert v is not None
                texts[c.id] = v.text.strip()
                before[str(c.id)] = {
                    "version": v.id,
                    "version_no": v.version,
                    "memory": c.memory_version_id,
                    "words": c.word_count,
                    "attempts": c.attempts,
                }
            through = (
                await tx.session.execute(
                    select(func.coalesce(func.max(LedgerEntry.id), 0)).where(LedgerEntry.job_id == jid)
                )
            ).scalar_one()
            detail: dict[str, Any] = {
                "before": before,
                "ledger_through": int(through),
                "document_before": await output_version(tx),
                "after": {},
                "summaries": {},
            }
            if edit.kind == "regenerate":
                todo = [c.id for c in chunks]
            elif edit.kind == "edit":
                pieces = split_text(edit.text or "", [c.word_count for c in chunks])
                new = {c.id: p for c, p in zip(chunks, pieces, strict=True)}
                todo = [c.id for c in chunks if new[c.id].strip() != texts[c.id]]
                detail["texts"] = {str(cid): new[cid] for cid in todo}
            elif edit.kind == "rewrite":
                s, e = int(edit.params["start"]), int(edit.params["end"])
                found = spans([texts[c.id] for c in chunks], s, e)
                todo = [chunks[sp.index].id for sp in found]
                whole = node_text([texts[c.id] for c in chunks])
                detail["selection"] = {"start": s, "end": e, "text_sha256": sha256(whole)}
            else:
                targets = await rollback_targets(tx, edit, [c.id for c in chunks])
                todo = [c.id for c in chunks if targets[c.id]["version"] != before[str(c.id)]["version"]]
                detail["targets"] = {str(cid): targets[cid] for cid in todo}
            note(edit, **detail, chunks=todo)
            job.current_step = f"edit {edit.number}: {edit.kind} of {node.level} '{node.title or ''}'"
            tx.event(
                "edit",
                "start",
                {
                    "edit": edit.number,
                    "kind": edit.kind,
                    "node": node.id,
                    "level": node.level,
                    "title": node.title,
                    "by": edit.user_name,
                    "params": {k: v for k, v in (edit.params or {}).items() if k != "text"},
                    "chunks": [c.ordinal for c in chunks if c.id in todo],
                },
            )
            return EditPlan(todo, asked)

    @activity.defn(name="edit_chunk")
    async def edit_chunk(self, ref: EditChunkRef) -> EditChunkDone | None:
        """One chunk of the edit: its new text (written, cut from the hand edit, rewritten in part,
        or an earlier version's), remembered and checked, stored as a new version; or why the
        edit cannot go on (a selection no answer of the model stayed inside)."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            edit = await load_edit(tx, ref.edit_id)
            if str(ref.chunk_id) in edit.detail.get("after", {}):
                return EditChunkDone()
            chunk = await chunk_of(tx, jid, ref.chunk_id)
            kind, number, detail = edit.kind, edit.number, dict(edit.detail)
            ledger = await ledger_before(tx, chunk.ordinal)
            model, min_words = job.model, chunk.min_words
        key = f"edit:{number}:chunk:{ref.chunk_id}"
        memory_id: int | None = None
        told: dict[str, Any] = {}
        if kind == "regenerate":
            text, cuts = await self._regenerate(jid, ref.edit_id, ref.chunk_id, key)
            if cuts:  # cut back to its maximum and to a sentence's end: the edit's own words, and said
                told["trimmed"] = Gated("", cuts).by_rule()
        elif kind == "edit":
            text = detail["texts"][str(ref.chunk_id)].strip()
        elif kind == "rewrite":
            if "texts" not in detail:  # the selection is rewritten once, by its first chunk's step
                try:
                    await rewrite_selection(self, jid, ref.edit_id, f"edit:{number}")
                except ScopeRefused as exc:
                    return EditChunkDone(EditError.SCOPE, str(exc))
                async with self.db.job_tx(jid) as tx:
                    detail = dict((await load_edit(tx, ref.edit_id)).detail)
            text = detail["texts"][str(ref.chunk_id)]
        else:
            target = detail["targets"][str(ref.chunk_id)]
            async with self.db.job_tx(jid) as tx:
                old = await tx.session.get(ChunkVersion, target["version"])
                assert old is not None
                text, memory_id = old.text, target["memory"]

        async def extend(cur: str, k: str) -> str:  # a repair that left a regenerated passage short
            return await self._ask(jid, ref.edit_id, ref.chunk_id, max(1, min_words - count_words(cur)) + 20, cur, k)

        checked = None
        if kind != "rollback" and text.strip():
            checked = await check_and_repair(
                self.llm,
                job_id=jid,
                chunk_id=ref.chunk_id,
                model=model,
                passage=text,
                ledger=ledger,
                request_key=f"{key}:memory",
                min_words=min_words,
                extend=extend if kind == "regenerate" else None,
                locked=kind != "regenerate",  # the author's own words are checked, never rewritten
            )
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            edit = await load_edit(tx, ref.edit_id)
            if str(ref.chunk_id) in edit.detail.get("after", {}):
                return EditChunkDone()
            chunk = await chunk_of(tx, jid, ref.chunk_id)
            if kind == "edit" and text.strip():  # the author's words claimed; a repeat reported, never cut
                said = await claim(tx, chunk, 0, Gated(text, [], count_words(text)), free=_node_chunks(edit))
                if said.cuts:
                    told["repeats"] = [c.record() for c in said.cuts][:20]
            await store_version(tx, job, edit, chunk, kind, text, checked, memory_id, told)
        return EditChunkDone()

    async def _regenerate(self, jid: uuid.UUID, edit_id: int, chunk_id: int, key: str) -> tuple[str, list[Cut]]:
        """Write the chunk again and extend it while short (every attempt kept, numbered after the
        chunk's earlier ones); returns the accepted text (repeats cut, trimmed to its maximum and
        ending on a sentence's end) and what that last cut took."""
        while True:
            async with self.db.job_tx(jid) as tx:
                job = await load_job(tx, jid)
                edit = await load_edit(tx, edit_id)
                chunk = await chunk_of(tx, jid, chunk_id)
                base = int(edit.detail["before"][str(chunk_id)]["attempts"])
                rows = (
                    (
                        await tx.session.execute(
                            select(ChunkAttempt)
                            .where(
                                ChunkAttempt.chunk_id == chunk_id,
                                ChunkAttempt.attempt_no > base,
                                ChunkAttempt.kind.in_(["write", "extend"]),
                            )
                            .order_by(ChunkAttempt.attempt_no)
                        )
                    )
                    .scalars()
                    .all()
                )
                text = rows[-1].text_after if rows else ""
                added = [r.words_added for r in rows]
                done = count_words(text) >= chunk.min_words
                if rows and (done or stalled(added, done, job_options(job).max_attempts_per_chunk)):
                    return _accepted(text, chunk.min_words, chunk.max_words)
                need = chunk.target_words if not rows else max(1, chunk.target_words - count_words(text))
                ask = words_to_ask(need, await compliance_of(tx, jid))
            await self._ask(jid, edit_id, chunk_id, ask, text, f"{key}:attempt:{chunk.attempts + 1}", attempt=True)
            activity.heartbeat(chunk.attempts + 1)

    async def _ask(
        self, jid: uuid.UUID, edit_id: int, chunk_id: int, words: int, current: str, key: str, attempt: bool = False
    ) -> str:
        """One writing call for the chunk (a first write when ``current`` is empty, else a
        continuation of it), from the story memory before it and the author's instruction, through
        the gate (a fragment before its first sentence cut where a sentence must start); with
        ``attempt`` it is stored as the chunk's next attempt, what the document already has cut
        and the rest claimed, with its words, its cuts and its length check. Returns the text so far."""
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            edit = await load_edit(tx, edit_id)
            chunk = await chunk_of(tx, jid, chunk_id)
            ctx = await _edit_context(tx, job, chunk, edit)
            msgs = chunk_messages(ctx, style=self.llm.prompt_style, words=words, current_text=current)
            memory, number, model, attempt_no = ctx.memory.record(), edit.number, job.model, chunk.attempts + 1
            free = _node_chunks(edit)
        kind = "extend" if current else "write"
        res = await self.llm.complete(
            job_id=jid,
            chunk_id=chunk_id,
            purpose=kind,
            request_key=key,
            model=model,
            messages=msgs,
            max_tokens=max_tokens_for(max(words, 8)),
        )
        gated = await gate(res.text, prompt=echo_source(msgs, ctx), source=ctx.source_text or "", before=current)
        # A passage starts a sentence: a regenerated chapter opening "2500 BC) is a complex..." is cut to its first.
        kept, start_cuts = whole_sentences(gated.text, start=not current or ends_sentence(current), end=False)
        gated = Gated(kept, [*gated.cuts, *start_cuts], gated.words_in)
        if not attempt:
            return join_continuation(current, gated.text) if current else gated.text
        async with self.db.job_tx(jid) as tx:
            chunk = await chunk_of(tx, jid, chunk_id)
            if chunk.attempts >= attempt_no:  # stored by an earlier try of this activity
                row = (
                    await tx.session.execute(
                        select(ChunkAttempt.text_after).where(
                            ChunkAttempt.chunk_id == chunk_id, ChunkAttempt.attempt_no == attempt_no
                        )
                    )
                ).scalar_one()
                return row
            gated = await claim(tx, chunk, attempt_no, gated, free=free)
            text = join_continuation(current, gated.text) if current else gated.text
            before, after = count_words(current), count_words(text)
            tx.session.add(
                ChunkAttempt(
                    job_id=jid,
                    chunk_id=chunk_id,
                    attempt_no=attempt_no,
                    kind=kind,
                    llm_call_id=res.call_id,
                    words_asked=words,
                    added_text=gated.text,
                    text_after=text,
                    words_before=before,
                    words_added=after - before,
                    words_after=after,
                    memory=memory,
                    words_model=gated.words_in,
                    cuts=gated.records(),
                )
            )
            chunk.attempts = attempt_no
            tx.event(
                "chunk",
                kind,
                {
                    "chunk": chunk.ordinal,
                    "attempt": attempt_no,
                    "edit": number,
                    "words_in": before,
                    "words_out": after,
                    "words_asked": words,
                    "target_words": chunk.target_words,
                    "llm_call_id": res.call_id,
                    "finish_reason": res.finish_reason,
                    "words_model": gated.words_in,
                    "words_cut": gated.words_cut,
                    "cut_by_rule": gated.by_rule(),
                    "cuts": gated.records()[:CUTS_IN_EVENT],
                },
            )
            await record_length_check(
                tx,
                scope="chunk",
                chunk_id=chunk_id,
                round=attempt_no,
                words=after,
                min_words=chunk.min_words,
                target_words=chunk.target_words,
                max_words=chunk.max_words,
                event={"chunk": chunk.ordinal, "attempt": attempt_no, "edit": number, "words": after},
            )
        return text


def _accepted(text: str, min_words: int, max_words: int) -> tuple[str, list[Cut]]:
    """A regenerated passage as it is kept: repeats inside it cut, at most its maximum, ending on
    a sentence's end (a trim that found no sentence end in its window is cut back to the last
    one); and what the trim and that cut took."""
    text = dedupe_paragraphs(text)
    cuts: list[Cut] = []
    if count_words(text) > max_words:
        trimmed = trim_to_words(text, max_words, min_words)
        gone = text[len(trimmed) :] if text.startswith(trimmed) else ""
        cuts.append(Cut("trim", gone, count_words(text) - count_words(trimmed)))
        text = trimmed
    text, end_cuts = whole_sentences(text, start=False)
    return text, [*cuts, *end_cuts]


def _node_chunks(edit: Edit) -> list[int]:
    """The chunks of the edited node: their old text is what the edit replaces (its marks free for it)."""
    return [int(c) for c in (edit.detail or {}).get("before", {})]


async def _edit_context(tx: JobTx, job: Job, chunk: Chunk, edit: Edit) -> ChunkContext:
    """What a chunk is written from when its author has it written again: as the job wrote it
    (``activities.chunks``), with the author's instruction, the real text before it (never a
    handoff: its predecessor is written), and the new summaries of the passages this edit has
    written already in place of their old ones."""
    ctx, _ = await chunk_context(tx, job, chunk)
    ctx.instruction = str((edit.params or {}).get("instruction") or "")
    if chunk.ordinal > 0 and (ctx.handoff or not ctx.previous_tail):
        prev = (
            await tx.session.execute(select(Chunk).where(Chunk.job_id == job.id, Chunk.ordinal == chunk.ordinal - 1))
        ).scalar_one()
        prev_text = await latest_text(tx.session, prev.id)
        ctx.previous_tail, ctx.handoff = tail_words(prev_text, TAIL_WORDS), ""
    fresh = {int(k): v for k, v in (edit.detail.get("summaries") or {}).items()}
    if fresh:
        summaries = [
            replace(s, text=fresh.get(s.order, s.text)) if s.level == "chunk" else s
            for s in await summaries_before(tx, chunk)
        ]
        named = " ".join([chunk.brief, ctx.section_title, ctx.section_summary, *(t for _, t, _ in ctx.path)])
        ctx.memory = build_context(
            await ledger_before(tx, chunk.ordinal), summaries, named=named, budget=prompt_budget(chunk.target_words)
        )
    return ctx
