"""The seam step: a unit (chapter) is complete only once the seam with its predecessor has been
validated against the predecessor's real end state.

A unit whose first chunk was written from that real state has a ``strict`` seam. One written in
parallel, from a handoff derived from the plan, has a ``handoff`` seam: the handoff is compared
with the real end state (terms, named entities, open threads, the last paragraph), the
differences are recorded, and if the text conflicts at the seam (the opening repeats the ending, a
term the predecessor established is spelled otherwise) the opening is repaired by the model as a
new version of the unit's first chunk, the old one kept. The database refuses to mark a unit
complete without the validated seam row (``plan_nodes_rules`` in db/ddl.py).
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from temporalio import activity

from activities.base import ModelStep, add_version, latest_version, load_job, now, plan_node, text_of
from activities.contracts import NodeRef
from activities.prompts import seam_repair_messages
from core.coherence import fix_term, seam_differences
from core.gate import clean_model_text
from core.text import count_words, paragraphs
from db.session import JobTx
from db.writing import Chunk, CoherenceState, PlanNode, SeamCheck


class SeamActivities(ModelStep):
    @activity.defn(name="complete_unit")
    async def complete_unit(self, ref: NodeRef) -> None:
        """Validate the unit's seam with its predecessor (repairing its opening if they conflict),
        then mark it complete. Idempotent: a retry finds the seam row and the status."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            unit = await plan_node(tx, ref.node_id)
            if unit.status == "done":
                return
            first = (
                await tx.session.execute(select(Chunk).where(Chunk.unit_id == unit.id).order_by(Chunk.ordinal).limit(1))
            ).scalar_one()
            seam = (
                await tx.session.execute(select(SeamCheck).where(SeamCheck.unit_id == unit.id))
            ).scalar_one_or_none()
            if first.ordinal == 0 or seam is not None:
                await _complete(tx, unit)
                return
            pred = (
                await tx.session.execute(select(Chunk).where(Chunk.job_id == jid, Chunk.ordinal == first.ordinal - 1))
            ).scalar_one()
            if pred.status != "done" or pred.state_after_id is None:
                raise RuntimeError(f"unit {unit.id}: its predecessor's last chunk {pred.ordinal} is not done")
            real = await tx.session.get(CoherenceState, pred.state_after_id)
            used = await tx.session.get(CoherenceState, first.state_before_id)
            assert real is not None and used is not None
            before, after = await text_of(tx, pred), await text_of(tx, first)
            mode = "strict" if used.id == real.id else "handoff"
            differences, conflicts = seam_differences(_state(real), _state(used), before, after)
            if mode == "strict":
                differences = {"last_paragraph": differences["last_paragraph"]}
            model, glossary = job.model, list(real.glossary or {})
        repaired_text = None
        if conflicts:
            opening = paragraphs(after)[0] if paragraphs(after) else after
            msgs = seam_repair_messages(before, opening, glossary, max(20, count_words(opening)))
            res = await self.llm.complete(
                job_id=jid,
                chunk_id=first.id,
                purpose="seam",
                request_key=f"seam:{unit.id}",
                model=model,
                messages=msgs,
                max_tokens=max(64, int(count_words(opening) * 1.6) + 32),
                temperature=0.4,
            )
            # The opening it rewrites may be kept word for word; the ending it follows may not.
            new_opening = clean_model_text(res.text, "\n".join(m["content"] for m in msgs), opening)
            rest = paragraphs(after)[1:]
            repaired_text = "\n\n".join([new_opening or opening, *rest])
            for c in conflicts:
                if c["type"] == "term_drift":
                    repaired_text = fix_term(repaired_text, c["term"], c["found"])
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            unit = await plan_node(tx, ref.node_id)
            if (await tx.session.execute(select(SeamCheck.id).where(SeamCheck.unit_id == unit.id))).first():
                await _complete(tx, unit)
                return
            fresh = await tx.session.get(Chunk, first.id)
            assert fresh is not None
            first = fresh
            version = None
            if repaired_text is not None:
                latest = await latest_version(tx, first.id)
                version = add_version(
                    tx,
                    first,
                    (latest.version if latest else 0) + 1,
                    "seam_repair",
                    repaired_text,
                    {"unit": unit.id, "conflicts": conflicts},
                )
                await tx.session.flush()
                first.word_count = version.word_count
            tx.session.add(
                SeamCheck(
                    job_id=jid,
                    unit_id=unit.id,
                    chunk_id=first.id,
                    predecessor_chunk_id=pred.id,
                    predecessor_state_id=real.id,
                    successor_state_id=used.id,
                    mode=mode,
                    differences=differences,
                    conflicts=conflicts,
                    repaired=version is not None,
                    repair_version_id=version.id if version else None,
                    validated=True,
                )
            )
            await tx.session.flush()
            tx.event(
                "seam",
                "repaired" if version else "validated",
                {
                    "unit": unit.id,
                    "title": unit.title,
                    "mode": mode,
                    "chunk": first.ordinal,
                    "conflicts": conflicts,
                    "differences": {k: v for k, v in differences.items() if v},
                    "version": version.version if version else None,
                },
            )
            await _complete(tx, unit)


def _state(s: CoherenceState) -> dict[str, object]:
    return {"summary": s.summary, "glossary": s.glossary, "open_threads": s.open_threads}


async def _complete(tx: JobTx, unit: PlanNode) -> None:
    """Mark the unit done (the database checks its seam), and its part when all its chapters are."""
    if unit.status == "done":
        return
    unit.status, unit.completed_at = "done", now()
    await tx.session.flush()
    job = await load_job(tx, tx.job_id)
    job.units_done = (
        await tx.session.execute(
            select(func.count())
            .select_from(PlanNode)
            .where(
                PlanNode.job_id == tx.job_id,
                PlanNode.status == "done",
                PlanNode.id.in_(select(Chunk.unit_id).where(Chunk.job_id == tx.job_id)),
            )
        )
    ).scalar_one()
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
