"""The plan steps, top-down and lazy. ``plan_job`` lays out the whole tree (budgets of every part,
chapter, section and chunk: deterministic, no model) and asks the model only for the skeleton:
title, thesis, glossary and cast, style, and the top level's titles and synopses. ``expand_node``
plans a node's children when that node is about to be written, from the skeleton, its parent and
its siblings. Every answer is validated, retried once with the validation error, else replaced by
a deterministic fallback; no two headings of a document are the same."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from temporalio import activity

from activities.base import ModelStep, job_options, load_job, now, plan_node
from activities.contracts import JobRef, NodeRef, PlanResult
from activities.plan_rows import (
    SOURCE_OPENING_WORDS,
    apply_item,
    brief_chunks,
    brief_of,
    children_of,
    lay_out,
    plan_result,
)
from activities.prompts import (
    NodeBrief,
    children_messages,
    children_outline_messages,
    outline_messages,
    plan_max_tokens,
    plan_messages,
    rewrite_plan_messages,
)
from core.layout import NodePlan, generate_tree, planned_words, rewrite_tree, tree_levels, unit_level
from core.memory import plan_entries
from core.plan import (
    PlanItem,
    PlanModel,
    fallback_items,
    fallback_plan,
    opening_and_headings,
    parse_children,
    parse_outline,
    parse_plan,
    parse_titles,
    title_of_brief,
    topic_of,
)
from core.text import count_words
from db.manuscript import CoherenceState, LedgerEntry, PlanNode
from db.models import Document


class PlanActivities(ModelStep):
    @activity.defn(name="plan_job")
    async def plan_job(self, ref: JobRef) -> PlanResult:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, lock=True)
            if job.sections_total > 0:  # planned by an earlier attempt or run
                return await plan_result(tx, job)
            if job.status == "queued":  # once: a retried plan_job finds the job running already
                job.status, job.started_at = "running", now()
                tx.event("job", "running", {"step": "planning"})
            job.current_step = "planning"
            opts = job_options(job)
            prompt, target, title, model = job.prompt or "", job.target_words, job.title, job.model
            total = planned_words(target, job.max_words)
            source = None
            if job.kind == "rewrite":
                source = (
                    await tx.session.execute(
                        select(Document.text).where(Document.job_id == jid, Document.role == "input")
                    )
                ).scalar_one()
        tree = rewrite_tree(source, total, opts.chunk_words) if source else generate_tree(total, opts.chunk_words)
        plan, plan_source, errors, padded = await self._ask_skeleton(jid, model, prompt, source, title, target, tree)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            if job.sections_total > 0:
                return await plan_result(tx, job)
            if not job.title:
                job.title = plan.title[:300]
            root = CoherenceState(
                job_id=jid,
                kind="root",
                ordinal=0,
                parent_id=None,
                summary=plan.thesis[:2000],
                glossary=plan.glossary,
                open_threads=[],
                delta={"source": plan_source, **({"padded": padded} if padded else {})},
                source="plan",
            )
            tx.session.add(root)
            await tx.session.flush()
            # The plan's glossary and cast are the ledger's first entries (before every chunk).
            tx.session.add_all(
                LedgerEntry(
                    job_id=jid,
                    state_id=root.id,
                    doc_order=-1,
                    kind=e.kind,
                    key=e.key,
                    name=e.name,
                    value=e.value[:1000],
                    quote=e.quote[:1000],
                    source="plan",
                )
                for e in plan_entries(plan.glossary)
            )
            top = await lay_out(tx.session, jid, tree, plan.sections)
            job.skeleton = {
                **plan.model_dump(include={"title", "thesis", "glossary", "style"}),
                "levels": list(tree_levels(tree)),
                "sections": [{"title": n.title, "summary": n.purpose} for n in top],
            }
            job.sections_total = sum(1 for n in tree.walk() if n.level == "section")
            job.chunks_total = sum(len(n.chunks) for n in tree.walk())
            job.units_total = sum(1 for n in tree.walk() if n.level == unit_level(tree_levels(tree)))
            job.current_step = "writing"
            tx.event(
                "plan",
                "created",
                {
                    "source": plan_source,
                    **_padding(padded, len(top)),
                    "errors": errors,
                    "levels": job.skeleton["levels"],
                    "top_level": len(top),
                    "units": job.units_total,
                    "sections": job.sections_total,
                    "chunks": job.chunks_total,
                    "planned_words": total,
                    "target_words": target,
                    "max_words": job.max_words,
                    "title": job.title,
                },
            )
            return await plan_result(tx, job)

    async def _ask_skeleton(
        self,
        jid: uuid.UUID,
        model: str,
        prompt: str,
        source: str | None,
        title: str | None,
        target: int,
        tree: NodePlan,
    ) -> tuple[PlanModel, str, list[str], int]:
        """(skeleton, "model" | "padded" | "fallback", the validation errors of the answers that were
        refused, how many top-level items the fallback added to a short model answer)."""
        style = self.llm.prompt_style
        n, level = len(tree.children), tree.children[0].level
        if source is not None:
            opening, headings = opening_and_headings(source)
            doc_title = title or (headings[0] if headings else source.strip().splitlines()[0][:120])
            lead = " ".join(opening.split()[:SOURCE_OPENING_WORDS])
        else:
            doc_title, lead = title or title_of_brief(prompt), prompt

        def messages(err: str | None) -> list[dict[str, str]]:
            if style == "document":
                return outline_messages(doc_title, lead, n, err)
            if source is not None:
                return rewrite_plan_messages(opening, headings, target, count_words(source), n, level, err)
            passages = [len(c.chunks) for c in tree.children] if level == "section" else None
            return plan_messages(prompt, target, n, level, err, passages)

        errors: list[str] = []
        for attempt in (1, 2):  # once, then once more with the validation error
            res = await self.llm.complete(
                job_id=jid,
                purpose="plan",
                request_key=f"plan:{attempt}",
                model=model,
                messages=messages(errors[-1] if errors else None),
                max_tokens=plan_max_tokens(n, style),
                temperature=0.4,
                json_mode=style != "document",
            )
            try:
                plan = (
                    parse_outline(res.text, doc_title, lead[:1000], n) if style == "document" else parse_plan(res.text)
                )
                short = max(0, n - len(plan.sections))
                return _padded(plan, n, lead), "padded" if short else "model", errors, short
            except ValueError as exc:
                errors.append(str(exc))
        return fallback_plan(prompt or (source or "")[:2000], n, title), "fallback", errors, 0

    @activity.defn(name="expand_node")
    async def expand_node(self, ref: NodeRef) -> None:
        """Plan the children of a node about to be written (once; a retry finds them planned)."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            node = await plan_node(tx, ref.node_id)
            if node.status != "pending":
                return
            brief = await brief_of(tx, job, node)
            model = job.model
        items, source, errors, padded = await self._ask_children(jid, model, node.id, brief)
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            node = await plan_node(tx, ref.node_id)
            if node.status != "pending":
                return
            children = await children_of(tx, node.id)
            taken = {
                k
                for k in (
                    await tx.session.execute(select(PlanNode.heading_key).where(PlanNode.job_id == jid))
                ).scalars()
                if k is not None
            }
            for child, item in zip(children, items, strict=True):
                apply_item(child, item, taken, context=node.title)
                if child.level == "section":
                    await brief_chunks(tx, child)
            node.status = "expanded"
            tx.event(
                "plan",
                "expanded",
                {
                    "node": node.id,
                    "level": node.level,
                    "title": node.title,
                    "source": source,
                    **_padding(padded, len(children)),
                    "errors": errors,
                    "children": [c.title for c in children],
                    "budgets": [c.budget_words for c in children],
                },
            )

    async def _ask_children(
        self, jid: uuid.UUID, model: str, node_id: int, brief: NodeBrief
    ) -> tuple[list[PlanItem], str, list[str], int]:
        """(the children's plan, "model" | "padded" | "fallback", the refused answers' errors, how
        many items the fallback added to a short model answer)."""
        style = self.llm.prompt_style
        errors: list[str] = []
        for attempt in (1, 2):
            msgs = (
                children_outline_messages(brief)
                if style == "document"
                else children_messages(brief, errors[-1] if errors else None)
            )
            res = await self.llm.complete(
                job_id=jid,
                purpose="plan",
                request_key=f"expand:{node_id}:{attempt}",
                model=model,
                messages=msgs,
                max_tokens=plan_max_tokens(brief.children, style),
                temperature=0.4,
                json_mode=style != "document",
            )
            try:
                if style == "document":
                    items = parse_titles(res.text, brief.path[-1][1], brief.children)
                    short = max(0, brief.children - len(items))
                    items = (items + fallback_items(brief.children, brief.path[-1][1]))[: brief.children]
                    return items, "padded" if short else "model", errors, short
                return parse_children(res.text, brief.children), "model", errors, 0
            except ValueError as exc:
                errors.append(str(exc))
        return fallback_items(brief.children, brief.path[-1][1]), "fallback", errors, 0


def _padded(plan: PlanModel, n: int, lead: str) -> PlanModel:
    """Exactly ``n`` top-level items: a short answer is completed by the fallback's."""
    plan.sections = (plan.sections + fallback_items(n, topic_of(lead)))[:n]
    return plan


def _padding(padded: int, of: int) -> dict[str, object]:
    """What a plan event says of a short model answer completed by the fallback's items."""
    if not padded:
        return {}
    return {"padded": padded, "note": f"the model planned {of - padded} of {of} items; {padded} are the fallback's"}
