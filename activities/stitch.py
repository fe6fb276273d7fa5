"""The stitch step: once a section's chunks are committed, check its seams (paragraphs repeated
from earlier text, glossary terms drifting in spelling, references to sections that do not exist,
passages that stop mid-sentence) and repair them; broken seams are bridged by the model."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.base import ModelStep, job_options, load_job
from activities.contracts import SectionRef
from activities.prompts import bridge_messages
from core.coherence import fix_term, remove_paragraph, seam_issues
from core.layout import STITCH_WINDOW_CHUNKS
from core.text import clean_model_text, count_words, join_continuation, normalize_paragraph, paragraphs
from db.models import Chunk, CoherenceState, Section, StitchResult
from db.session import JobTx

MAX_BRIDGES = 3  # model calls per section for broken seams


class StitchActivities(ModelStep):
    @activity.defn(name="stitch_section")
    async def stitch_section(self, ref: SectionRef) -> None:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            section = await _section(tx, jid, ref.section)
            if await _stitched(tx, section.id):
                return
            chunks = (
                (await tx.session.execute(select(Chunk).where(Chunk.section_id == section.id).order_by(Chunk.ordinal)))
                .scalars()
                .all()
            )
            if not chunks:
                return
            first = chunks[0].ordinal
            # Earlier text in a window of a few sections: enough to catch repeats, bounded at scale.
            earlier = (
                await tx.session.execute(
                    select(Chunk.ordinal, Chunk.text)
                    .where(Chunk.job_id == jid, Chunk.ordinal < first, Chunk.ordinal >= first - STITCH_WINDOW_CHUNKS)
                    .order_by(Chunk.ordinal)
                )
            ).all()
            seen = {normalize_paragraph(p) for _, t in earlier[:-1] for p in paragraphs(t or "")}
            last_state = await tx.session.get(CoherenceState, chunks[-1].state_after_id)
            glossary = (last_state.glossary if last_state else None) or {}
            window = ([(earlier[-1][0], earlier[-1][1] or "")] if earlier else []) + [
                (c.ordinal, c.text or "") for c in chunks
            ]
            issues = seam_issues(window, glossary, job.sections_total, seen)
            repair_with_model = job_options(job).stitch_repairs_with_model
            texts = dict(window)
            model = job.model
        bridges: dict[int, str] = {}
        broken = [i for i in issues if i["type"] == "broken_seam"][:MAX_BRIDGES] if repair_with_model else []
        for issue in broken:
            msgs = bridge_messages(texts[issue["chunk"]])
            res = await self.llm.complete(
                job_id=jid,
                purpose="stitch",
                request_key=f"stitch:{section.id}:{issue['chunk']}",
                model=model,
                messages=msgs,
                max_tokens=48,
                temperature=0.3,
            )
            bridge = clean_model_text(res.text, "\n".join(m["content"] for m in msgs)).split("\n")[0].strip()
            if bridge:
                bridges[issue["chunk"]] = bridge if bridge[-1] in ".!?" else bridge + "."
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            if await _stitched(tx, section.id):
                return
            rows = {
                c.ordinal: c
                for c in (
                    await tx.session.execute(select(Chunk).where(Chunk.job_id == jid, Chunk.ordinal.in_(list(texts))))
                ).scalars()
            }
            words_before = sum(r.word_count for r in rows.values())
            repairs = _repair(rows, section.id, issues, bridges)
            for row in rows.values():
                row.word_count = count_words(row.text or "")
            words_after = sum(r.word_count for r in rows.values())
            tx.session.add(
                StitchResult(
                    job_id=jid,
                    section_id=section.id,
                    issues=issues,
                    repairs=repairs,
                    words_before=words_before,
                    words_after=words_after,
                )
            )
            (await _section(tx, jid, ref.section)).status = "done"
            tx.event(
                "stitch",
                "section",
                {
                    "section": section.ordinal,
                    "issues": len(issues),
                    "repairs": len(repairs),
                    "words_before": words_before,
                    "words_after": words_after,
                    "issue_types": sorted({i["type"] for i in issues}),
                },
            )


def _repair(
    rows: dict[int, Chunk], section_id: int, issues: list[dict[str, Any]], bridges: dict[int, str]
) -> list[dict[str, Any]]:
    """Apply the repairs the issues call for to the chunk rows; returns what was repaired."""
    repairs: list[dict[str, Any]] = []
    for issue in issues:
        row = rows.get(issue["chunk"])
        # Only this section's chunks change, but a seam may bridge the chunk just before it.
        if row is None or row.section_id != section_id and issue["type"] != "broken_seam":
            continue
        if issue["type"] == "repeated_paragraph":
            row.text = remove_paragraph(row.text or "", issue["text"])
            repairs.append({"type": "removed_repeated_paragraph", "chunk": row.ordinal})
        elif issue["type"] == "glossary_drift":
            row.text = fix_term(row.text or "", issue["term"], issue["found"])
            repairs.append({"type": "normalised_term", "chunk": row.ordinal, "term": issue["term"]})
        elif issue["type"] == "broken_seam" and issue["chunk"] in bridges:
            row.text = join_continuation(row.text or "", bridges[issue["chunk"]])
            repairs.append({"type": "bridged_seam", "chunk": row.ordinal, "text": bridges[issue["chunk"]]})
    return repairs


async def _section(tx: JobTx, jid: uuid.UUID, ordinal: int) -> Section:
    return (
        await tx.session.execute(select(Section).where(Section.job_id == jid, Section.ordinal == ordinal))
    ).scalar_one()


async def _stitched(tx: JobTx, section_id: int) -> bool:
    found = (
        await tx.session.execute(
            select(StitchResult.id).where(StitchResult.job_id == tx.job_id, StitchResult.section_id == section_id)
        )
    ).first()
    return found is not None
