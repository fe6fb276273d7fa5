"""After an edit has written its chunks (``activities.edits``): the node's seams checked again, what
later chapters relied on flagged, its chapter's summary written again, and the new version of the
document made (once it meets the job's target: short, the edit's workflow tops it up first), or
the edit marked failed with its reason.

The seams are checked as the job checks them (``activities.seams``), as rows of the edit's own:
the seam before the node is what its first chunk's check found when the edit wrote it; the seam
after it is the next node's chunks checked against the ledger as it now stands (rules, and the
judge on its opening and on every chunk that names what the edit changed), repaired as a seam is
unless that node is locked. Later chapters are never rewritten: each that names something the
edit changed or took away gets a ``relied_on_changed`` finding in the coherence report.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from temporalio import activity

from activities.base import ModelStep, job_options, latest_version, load_job, now, record_length_check
from activities.edit_rows import EditRef, load_edit, note, output_version
from activities.edit_scope import scope_held
from activities.memory import Remembered, finding_events, ledger_before, summarize
from activities.seams import SeamActivities, _chunk_findings, _UnitChunk
from core.edits import changed, memory_of, mention
from core.layout import assemble
from core.memory import Entry
from core.scope import EditError
from core.spec import ErrorCode
from core.text import count_words, sha256
from db.blocks import document_blocks
from db.endings import save_document
from db.loop import Edit
from db.manuscript import (
    Chunk,
    CoherenceState,
    ContinuityFinding,
    LedgerEntry,
    LengthCheck,
    NodeSummary,
    PlanNode,
)
from db.models import LlmCall
from db.session import JobTx
from db.tree import ancestors, chunks_under, latest_text, lock_over, next_node

MAX_FLAGS = 100  # relied_on_changed findings an edit makes


@dataclass
class Published:
    published: bool
    version: int = 0  # the document version made
    round: int = 0  # short: the final length check's round (the top-up's RoundRef)
    give_up: bool = False
    error_code: str | None = None
    reason: str | None = None


@dataclass
class EditFailure:
    job_id: str
    edit_id: int
    error_code: str
    reason: str


class EditCheckActivities(ModelStep):
    @activity.defn(name="recheck_edit")
    async def recheck_edit(self, ref: EditRef) -> None:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            edit = await load_edit(tx, ref.edit_id)
            if edit.detail.get("rechecked"):
                return
            node = await tx.session.get(PlanNode, edit.node_id)
            assert node is not None
            mine = await chunks_under(tx.session, node)
            first, last = mine[0], mine[-1]
            before_seam = await _seam_ids(tx, first) if first.ordinal > 0 else None
            succ = await next_node(tx.session, node)
            succ_chunks = await chunks_under(tx.session, succ) if succ is not None else []
            after_seam = None
            if succ is not None and succ_chunks:
                # A selection's rewrite changes nothing outside it: the seam after is checked, not repaired.
                locked = await lock_over(tx.session, succ) is not None or edit.kind == "rewrite"
                units = [await _unit_chunk_now(tx, c) for c in succ_chunks]
                after_seam = (
                    succ.id,
                    await _seam_ids(tx, succ_chunks[0]),
                    await ledger_before(tx, succ_chunks[0].ordinal),
                    await latest_text(tx.session, last.id),
                    units,
                    locked,
                    {
                        str(c.id): {"version": u.version_id, "memory": c.memory_version_id}
                        for c, u in zip(succ_chunks, units, strict=True)
                    },
                )
            model, seen = job.model, int(edit.detail["ledger_through"])
        seams = SeamActivities(self.db, self.llm)
        if before_seam is not None:  # what the node's first chunk's own check found when the edit wrote it
            mode, ids = before_seam
            await seams._store_seam(jid, node.id, mode, ids, [], False, edit_id=edit.id)
        if after_seam is not None:
            succ_id, (mode, ids), ledger, end, units, locked, was = after_seam
            checked = await seams._check_unit(jid, succ_id, model, ledger, seen, end, units, locked=locked)
            await seams._store_seam(jid, succ_id, mode, ids, checked, False, edit_id=edit.id)
        await self._summary(jid, edit.id, node.id, model)
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            edit = await load_edit(tx, ref.edit_id)
            if edit.detail.get("rechecked"):
                return
            if after_seam is not None:  # a repair at the seam after: part of what the edit did (and undoes)
                now_ = {str(c.id): c for c in await chunks_under(tx.session, await _node(tx, after_seam[0]))}
                for cid, b in after_seam[6].items():
                    v = await latest_version(tx, int(cid))
                    if v is not None and v.id != b["version"]:
                        after = {
                            "version": v.id,
                            "version_no": v.version,
                            "memory": now_[cid].memory_version_id,
                            "words": v.word_count,
                        }
                        note(edit, before={**edit.detail["before"], cid: b}, after={**edit.detail["after"], cid: after})
            flags = await _flag_relied_on(tx, edit, node)
            note(edit, rechecked=True, flagged=flags)

    async def _summary(self, jid: uuid.UUID, edit_id: int, node_id: int, model: str) -> None:
        """The edited node's chapter (or part) summarised again, as a new version, from its
        passages as they now read: the chapters after it are written from summaries."""
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            edit = await load_edit(tx, edit_id)
            node = await _node(tx, node_id)
            unit = next((n for n in [node, *await ancestors(tx.session, node)] if n.level == "chapter"), None)
            if unit is None or edit.detail.get("summary"):
                return
            fresh = edit.detail.get("summaries", {})
            pieces = []
            for c in await chunks_under(tx.session, unit):
                state = await tx.session.get(CoherenceState, c.state_after_id)
                pieces.append(fresh.get(str(c.ordinal)) or (state.summary if state is not None else ""))
            number = edit.number
        text, source, call = await summarize(
            self.llm, job_id=jid, node=unit, pieces=pieces, model=model, request_key=f"edit:{number}:summary:{unit.id}"
        )
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            edit = await load_edit(tx, edit_id)
            if edit.detail.get("summary"):
                return
            version = (
                1
                + (
                    await tx.session.execute(
                        select(func.coalesce(func.max(NodeSummary.version), 0)).where(NodeSummary.node_id == unit.id)
                    )
                ).scalar_one()
            )
            row = NodeSummary(
                job_id=jid,
                node_id=unit.id,
                version=version,
                level=unit.level,
                summary=text,
                source=source,
                llm_call_id=call,
            )
            tx.session.add(row)
            await tx.session.flush()
            note(edit, summary=row.id)
            tx.event(
                "memory",
                "summary",
                {
                    "node": unit.id,
                    "level": unit.level,
                    "title": unit.title,
                    "source": source,
                    "summary": row.id,
                    "version": version,
                    "edit": number,
                },
            )

    @activity.defn(name="publish_edit")
    async def publish_edit(self, ref: EditRef) -> Published:
        """The document as the edit left it, counted: at least the target, a new output version
        (the edit done); short, the round a top-up covers (or, out of rounds, a give-up). Nothing
        is cut to fit the job's maximum: no one else's words pay for an edit's length; a document
        the edit took past it is published as it stands and said to be (``edit over_max``). A
        selection's rewrite is published only if the node and the document still prove it."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, lock=True)
            edit = await load_edit(tx, ref.edit_id)
            if edit.status == "done":
                return Published(True, edit.document_version or 0)
            doc = assemble(job.title, job.target_words, await document_blocks(tx.session, job))
            words = count_words(doc)
            scope = await scope_held(tx, edit, doc) if edit.kind == "rewrite" else None
            if scope is not None and scope.get("problems"):
                why = "; ".join(scope["problems"])
                tx.event("edit", "scope_broken", {"edit": edit.number, **scope})
                return Published(False, give_up=True, error_code=EditError.SCOPE, reason=f"not published: {why}")
            rnd = (
                1
                + (
                    await tx.session.execute(
                        select(func.coalesce(func.max(LengthCheck.round), -1)).where(
                            LengthCheck.job_id == jid, LengthCheck.scope == "final"
                        )
                    )
                ).scalar_one()
            )
            passed = await record_length_check(
                tx,
                scope="final",
                round=rnd,
                words=words,
                min_words=job.target_words,
                target_words=job.target_words,
                max_words=job.max_words,
                event={"round": rnd, "edit": edit.number, "words": words, "target_words": job.target_words},
            )
            if not passed:
                tops = int(edit.detail.get("top_ups", 0))
                if tops >= job_options(job).max_rounds:
                    reason = (
                        f"the document has {words} of the {job.target_words} words asked for after {tops} top-up(s)"
                    )
                    return Published(False, give_up=True, error_code=ErrorCode.LENGTH_NOT_MET, reason=reason)
                note(edit, top_ups=tops + 1)
                tx.event(
                    "edit",
                    "short",
                    {"edit": edit.number, "words": words, "target_words": job.target_words, "round": rnd},
                )
                return Published(False, round=rnd)
            version = await output_version(tx) + 1
            await save_document(tx, role="output", version=version, text=doc, words=words)
            over = words - job.max_words
            if over > 0:  # the edit's own words carry it: said, never cut from anyone's
                tx.event(
                    "edit",
                    "over_max",
                    {
                        "edit": edit.number,
                        "kind": edit.kind,
                        "words": words,
                        "max_words": job.max_words,
                        "over": over,
                        "cut": 0,
                        "why": f"edit {edit.number}'s own words take the document {over} words past the job's "
                        f"maximum; nothing was cut to fit",
                    },
                )
            calls = (
                await tx.session.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(LlmCall.tokens_in), 0),
                        func.coalesce(func.sum(LlmCall.tokens_out), 0),
                        func.array_agg(LlmCall.id),
                    ).where(LlmCall.job_id == jid, LlmCall.started_at >= edit.created_at)
                )
            ).one()
            edit.status, edit.document_version, edit.completed_at = "done", version, now()
            note(edit, llm_calls=int(calls[0]), tokens_in=int(calls[1]), tokens_out=int(calls[2]))
            job.words_written, job.current_step = words, "done"
            tx.event(
                "edit",
                "done",
                {
                    "edit": edit.number,
                    "kind": edit.kind,
                    "node": edit.node_id,
                    "by": edit.user_name,
                    "document_version": {"before": edit.detail.get("document_before", version - 1), "after": version},
                    "words": words,
                    "sha256": sha256(doc),
                    "chunks": {
                        k: {"before": edit.detail["before"][k]["version_no"], "after": v["version_no"]}
                        for k, v in edit.detail.get("after", {}).items()
                        if k in edit.detail["before"]
                    },
                    "llm_calls": int(calls[0]),
                    "llm_call_ids": sorted(i for i in (calls[3] or []) if i is not None)[:200],
                    "tokens_in": int(calls[1]),
                    "tokens_out": int(calls[2]),
                    "flagged": edit.detail.get("flagged", 0),
                    **({"over_max": over} if over > 0 else {}),
                    **({"scope": scope} if scope is not None else {}),
                },
            )
            return Published(True, version)

    @activity.defn(name="fail_edit")
    async def fail_edit(self, inp: EditFailure) -> None:
        jid = uuid.UUID(inp.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, allow_terminal=True)
            edit = await load_edit(tx, inp.edit_id)
            if edit.status != "running":
                return
            edit.status, edit.completed_at, edit.error_code, edit.reason = "failed", now(), inp.error_code, inp.reason
            job.current_step = "done" if job.status == "succeeded" else job.current_step
            tx.event("edit", "failed", {"edit": edit.number, "error_code": inp.error_code, "reason": inp.reason})


async def _node(tx: JobTx, node_id: int) -> PlanNode:
    node = await tx.session.get(PlanNode, node_id)
    assert node is not None
    return node


async def _seam_ids(tx: JobTx, first: Chunk) -> tuple[str, tuple[int, int, int, int]]:
    """The seam before ``first`` (a node's first chunk): its mode and (predecessor chunk, its
    state after, the state ``first`` was written from, ``first``), as the seam rows hold them."""
    pred = (
        await tx.session.execute(select(Chunk).where(Chunk.job_id == tx.job_id, Chunk.ordinal == first.ordinal - 1))
    ).scalar_one()
    assert pred.state_after_id is not None and first.state_before_id is not None
    mode = "strict" if first.state_before_id == pred.state_after_id else "handoff"
    return mode, (pred.id, pred.state_after_id, first.state_before_id, first.id)


async def _unit_chunk_now(tx: JobTx, c: Chunk) -> _UnitChunk:
    """A chunk as it now stands, for a seam check: its latest text and its current memory."""
    version = await latest_version(tx, c.id)
    assert version is not None
    state = await tx.session.get(CoherenceState, c.state_after_id)
    entries = await _entries(tx, [c.memory_version_id] if c.memory_version_id else [])
    mem = memory_of(entries, state.summary if state is not None else "")
    known = {(f.subtype, f.entry_id) for f in await _chunk_findings(tx, [c.id])}
    source = entries[0].source if entries else "fallback"
    return _UnitChunk(c.id, c.ordinal, version.text, Remembered(mem, source), version.id, known)


async def _entries(tx: JobTx, version_ids: list[int]) -> list[Entry]:
    rows = (
        (
            await tx.session.execute(
                select(LedgerEntry).where(LedgerEntry.chunk_version_id.in_(version_ids)).order_by(LedgerEntry.id)
            )
        )
        .scalars()
        .all()
    )
    return [
        Entry(
            r.id,
            r.kind,
            r.key,
            r.name,
            r.value,
            r.quote,
            r.doc_order,
            r.attribute,
            r.etype,
            r.when_,
            r.chunk_version_id,
            r.source,
        )
        for r in rows
    ]


async def _flag_relied_on(tx: JobTx, edit: Edit, node: PlanNode) -> int:
    """A ``relied_on_changed`` finding (open, minor) in each later node of the edited node's level
    that names what the edit changed or took away, at its first mention: read it again."""
    mine = await chunks_under(tx.session, node)
    old = await _entries(
        tx,
        [
            b["memory"]
            for cid, b in edit.detail["before"].items()
            if b.get("memory") and int(cid) in {c.id for c in mine}
        ],
    )
    new = await _entries(tx, [c.memory_version_id for c in mine if c.memory_version_id])
    changes = changed(old, new)
    if not changes:
        return 0
    later = (
        (
            await tx.session.execute(
                select(Chunk).where(Chunk.job_id == tx.job_id, Chunk.ordinal > mine[-1].ordinal).order_by(Chunk.ordinal)
            )
        )
        .scalars()
        .all()
    )
    group = (lambda c: c.section_id) if node.level == "section" else (lambda c: c.unit_id)
    done: set[tuple[int | None, str, str | None]] = set()
    rows: list[tuple[Chunk, ContinuityFinding]] = []
    for c in later:
        version = await latest_version(tx, c.id)
        if version is None:
            continue
        for ch in changes:
            k = (group(c), ch.key, ch.before.attribute)
            if k in done or len(rows) >= MAX_FLAGS:
                continue
            said = mention(version.text, ch)
            if said is None:
                continue
            done.add(k)
            what = (
                f"{ch.before.attribute} “{ch.before.value}”"
                if ch.before.kind == "attribute"
                else f"“{ch.before.value or ch.name}”"
            )
            now_says = f"now “{ch.after}”" if ch.after else "no longer established there"
            row = ContinuityFinding(
                job_id=tx.job_id,
                chunk_id=c.id,
                chunk_version_id=version.id,
                category=ch.category,
                subtype="relied_on_changed",
                severity="minor",
                detector="rule:edit",
                message=f"relies on {ch.name}: edit {edit.number} changed {node.level} '{node.title}', "
                f"where {what} was established; {now_says}",
                quote=said[:1000],
                entry_id=ch.before.id,
                quote_there=ch.before.quote[:1000],
                doc_order_there=ch.before.doc_order,
                status="open",
                edit_id=edit.id,
            )
            tx.session.add(row)
            rows.append((c, row))
    await tx.session.flush()
    for c, row in rows:
        finding_events(tx, [row], c, "relied_on")
    return len(rows)
