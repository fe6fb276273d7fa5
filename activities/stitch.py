"""The stitch step: once a section's chunks are committed, check the seams inside its unit as text
(paragraphs repeated from earlier text of the unit, references to sections that do not exist,
passages that stop mid-sentence) and repair them as new chunk versions, never under a locked node;
broken seams are bridged by the model, its words through the gate (cut where the document says
them already, claimed, recorded on the version) as a chunk's are. Continuity (names, attributes,
threads, the timeline) is checked when each chunk is accepted, against the story memory; seams
between units are the seam step's."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.base import ModelStep, add_version, job_options, latest_versions, load_job, plan_node, texts_of
from activities.contracts import NodeRef
from activities.gating import claim_version, gate
from activities.prompts import bridge_messages
from core.continuity import remove_paragraph, seam_issues
from core.gate import Cut, Gated
from core.layout import STITCH_WINDOW_CHUNKS
from core.text import count_words, join_continuation, normalize_paragraph, paragraphs
from db.locks import locked_chunks
from db.manuscript import Chunk, PlanNode, StitchResult
from db.session import JobTx

MAX_BRIDGES = 3  # model calls per section for broken seams


class StitchActivities(ModelStep):
    @activity.defn(name="stitch_section")
    async def stitch_section(self, ref: NodeRef) -> None:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            section = await plan_node(tx, ref.node_id)
            if await _stitched(tx, section.id):
                return
            chunks = (
                (await tx.session.execute(select(Chunk).where(Chunk.section_id == section.id).order_by(Chunk.ordinal)))
                .scalars()
                .all()
            )
            if not chunks:
                return
            first = chunks[0]
            # Earlier text of the same unit, in a window: enough to catch repeats, bounded at scale.
            earlier = (
                (
                    await tx.session.execute(
                        select(Chunk)
                        .where(
                            Chunk.job_id == jid,
                            Chunk.unit_id == first.unit_id,
                            Chunk.ordinal < first.ordinal,
                            Chunk.ordinal >= first.ordinal - STITCH_WINDOW_CHUNKS,
                        )
                        .order_by(Chunk.ordinal)
                    )
                )
                .scalars()
                .all()
            )
            by_id = await texts_of(tx, [*earlier, *chunks])
            texts = {c.ordinal: by_id[c.id] for c in [*earlier, *chunks]}
            seen = {normalize_paragraph(p) for c in earlier[:-1] for p in paragraphs(texts[c.ordinal])}
            window = [(c.ordinal, texts[c.ordinal]) for c in ([earlier[-1]] if earlier else []) + list(chunks)]
            issues = seam_issues(window, job.sections_total, seen)
            repair_with_model = job_options(job).stitch_repairs_with_model
            model = job.model
            broken = [i for i in issues if i["type"] == "broken_seam"][:MAX_BRIDGES] if repair_with_model else []
            if not broken:  # nothing for the model to bridge: stored by this transaction, the step's last
                tx.final = True
                await _store(tx, section, [*earlier, *chunks], texts, window, issues, {})
                return
        bridges: dict[int, tuple[str, Gated]] = {}
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
            prompt = "\n".join(m["content"] for m in msgs)
            gated = await gate(res.text, prompt=prompt, fragment=True)
            bridge, _, rest = gated.text.strip().partition("\n")
            if rest.strip():  # a bridge is one sentence: what follows is not kept, and is counted so
                gated.cuts.append(Cut("past_bridge", rest.strip(), count_words(rest)))
            if bridge.strip():
                bridge = bridge.strip()
                bridges[issue["chunk"]] = (bridge if bridge[-1] in ".!?" else bridge + ".", gated)
        async with self.db.job_tx(jid, final=True) as tx:
            await load_job(tx, jid)
            if await _stitched(tx, section.id):
                return
            section = await plan_node(tx, ref.node_id)
            rows = list(
                (
                    await tx.session.execute(select(Chunk).where(Chunk.job_id == jid, Chunk.ordinal.in_(list(texts))))
                ).scalars()
            )
            await _store(tx, section, rows, texts, window, issues, bridges)


async def _store(
    tx: JobTx,
    section: PlanNode,
    chunks: list[Chunk],
    texts: dict[int, str],
    window: list[tuple[int, str]],
    issues: list[dict[str, Any]],
    bridges: dict[int, tuple[str, Gated]],
) -> None:
    """The section's repairs (new chunk versions; a bridge's words claimed and recorded as a
    chunk attempt's are), its stitch result, and the section written. ``chunks``: the rows of the
    window's chunks, as this transaction read them. A chunk under a locked node is not repaired."""
    rows = {c.ordinal: c for c in chunks}
    job = await load_job(tx, tx.job_id, lock=bool(issues))  # a lock taken meanwhile is seen, or waits
    locked = await locked_chunks(tx.session, [c.id for c in chunks]) if issues else set()
    words_before = sum(rows[o].word_count for o, _ in window)
    repairs, new_texts = _repair(dict(window), rows, section.id, issues, {o: b for o, (b, _) in bridges.items()})
    for o in [o for o in new_texts if rows[o].id in locked]:
        del new_texts[o]
        repairs = [{**r, "skipped": "locked"} if r["chunk"] == o else r for r in repairs]
    latest_of = await latest_versions(tx, [rows[o].id for o in new_texts])
    for ordinal, text in new_texts.items():
        chunk = rows[ordinal]
        latest = latest_of.get(chunk.id)
        detail: dict[str, Any] = {"section": section.id}
        if ordinal in bridges:
            text, detail["gate"] = await claim_version(tx, chunk, text, bridges[ordinal][1])
        v = add_version(tx, chunk, (latest.version if latest else 0) + 1, "stitch", text, detail)
        chunk.word_count = v.word_count
    words_after = sum(rows[o].word_count for o, _ in window)
    job.words_written = job.words_written + words_after - words_before
    tx.session.add(
        StitchResult(
            job_id=tx.job_id,
            section_id=section.id,
            issues=issues,
            repairs=repairs,
            words_before=words_before,
            words_after=words_after,
        )
    )
    # A top-up section is its own unit: it is complete only once its seam is validated.
    section.status = "written" if rows[window[-1][0]].unit_id == section.id else "done"
    tx.event(
        "stitch",
        "section",
        {
            "section": section.position,
            "issues": len(issues),
            "repairs": len(repairs),
            "words_before": words_before,
            "words_after": words_after,
            "issue_types": sorted({i["type"] for i in issues}),
        },
    )


def _repair(
    texts: dict[int, str],
    rows: dict[int, Chunk],
    section_id: int,
    issues: list[dict[str, Any]],
    bridges: dict[int, str],
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The repairs the issues call for: (what was repaired, the new text of each changed chunk)."""
    repairs: list[dict[str, Any]] = []
    new: dict[int, str] = {}
    for issue in issues:
        o = issue["chunk"]
        row = rows.get(o)
        # Only this section's chunks change, but a seam may bridge the chunk just before it.
        if row is None or row.section_id != section_id and issue["type"] != "broken_seam":
            continue
        text = new.get(o, texts[o])
        if issue["type"] == "repeated_paragraph":
            new[o] = remove_paragraph(text, issue["text"])
            repairs.append({"type": "removed_repeated_paragraph", "chunk": o})
        elif issue["type"] == "broken_seam" and o in bridges:
            new[o] = join_continuation(text, bridges[o])
            repairs.append({"type": "bridged_seam", "chunk": o, "text": bridges[o]})
    return repairs, {o: t for o, t in new.items() if t != texts[o]}


async def _stitched(tx: JobTx, section_id: int) -> bool:
    found = (
        await tx.session.execute(
            select(StitchResult.id).where(StitchResult.job_id == tx.job_id, StitchResult.section_id == section_id)
        )
    ).first()
    return found is not None
