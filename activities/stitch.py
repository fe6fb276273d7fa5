"""The stitch step: once a section's chunks are committed, check the seams inside its unit as text
(paragraphs repeated from earlier text of the unit, references to sections that do not exist,
passages that stop mid-sentence) and repair them as new chunk versions, never under a locked node;
broken seams are bridged by the model, its words through the gate (cut where the document says
them already, claimed) and stored as the chunk's attempt (``activities.answers``), as a chunk's
are. A bridge carries the broken sentence on and ends it (``core.scope.bridge_problems``): one that
opens a new sentence or does not end one is refused (no full stop is added for it) and asked for
again, told why; refused twice, the seam stays broken and the stitch's record says what was tried.
A seam left broken (its bridges refused, its chapter locked, or no bridge asked for) is an open
finding of the passage that stops mid-sentence, with what was tried: the coherence report counts it.
Continuity (names, attributes, threads, the timeline) is checked when each chunk is accepted,
against the story memory; seams between units are the seam step's."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.answers import Answer, store_answers
from activities.base import (
    ModelStep,
    add_version,
    check_version_length,
    job_options,
    latest_versions,
    load_job,
    plan_node,
    texts_of,
)
from activities.contracts import NodeRef
from activities.gating import gate
from activities.prompts import bridge_messages
from core.continuity import BROKEN_SEAM, broken_seam_finding, remove_paragraph, seam_issues
from core.gate import Cut, Gated
from core.layout import STITCH_WINDOW_CHUNKS
from core.scope import bridge_problems, unquoted
from core.text import count_words, join_continuation, normalize_paragraph, paragraphs
from db.locks import locked_chunks
from db.manuscript import Chunk, PlanNode, StitchResult
from db.memory import finding_events, finding_rows
from db.session import JobTx

MAX_BRIDGES = 3  # broken seams per section bridged by the model
BRIDGE_TRIES = 2  # answers asked for a bridge before the seam is left broken


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
            broken = [i for i in issues if i["type"] == BROKEN_SEAM][:MAX_BRIDGES] if repair_with_model else []
            if not broken:  # nothing for the model to bridge: stored by this transaction, the step's last
                tx.final = True
                await _store(tx, section, [*earlier, *chunks], texts, window, issues, {})
                return
        bridges = {issue["chunk"]: await self._bridge(jid, section.id, model, texts[issue["chunk"]], issue["chunk"])
                   for issue in broken}  # fmt: skip
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

    async def _bridge(self, jid: uuid.UUID, section_id: int, model: str, text: str, ordinal: int) -> list[Answer]:
        """The model's bridges for a passage that stops mid-sentence, each through the gate (its
        first line kept), until one carries the sentence on and ends it or ``BRIDGE_TRIES`` were
        refused; the last used, if any."""
        answers: list[Answer] = []
        error = ""
        for attempt in range(1, BRIDGE_TRIES + 1):
            msgs = bridge_messages(text, error)
            res = await self.llm.complete(
                job_id=jid,
                purpose="stitch",
                request_key=f"stitch:{section_id}:{ordinal}" + (f":{attempt}" if attempt > 1 else ""),
                model=model,
                messages=msgs,
                max_tokens=48,
                temperature=0.3,
            )
            gated = await gate(res.text, prompt="\n".join(m["content"] for m in msgs), fragment=True)
            bridge, _, rest = gated.text.strip().partition("\n")
            cuts = list(gated.cuts)
            if rest.strip():  # a bridge is one sentence: what follows is not kept, and is counted so
                cuts.append(Cut("past_bridge", rest.strip(), count_words(rest)))
            problems = bridge_problems(bridge)
            answers.append(Answer("repair", "bridge", res.call_id, Gated(bridge.strip(), cuts, gated.words_in),
                                  not problems, [f"refused: {p}" for p in problems]))  # fmt: skip
            if not problems:
                break
            error = unquoted(problems[0])
        return answers


async def _store(
    tx: JobTx,
    section: PlanNode,
    chunks: list[Chunk],
    texts: dict[int, str],
    window: list[tuple[int, str]],
    issues: list[dict[str, Any]],
    bridges: dict[int, list[Answer]],
) -> None:
    """The section's repairs (new chunk versions; a bridge's words claimed and stored as the
    chunk's attempt, a refused one's too), a finding for each seam left broken, its stitch result,
    and the section written. ``chunks``: the rows of the window's chunks, as this transaction read
    them. A chunk under a locked node is not repaired."""
    rows = {c.ordinal: c for c in chunks}
    job = await load_job(tx, tx.job_id, lock=bool(issues))  # a lock taken meanwhile is seen, or waits
    locked = await locked_chunks(tx.session, [c.id for c in chunks]) if issues else set()
    words_before = sum(rows[o].word_count for o, _ in window)
    used = {o: a[-1].gated.text for o, a in bridges.items() if a and a[-1].used}
    repairs, new_texts = _repair(dict(window), rows, section.id, issues, used)
    repairs += [
        {"type": "bridge_refused", "chunk": o, "tried": [p for a in answers for p in a.problems][:4]}
        for o, answers in bridges.items()
        if o not in used
    ]
    for o in [o for o in new_texts if rows[o].id in locked]:
        del new_texts[o]
        repairs = [{**r, "skipped": "locked"} if r["chunk"] == o else r for r in repairs]
    for o, answers in bridges.items():  # every bridge asked for is an attempt of its chunk, used or not
        if o not in new_texts:
            for a in answers:
                a.drop("not used: the chunk was not changed (locked, or no bridge was accepted)")
            await store_answers(tx, rows[o], answers, dict(window)[o])
    left = _left_broken(issues, repairs, bridges, job_options(job).stitch_repairs_with_model)
    latest_of = await latest_versions(tx, [rows[o].id for o in {*new_texts, *(i["chunk"] for i, _ in left)}])
    for ordinal, text in new_texts.items():
        chunk = rows[ordinal]
        latest = latest_of.get(chunk.id)
        detail: dict[str, Any] = {"section": section.id}
        if ordinal in bridges:
            text, detail["attempts"] = await store_answers(tx, chunk, bridges[ordinal], text)
        v = add_version(tx, chunk, (latest.version if latest else 0) + 1, "stitch", text, detail)
        await check_version_length(tx, chunk, v)  # a paragraph removed may leave it short: said so
        chunk.word_count = v.word_count
        latest_of[chunk.id] = v
    await tx.session.flush()
    found = []
    for issue, tried in left:  # the text as it now stands stops mid-sentence: reported, with what was tried
        chunk = rows[issue["chunk"]]
        fs = finding_rows(
            tx, [(broken_seam_finding(issue, tried), False)], chunk=chunk, version_id=latest_of[chunk.id].id,
            repair_version_id=None, call_id=None, rounds=len(bridges.get(issue["chunk"], [])),
        )  # fmt: skip
        await tx.session.flush()
        finding_events(tx, fs, chunk, "stitch")
        found += [f.id for f in fs]
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
    refused = [r for r in repairs if r["type"] == "bridge_refused"]  # the seam left broken, and what was tried
    # A top-up section is its own unit: it is complete only once its seam is validated.
    section.status = "written" if rows[window[-1][0]].unit_id == section.id else "done"
    tx.event(
        "stitch",
        "section",
        {
            "section": section.position,
            "issues": len(issues),
            "repairs": sum(1 for r in repairs if r["type"] != "bridge_refused" and not r.get("skipped")),
            "words_before": words_before,
            "words_after": words_after,
            "issue_types": sorted({i["type"] for i in issues}),
            **({"bridges_refused": refused} if refused else {}),
            **({"left_broken": found} if found else {}),  # the open findings that say so
        },
    )


def _left_broken(
    issues: list[dict[str, Any]], repairs: list[dict[str, Any]], bridges: dict[int, list[Answer]], with_model: bool
) -> list[tuple[dict[str, Any], str]]:
    """The broken seams the stitch leaves broken, each with what was tried: bridges refused, a
    bridge not put into a locked chapter, or none asked for (and why)."""
    out = []
    for issue in issues:
        o = issue["chunk"]
        bridged = [r for r in repairs if r["type"] == "bridged_seam" and r["chunk"] == o]
        if issue["type"] != BROKEN_SEAM or bridged and not bridged[0].get("skipped"):
            continue
        refused = [
            p.removeprefix("refused: ") for a in bridges.get(o, []) for p in a.problems if p.startswith("refused")
        ]
        if bridged:
            tried = "not bridged: its chapter is locked (checked, never rewritten)"
        elif refused:
            tried = f"{len(bridges[o])} bridge(s) asked for, each refused: " + "; ".join(refused)
        elif not with_model:
            tried = "not bridged: the job's option stitch_repairs_with_model is off"
        else:
            tried = f"not bridged: the model bridges the first {MAX_BRIDGES} broken seams of a section, no more"
        out.append((issue, tried))
    return out


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
        if row is None or row.section_id != section_id and issue["type"] != BROKEN_SEAM:
            continue
        text = new.get(o, texts[o])
        if issue["type"] == "repeated_paragraph":
            new[o] = remove_paragraph(text, issue["text"])
            repairs.append({"type": "removed_repeated_paragraph", "chunk": o})
        elif issue["type"] == BROKEN_SEAM and o in bridges:
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
