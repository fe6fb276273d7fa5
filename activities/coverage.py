"""When an author's instructions and key points are checked against the text, and the one retry
of what the text is missing (``core.coverage``; the rules, the judge and the rows:
``activities.coverage_judge``):

- after a regenerate with an instruction (``check_edit_coverage``, a step of the edit's
  workflow): the instruction against the node's new text;
- after a chapter written from a reviewed plan (``check_unit_coverage``, a step of the unit's
  workflow): each key point the author added to a top-level node in review, against that node's
  text once it is written.

(A selection's rewrite checks its instruction as it is written: ``activities.selection``.)

What is missing is retried once, within the job's budget: one paragraph of the node (the one
about it, or the ending for an instruction about the ending) rewritten to carry it. Its answer is
gated and kept inside that paragraph as a selection's rewrite is (``core.scope``: the splice
proved), remembered and checked, stored as a ``coverage_repair`` version; then the items are
checked again. What is still missing is a finding; what the judge could not answer, unchecked.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.answers import store_answer
from activities.base import ModelStep, add_version, check_version_length, latest_version, load_job
from activities.contracts import NodeRef
from activities.coverage_judge import store_verdicts, verdicts
from activities.edit_prompts import cover_messages
from activities.edit_rows import EditRef, load_edit, note, store_version
from activities.gating import claim, gate, taken
from activities.prompts import max_tokens_for
from activities.repair import Checked, check_and_repair
from core.coverage import Item, Verdict, repair_target
from core.edits import node_text
from core.errors import BudgetExhausted
from core.gate import Gated
from core.scope import growth_limit, prove, selection_problems, splice, whole_sentences
from core.text import count_words
from db.coverage import CoverageCheck
from db.loop import PlanVersion
from db.manuscript import Chunk, PlanNode
from db.memory import finding_events, finding_rows, ledger_before, store_memory
from db.models import Job
from db.session import JobTx
from db.tree import ancestors, chunks_under, latest_text

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", re.S)


class CoverageActivities(ModelStep):
    @activity.defn(name="check_edit_coverage")
    async def check_edit_coverage(self, ref: EditRef) -> None:
        """A regenerate's instruction, against the node's new text (retried once if missing)."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            edit = await load_edit(tx, ref.edit_id)
            instruction = str((edit.params or {}).get("instruction") or "").strip()
            if edit.kind != "regenerate" or not instruction or edit.detail.get("coverage"):
                return
            node_id, model, key = edit.node_id, job.model, f"edit:{edit.number}:coverage"
        await self._check(jid, node_id, ref.edit_id, [Item("instruction", instruction)], key, model)

    @activity.defn(name="check_unit_coverage")
    async def check_unit_coverage(self, ref: NodeRef) -> None:
        """The key points the author added in plan review to the nodes this unit completes."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            unit = await tx.session.get(PlanNode, ref.node_id)
            assert unit is not None
            todo = await _reviewed_points(tx, unit)
            model = job.model
        for node_id, points in todo:
            items = [Item("key_point", p) for p in points]
            await self._check(jid, node_id, None, items, f"node:{node_id}:coverage", model)
            activity.heartbeat(node_id)

    async def _check(
        self, jid: uuid.UUID, node_id: int, edit_id: int | None, items: list[Item], key: str, model: str
    ) -> None:
        """Check, retry what is missing once, check again; store every round (idempotent: once per
        node and edit)."""
        text, _ = await self._node(jid, node_id)
        first = await verdicts(self.llm, job_id=jid, chunk_id=None, model=model, text=text, items=items,
                               request_key=f"{key}:0")  # fmt: skip
        missing = [v.item for v in first if v.verdict == "missing"]
        again: list[Verdict] | None = None
        why_not = ""
        if missing:
            try:
                why_not = await self._cover(jid, node_id, edit_id, missing, f"{key}:cover", model)
            except BudgetExhausted as exc:  # within the budget only: the finding says why no retry came
                why_not = f" (not retried: {exc})"
            if not why_not:
                text, _ = await self._node(jid, node_id)
                again = await verdicts(self.llm, job_id=jid, chunk_id=None, model=model, text=text, items=missing,
                                       request_key=f"{key}:1")  # fmt: skip
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            node = await tx.session.get(PlanNode, node_id, with_for_update=True)
            assert node is not None
            edit = await load_edit(tx, edit_id) if edit_id is not None else None
            if edit is not None and edit.detail.get("coverage"):
                return
            if edit is None and await _checked(tx, node_id):
                return
            chunk, version = await _target_chunk(tx, node, missing or items)
            counts = await store_verdicts(tx, first, node_id=node_id, edit_id=edit_id, round_=0, chunk=chunk,
                                          version_id=version, final=again is None, note=why_not)  # fmt: skip
            if again is not None:
                counts = await store_verdicts(tx, again, node_id=node_id, edit_id=edit_id, round_=1, chunk=chunk,
                                              version_id=version, final=True)  # fmt: skip
            if edit is not None:
                note(edit, coverage=counts)

    async def _node(self, jid: uuid.UUID, node_id: int) -> tuple[str, list[Chunk]]:
        async with self.db.job_tx(jid) as tx:
            node = await tx.session.get(PlanNode, node_id)
            assert node is not None
            chunks = await chunks_under(tx.session, node)
            return node_text([await latest_text(tx.session, c.id) for c in chunks]), chunks

    async def _cover(
        self, jid: uuid.UUID, node_id: int, edit_id: int | None, items: list[Item], key: str, model: str
    ) -> str:
        """The one retry: a paragraph of the node rewritten to carry ``items``. Returns '' when it
        was stored, else why not (said in the findings)."""
        async with self.db.job_tx(jid) as tx:
            node = await tx.session.get(PlanNode, node_id)
            assert node is not None
            chunk, ctext, ps, pe = await _paragraph_for(tx, node, items)
            ledger = await ledger_before(tx, chunk.ordinal)
            number = (await load_edit(tx, edit_id)).number if edit_id is not None else None
        para = ctext[ps:pe]
        msgs = cover_messages(para, items, count_words(para) + 15 * len(items))
        res = await self.llm.complete(
            job_id=jid,
            chunk_id=chunk.id,
            purpose="coverage_repair",
            request_key=f"{key}:1",
            model=model,
            messages=msgs,
            max_tokens=max_tokens_for(growth_limit(count_words(para)) + 10),
        )
        # The paragraph's words and the items', said again, are what was asked for: no echoes.
        echo_of = "\n".join(m["content"] for m in msgs)
        for asked in [para, *(i.text.strip() for i in items)]:
            echo_of = echo_of.replace(asked, "\n")
        gated = await gate(res.text, prompt=echo_of, before=ctext[:ps])
        kept, cuts = whole_sentences(gated.text)
        gated = Gated(kept, [*gated.cuts, *cuts], gated.words_in)
        async with self.db.job_tx(jid) as tx:
            gated = await taken(tx, gated, free=[chunk.id])
        problems = selection_problems(gated.text, prefix=ctext[:ps], old=para, suffix=ctext[pe:], raw=res.text)
        if res.finish_reason == "length":
            problems.insert(0, "the answer was cut off at its token limit")
        sp = splice(ctext, ps, pe, gated.text)
        problems = problems or prove(ctext, sp.after, ps, pe, sp.new)
        checked = None
        if not problems:
            checked = await check_and_repair(
                self.llm, job_id=jid, chunk_id=chunk.id, model=model, passage=sp.after, ledger=ledger,
                request_key=f"{key}:memory", min_words=chunk.min_words, locked=True,
            )  # fmt: skip
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            row = await tx.session.get(Chunk, chunk.id)
            assert row is not None
            if (await latest_text(tx.session, row.id)).strip() != ctext:
                return ""  # stored by an earlier try of this step
            if checked is not None:
                claimed = await claim(tx, row, row.attempts + 1, gated, free=[row.id])
                if claimed.text != gated.text:  # the document said it meanwhile (a chapter in parallel)
                    problems, gated = ["the document said part of it meanwhile"], claimed
            used = not problems
            await store_answer(tx, row, kind="repair", call_id=res.call_id, gated=gated, used=used,
                               text_after=sp.after if used else ctext, problems=problems, edit=number)  # fmt: skip
            if not used:
                tx.event("coverage", "refused", {"node": node_id, "chunk": row.ordinal, "problems": problems})
                return f" (a retry was made and refused: {problems[0]})"
            assert checked is not None
            proof = {k: v for k, v in sp.proof().items() if k.endswith(("sha256", "chars"))}
            if edit_id is not None:
                edit = await load_edit(tx, edit_id)
                await store_version(tx, job, edit, row, "coverage_repair", sp.after, checked, None, {"scope": proof})
            else:
                await _store_repair(tx, job, row, sp.after, checked, [i.text for i in items])
            tx.event("coverage", "repaired", {"node": node_id, "edit": number, "chunk": row.ordinal,
                                              "items": [i.text for i in items], **proof})  # fmt: skip
        return ""


async def _store_repair(tx: JobTx, job: Job, chunk: Chunk, text: str, checked: Checked, items: list[str]) -> None:
    """A chapter's chunk rewritten in part to carry its key points (no edit: the job's own writing),
    with its memory and findings; the job's words follow."""
    latest = await latest_version(tx, chunk.id)
    v = add_version(tx, chunk, (latest.version if latest else 0) + 1, "coverage_repair", text, {"items": items})
    await check_version_length(tx, chunk, v)
    await tx.session.flush()
    rem = checked.remembered
    await store_memory(tx, chunk, v.id, chunk.state_after_id, rem.memory, rem.source)
    findings = finding_rows(
        tx, checked.fates(), chunk=chunk, version_id=v.id, repair_version_id=None,
        call_id=rem.calls[0] if rem.calls else None, rounds=checked.rounds,
    )  # fmt: skip
    await tx.session.flush()
    finding_events(tx, findings, chunk, "coverage")
    was, chunk.word_count = chunk.word_count, v.word_count
    job.words_written = job.words_written + v.word_count - was


def _paragraphs(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)]


async def _paragraph_for(tx: JobTx, node: PlanNode, items: list[Item]) -> tuple[Chunk, str, int, int]:
    """The paragraph a retry rewrites (``core.coverage.repair_target``): its chunk, the chunk's
    text, and where the paragraph lies in it."""
    where: list[tuple[Chunk, str, int, int]] = []
    for c in await chunks_under(tx.session, node):
        text = (await latest_text(tx.session, c.id)).strip()
        where += [(c, text, a, b) for a, b in _paragraphs(text)]
    assert where, f"node {node.id} has no text"
    return where[repair_target([t[a:b] for _, t, a, b in where], items)]


async def _target_chunk(tx: JobTx, node: PlanNode, items: list[Item]) -> tuple[Chunk, int | None]:
    """The chunk a finding about ``items`` names (where a retry would write), and its latest version."""
    chunk = (await _paragraph_for(tx, node, items))[0]
    v = await latest_version(tx, chunk.id)
    return chunk, v.id if v is not None else None


async def _checked(tx: JobTx, node_id: int) -> bool:
    row = await tx.session.execute(
        select(CoverageCheck.id).where(CoverageCheck.node_id == node_id, CoverageCheck.edit_id.is_(None)).limit(1)
    )
    return row.first() is not None


async def _reviewed_points(tx: JobTx, unit: PlanNode) -> list[tuple[int, list[str]]]:
    """The top-level nodes this unit completes (itself, those under it, or the part it ends) with
    the key points their author added in plan review, not yet checked."""
    q = select(PlanVersion).where(PlanVersion.job_id == tx.job_id).order_by(PlanVersion.version)
    versions = (await tx.session.execute(q)).scalars().all()
    approved = [v for v in versions if v.status == "approved"]
    if not versions or not approved:
        return []
    planned: dict[Any, dict[str, Any]] = {i.get("node"): i for i in versions[0].outline}
    top = (
        (
            await tx.session.execute(
                select(PlanNode)
                .where(PlanNode.job_id == tx.job_id, PlanNode.depth == 1, PlanNode.is_continuation.is_(False))
                .order_by(PlanNode.position)
            )
        )
        .scalars()
        .all()
    )
    above = {n.id for n in await ancestors(tx.session, unit)}
    out: list[tuple[int, list[str]]] = []
    for node, item in zip(top, approved[-1].outline, strict=False):
        before = set(planned.get(item.get("node"), {}).get("key_points", [])) if item.get("node") else set()
        added = [p for p in item.get("key_points", []) if p.strip() and p not in before]
        if not added or await _checked(tx, node.id):
            continue
        if node.id == unit.id or unit.level == "book":
            out.append((node.id, added))
        elif node.id in above and all(c.status == "done" for c in await chunks_under(tx.session, node)):
            out.append((node.id, added))  # a part: checked by the unit that completes it
    return out
