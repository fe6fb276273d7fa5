"""The seam step: a unit (chapter) is complete only once the seam with its predecessor has been
checked against the predecessor's real end, and its summary written for the chapters after it.

A unit whose first chunk was written from its predecessor's real end state has a ``strict`` seam:
that chunk was already checked against the whole ledger before it when it was accepted, so the
seam is what that check found. A unit written in parallel, from a handoff, has a ``handoff``
seam: each of its chunks is checked again against the ledger as it now stands up to the unit's
start (what the handoff could not know: the predecessor's entities, attributes and resolved
threads), and a judge compares the unit's opening with the predecessor's end; what they find is
repaired as new chunk versions (the old kept) and checked again. The seam is ``validated`` or
``repaired`` only by a check that ran and passed; otherwise it is ``flagged``, its findings open
in the coherence report (or, with ``options.continuity = "strict"``, the job fails with
``E_CONTINUITY``). The database refuses to mark a unit complete without one of those.
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
    latest_versions,
    load_job,
    now,
    plan_node,
    text_of,
)
from activities.contracts import NodeRef
from activities.memory import (
    Checked,
    Remembered,
    check_and_repair,
    finding_events,
    finding_rows,
    ledger_before,
    store_memory,
    summarize,
)
from core.continuity import repeated_opening
from core.errors import ContinuityBroken
from core.memory import ChunkMemory, Entry, Ledger, as_entry, entries_of, fold, norm
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, NodeSummary, PlanNode, SeamCheck
from db.session import JobTx


@dataclass
class _UnitChunk:
    chunk_id: int
    ordinal: int
    text: str
    stored: Remembered
    version_id: int
    known: set[tuple[str, int | None]]  # (subtype, entry) of the findings its own check made


class SeamActivities(ModelStep):
    @activity.defn(name="complete_unit")
    async def complete_unit(self, ref: NodeRef) -> None:
        """Check the unit's seam with its predecessor (repairing what the check finds), mark it
        complete, and write its summary (and its part's, when it is the part's last chapter).
        Idempotent: a retry finds the seam row, the status and the summaries."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            unit = await plan_node(tx, ref.node_id)
            strict_continuity = job_options(job).continuity == "strict"
            model = job.model
            seam = (
                await tx.session.execute(
                    select(SeamCheck).where(SeamCheck.unit_id == unit.id, SeamCheck.edit_id.is_(None))
                )
            ).scalar_one_or_none()
            chunks = (
                (await tx.session.execute(select(Chunk).where(Chunk.unit_id == unit.id).order_by(Chunk.ordinal)))
                .scalars()
                .all()
            )
            first = chunks[0]
            needs_seam = unit.status != "done" and first.ordinal > 0 and seam is None
            todo: list[tuple[PlanNode, list[str]]] = []
            if not needs_seam:
                await _complete(tx, unit)  # the first unit has no seam; a retry finds its seam stored
                todo = await _to_summarize(tx, unit)
            else:
                pred = (
                    await tx.session.execute(
                        select(Chunk).where(Chunk.job_id == jid, Chunk.ordinal == first.ordinal - 1)
                    )
                ).scalar_one()
                if pred.status != "done" or pred.state_after_id is None:
                    raise RuntimeError(f"unit {unit.id}: its predecessor's last chunk {pred.ordinal} is not done")
                mode = "strict" if first.state_before_id == pred.state_after_id else "handoff"
                ledger = await ledger_before(tx, first.ordinal)
                before = await text_of(tx, pred)
                handoff = await tx.session.get(CoherenceState, first.state_before_id)
                seen = int((handoff.delta or {}).get("ledger_through", 0)) if handoff is not None else 0
                mine = await _unit_chunks(tx, list(chunks)) if mode == "handoff" else []
                pred_id, pred_state, used_state, first_id = (
                    pred.id,
                    pred.state_after_id,
                    first.state_before_id,
                    first.id,
                )
        if needs_seam:
            checked: list[tuple[_UnitChunk, Checked]] = []
            if mode == "handoff":
                checked = await self._check_unit(jid, unit.id, model, ledger, seen, before, mine)
            todo = await self._store_seam(
                jid, ref.node_id, mode, (pred_id, pred_state, used_state, first_id), checked, strict_continuity
            )
        await self._summaries(jid, todo, model)

    async def _check_unit(
        self,
        jid: uuid.UUID,
        unit_id: int,
        model: str,
        ledger: Ledger,
        seen: int,
        before: str,
        mine: list[_UnitChunk],
        locked: bool = False,
    ) -> list[tuple[_UnitChunk, Checked]]:
        """A unit written from a handoff, checked against the real ledger before it: each chunk by
        the rules (against that ledger plus what the unit's own earlier chunks established); the
        opening, and every chunk that names someone or something the handoff had not seen
        (ledger entries past ``seen``), by the judge too; the opening for repeating the ending.
        Also a unit after one its author changed (``activities.edits``); a ``locked`` one is
        checked and never repaired."""
        unseen = {
            v.key
            for v in ledger.entities.values()
            if v.intro.id > seen or any(a.id > seen for a in v.attributes.values())
        }
        out: list[tuple[_UnitChunk, Checked]] = []
        own: list[Entry] = []
        for k, uc in enumerate(mine):
            text = f" {norm(uc.text)} "
            res = await check_and_repair(
                self.llm,
                job_id=jid,
                chunk_id=uc.chunk_id,
                model=model,
                passage=uc.text,
                ledger=fold([*ledger.by_ref().values(), *own]),
                request_key=f"seam:{unit_id}:{uc.chunk_id}",
                min_words=1,
                stored=uc.stored,
                judge=k == 0 or any(f" {key} " in text for key in unseen),
                locked=locked,
            )
            if k == 0:
                res.findings += repeated_opening(before, res.text)
            # What this chunk's own check found when it was accepted is reported there already.
            res.findings = [f for f in res.findings if (f.subtype, f.entry_id) not in uc.known or res.is_repaired(f)]
            out.append((uc, res))
            own += [
                as_entry(e, -(len(own) + i + 1), uc.ordinal) for i, e in enumerate(entries_of(res.remembered.memory))
            ]
        return out

    async def _store_seam(
        self,
        jid: uuid.UUID,
        unit_id: int,
        mode: str,
        ids: tuple[int, int, int, int],
        checked: list[tuple[_UnitChunk, Checked]],
        strict_continuity: bool,
        edit_id: int | None = None,
    ) -> list[tuple[PlanNode, list[str]]]:
        """The seam row, the repaired versions and the findings; then the unit complete, unless
        strict continuity was asked and a finding stays open (the job fails, everything kept).
        With ``edit_id``: the seam checked again by an edit of a neighbour (a row of its own; the
        unit is complete already). ``checked`` empty: the seam is what the first chunk's own
        check found when it was written (by the job, or by the edit). Returns the summaries the
        completed unit calls for (``_to_summarize``, read in the same transaction; none for an edit)."""
        pred_id, pred_state, used_state, first_id = ids
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            unit = await plan_node(tx, unit_id)
            mine = SeamCheck.edit_id.is_(None) if edit_id is None else SeamCheck.edit_id == edit_id
            if (await tx.session.execute(select(SeamCheck.id).where(SeamCheck.unit_id == unit.id, mine))).first():
                if edit_id is None:
                    await _complete(tx, unit)
                    return await _to_summarize(tx, unit)
                return []
            broken: str | None = None
            repairs: list[tuple[Chunk, _UnitChunk, Checked, int | None]] = []
            versions: dict[int, int] = {}
            ids = [uc.chunk_id for uc, _ in checked]
            rows = {c.id: c for c in (await tx.session.execute(select(Chunk).where(Chunk.id.in_(ids)))).scalars()}
            changed = await latest_versions(tx, [uc.chunk_id for uc, res in checked if res.text != uc.text])
            for uc, res in checked:
                chunk = rows[uc.chunk_id]
                repair = None
                if res.text != uc.text:
                    latest = changed.get(chunk.id)
                    repair = add_version(
                        tx,
                        chunk,
                        (latest.version if latest else 0) + 1,
                        "seam_repair",
                        res.text,
                        {"unit": unit.id, "repaired": [f.subtype for f in res.findings if res.is_repaired(f)]},
                    )
                    await tx.session.flush()
                    job = await load_job(tx, jid)
                    job.words_written = job.words_written + repair.word_count - chunk.word_count
                    chunk.word_count = repair.word_count
                    await store_memory(tx, chunk, repair.id, chunk.state_after_id, res.remembered)
                    versions[chunk.ordinal] = repair.version
                repairs.append((chunk, uc, res, repair.id if repair else None))
            if checked:  # (status, severity, repair version) of each finding
                fates = [
                    ("repaired" if r.is_repaired(f) and v else "open", f.severity, v if r.is_repaired(f) else None)
                    for _, _, r, v in repairs
                    for f in r.findings
                ]
            else:  # a strict seam's check is the first chunk's own, made when it was accepted
                fates = [
                    (f.status, f.severity, f.repair_version_id) for f in await _chunk_findings(tx, [first_id], edit_id)
                ]
            open_major = sum(1 for st, sev, _ in fates if st == "open" and sev == "major")
            repaired = [v for st, _, v in fates if st == "repaired"]
            status = "flagged" if open_major else "repaired" if repaired else "validated"
            repair_version = repaired[-1] if status == "repaired" else None
            seam = SeamCheck(
                job_id=jid,
                unit_id=unit.id,
                chunk_id=first_id,
                predecessor_chunk_id=pred_id,
                predecessor_state_id=pred_state,
                successor_state_id=used_state,
                mode=mode,
                differences={},
                conflicts=[],
                repaired=repair_version is not None,
                repair_version_id=repair_version,
                status=status,
                validated=status in ("validated", "repaired"),
                edit_id=edit_id,
                checks={
                    "rules": ["name_variant", "near_miss", "attribute", "thread", "timeline"]
                    + (["repeated_opening", "judge"] if mode == "handoff" else []),
                    "ran": "at the seam" if checked else "when its first chunk was accepted",
                    "chunks": len(checked) or 1,
                    **({"edit": edit_id} if edit_id is not None else {}),
                    "judged": sum(1 for _, r in checked if r.remembered.calls),
                    "findings": len(fates),
                    "repaired": len(repaired),
                    "open": open_major,
                },
            )
            tx.session.add(seam)
            await tx.session.flush()
            for chunk, uc, res, v in repairs:
                fs = finding_rows(
                    tx, res, chunk=chunk, version_id=uc.version_id, repair_version_id=v, seam_check_id=seam.id
                )
                for f in fs:
                    f.edit_id = edit_id
                await tx.session.flush()
                finding_events(tx, fs, chunk, "seam")
            tx.event(
                "seam",
                status,
                {
                    "unit": unit.id,
                    "title": unit.title,
                    "mode": mode,
                    "findings": len(fates),
                    "open": open_major,
                    "repaired_chunks": versions,
                    "checks": seam.checks,
                    **({"edit": edit_id} if edit_id is not None else {}),
                },
            )
            if edit_id is not None:  # an edit's check of a seam the job completed long ago
                broken = None
            elif open_major and strict_continuity:
                job = await load_job(tx, jid)
                job.current_step = f"continuity: {open_major} open finding(s) at the seam before {unit.title}"
                broken = (
                    f"the seam before '{unit.title}' has {open_major} continuity finding(s) that could not be "
                    "repaired (see the coherence report)"
                )
            else:
                await _complete(tx, unit)
                broken = None
            todo = await _to_summarize(tx, unit) if edit_id is None and broken is None else []
        if broken:  # after the commit: the seam and its findings are kept, the unit stays incomplete
            raise ContinuityBroken(broken)
        return todo

    async def _summaries(self, jid: uuid.UUID, todo: list[tuple[PlanNode, list[str]]], model: str) -> None:
        """The summaries a completed unit calls for (``_to_summarize``), each written on its own."""
        for k, (node, pieces) in enumerate(todo):
            text, source, call = await summarize(
                self.llm, job_id=jid, node=node, pieces=pieces, model=model, request_key=f"summary:{node.id}:1"
            )
            async with self.db.job_tx(jid, final=k == len(todo) - 1) as tx:  # the last: the step's end too
                await load_job(tx, jid)
                if await _summarized(tx, node.id):
                    continue
                row = NodeSummary(
                    job_id=jid,
                    node_id=node.id,
                    version=1,
                    level=node.level,
                    summary=text,
                    source=source,
                    llm_call_id=call,
                )
                tx.session.add(row)
                await tx.session.flush()
                tx.event(
                    "memory",
                    "summary",
                    {"node": node.id, "level": node.level, "title": node.title, "source": source, "summary": row.id},
                )


async def _unit_chunks(tx: JobTx, chunks: list[Chunk]) -> list[_UnitChunk]:
    """The unit's chunks as the seam check reads them: latest text, memory, own findings (a
    statement each for all of them)."""
    versions = await latest_versions(tx, [c.id for c in chunks])
    ids = [c.state_after_id for c in chunks if c.state_after_id is not None]
    found = await tx.session.execute(select(CoherenceState).where(CoherenceState.id.in_(ids)))
    states = {s.id: s for s in found.scalars()}
    known: dict[int, set[tuple[str, int | None]]] = {c.id: set() for c in chunks}
    for f in await _chunk_findings(tx, [c.id for c in chunks]):
        known[f.chunk_id].add((f.subtype, f.entry_id))
    out = []
    for c in chunks:
        version, state = versions[c.id], states[c.state_after_id]  # type: ignore[index]
        mem = ChunkMemory.model_validate((state.delta or {}).get("memory") or {"summary": state.summary or "-"})
        out.append(_UnitChunk(c.id, c.ordinal, version.text, Remembered(mem, state.source), version.id, known[c.id]))
    return out


async def _chunk_findings(tx: JobTx, ids: list[int], edit_id: int | None = None) -> list[ContinuityFinding]:
    """What chunks' own checks found when the job wrote them (or, with ``edit_id``, when that edit did)."""
    by = ContinuityFinding.edit_id.is_(None) if edit_id is None else ContinuityFinding.edit_id == edit_id
    return list(
        (
            await tx.session.execute(
                select(ContinuityFinding).where(
                    ContinuityFinding.chunk_id.in_(ids), ContinuityFinding.seam_check_id.is_(None), by
                )
            )
        )
        .scalars()
        .all()
    )


async def _summarized(tx: JobTx, node_id: int) -> bool:
    return (await tx.session.execute(select(NodeSummary.id).where(NodeSummary.node_id == node_id))).first() is not None


async def _to_summarize(tx: JobTx, unit: PlanNode) -> list[tuple[PlanNode, list[str]]]:
    """In the transaction that completed ``unit``: its summary (from its chunks') and its part's,
    once every chapter of the part is done, each with what it is written from, unless written."""
    todo: list[tuple[PlanNode, list[str]]] = []
    if unit.level in ("chapter", "part") and not await _summarized(tx, unit.id):
        todo.append((unit, await _chunk_summaries(tx, unit.id)))
    parent = await tx.session.get(PlanNode, unit.parent_id) if unit.parent_id else None
    if parent is not None and parent.level == "part" and parent.status == "done":
        if not await _summarized(tx, parent.id):
            todo.append((parent, await _child_summaries(tx, parent.id)))
    return todo


async def _chunk_summaries(tx: JobTx, unit_id: int) -> list[str]:
    return list(
        (
            await tx.session.execute(
                select(CoherenceState.summary)
                .join(Chunk, Chunk.state_after_id == CoherenceState.id)
                .where(Chunk.unit_id == unit_id)
                .order_by(Chunk.ordinal)
            )
        )
        .scalars()
        .all()
    )


async def _child_summaries(tx: JobTx, parent_id: int) -> list[str]:
    """The latest summary of each child of a node, in document order."""
    rows = (
        await tx.session.execute(
            select(PlanNode.id, NodeSummary.summary)
            .join(PlanNode, PlanNode.id == NodeSummary.node_id)
            .where(PlanNode.parent_id == parent_id)
            .order_by(PlanNode.position, NodeSummary.version.desc())
        )
    ).all()
    latest: dict[int, str] = {}
    for node_id, text in rows:
        latest.setdefault(node_id, text)
    return list(latest.values())


async def _complete(tx: JobTx, unit: PlanNode) -> None:
    """Mark the unit done (the database checks its seam), and its part when all its chapters are."""
    if unit.status == "done":
        return
    unit.status, unit.completed_at = "done", now()
    await tx.session.flush()
    job = await load_job(tx, tx.job_id)
    job.units_done = job.units_done + 1
    if unit.parent_id is not None:
        parent = await tx.session.get(PlanNode, unit.parent_id)
        if parent is not None and parent.level == "part":
            open_siblings = (
                await tx.session.execute(
                    select(func.count())
                    .select_from(PlanNode)
                    .where(PlanNode.parent_id == parent.id, PlanNode.status != "done")
                )
            ).scalar_one()
            if open_siblings == 0:
                parent.status, parent.completed_at = "done", now()
    tx.event("unit", "complete", {"unit": unit.id, "level": unit.level, "title": unit.title})
