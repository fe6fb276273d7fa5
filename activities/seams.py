"""The seam step: a unit (chapter) is complete only once the seam with its predecessor has been
checked against the predecessor's real end, and its summary written for the chapters after it.

A unit whose first chunk was written from its predecessor's real end state has a ``strict`` seam:
that chunk was checked against the whole ledger before it when it was accepted, so the seam is
what that check found (with every chunk of the unit whose own check ran while a chunk before it
was still being written checked again). A unit written in parallel, from a handoff, has a
``handoff`` seam: each of its chunks is checked again against the ledger as it now stands up to
the unit's start (what the handoff could not know: the predecessor's entities, attributes and
resolved threads), and a judge compares the unit's opening with the predecessor's end; what they
find is repaired as new chunk versions (the old kept) and checked again, never inside a locked
node (``activities/seam_check.py``, the checker an edit's checks use too). The seam is
``validated`` or ``repaired`` only by a check that ran and passed (``core.seam``); ``unchecked``
when a check could not answer, with why; otherwise ``flagged``, its findings open in the
coherence report. With ``options.continuity = "strict"`` a flagged or unchecked seam fails the
job with ``E_CONTINUITY``. The database refuses to mark a unit complete without one of those.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from temporalio import activity

from activities.base import ModelStep, job_options, load_job, now, plan_node, text_of
from activities.contracts import NodeRef
from activities.memory import summarize
from activities.repair import unchecked_by
from activities.seam_check import SeamChecker, unit_chunks
from core.errors import ContinuityBroken
from db.manuscript import Chunk, CoherenceState, NodeSummary, PlanNode, SeamCheck
from db.memory import ledger_before
from db.session import JobTx


class SeamActivities(ModelStep):
    @activity.defn(name="complete_unit")
    async def complete_unit(self, ref: NodeRef) -> None:
        """Check the unit's seam with its predecessor (repairing what the check finds, never into a
        locked node), mark it complete, and write its summary (and its part's, when it is the
        part's last chapter). Idempotent: a retry finds the seam row, the status and the summaries."""
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
                todo = await _complete_and_list(tx, unit)  # the first unit has no seam; a retry finds it stored
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
                mine = await unit_chunks(tx, list(chunks), seen)
                # A strict unit's chunks whose own check could not see the whole ledger are checked again.
                only = None if mode == "handoff" else {u.chunk_id for u in mine if not u.whole}
                own_unchecked = "" if only is None or first.id in only else unchecked_by(mine[0].stored)
                ids = (pred.id, pred.state_after_id, first.state_before_id, first.id)
        if needs_seam:
            checker = SeamChecker(self.db, self.llm)
            checked = []
            if only is None or only:
                checked = await checker.check(
                    jid, unit.id, model, ledger, before, mine, opening=only is None, only=only
                )
            verdict, todo = await checker.store(
                jid, ref.node_id, mode, ids, checked, strict=strict_continuity, own_unchecked=own_unchecked,
                then=_complete_and_list,
            )  # fmt: skip
            if verdict is not None and verdict.broken:  # after the commit: the seam and its findings kept
                raise ContinuityBroken(verdict.broken)
        await self._summaries(jid, todo, model)

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


async def _complete_and_list(tx: JobTx, unit: PlanNode) -> list[tuple[PlanNode, list[str]]]:
    """The unit complete (the database checks its seam) and the summaries that calls for."""
    await _complete(tx, unit)
    return await _to_summarize(tx, unit)


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
