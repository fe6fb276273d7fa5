"""The plan steps, top-down and lazy. ``plan_job`` lays out the whole tree (budgets of every part,
chapter, section and chunk: deterministic, no model) and asks the model only for the skeleton:
title, thesis, glossary and cast, style, and the top level's titles and synopses. ``expand_node``
plans a node's children when that node is about to be written, from the skeleton, its parent and
its siblings. Every answer is validated, retried once with the validation error, else replaced by
a deterministic fallback; no two headings of a document are the same."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.base import ModelStep, job_options, load_job, now, plan_node
from activities.contracts import JobRef, NodeRef, PlanResult
from activities.memory import plan_entries
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
from core.plan import (
    PlanItem,
    PlanModel,
    distinct_title,
    fallback_items,
    fallback_plan,
    heading_key,
    opening_and_headings,
    parse_children,
    parse_outline,
    parse_plan,
    parse_titles,
    passage_briefs,
    title_of_brief,
    topic_of,
)
from core.text import count_words
from db.manuscript import Chunk, CoherenceState, LedgerEntry, LengthCheck, PlanNode
from db.models import Document, Job
from db.session import JobTx

SOURCE_OPENING_WORDS = 250


class PlanActivities(ModelStep):
    @activity.defn(name="plan_job")
    async def plan_job(self, ref: JobRef) -> PlanResult:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, lock=True)
            if job.sections_total > 0:  # planned by an earlier attempt or run
                return await _plan_result(tx, job)
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
        plan, plan_source, errors = await self._ask_skeleton(jid, model, prompt, source, title, target, tree)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            if job.sections_total > 0:
                return await _plan_result(tx, job)
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
                delta={"source": plan_source},
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
            top = await _lay_out(tx.session, jid, tree, plan.sections)
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
            return await _plan_result(tx, job)

    async def _ask_skeleton(
        self,
        jid: uuid.UUID,
        model: str,
        prompt: str,
        source: str | None,
        title: str | None,
        target: int,
        tree: NodePlan,
    ) -> tuple[PlanModel, str, list[str]]:
        """(skeleton, "model" | "fallback", the validation errors of the answers that were refused)."""
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
                plan.sections = (plan.sections + fallback_items(n, topic_of(lead)))[:n]
                return plan, "model", errors
            except ValueError as exc:
                errors.append(str(exc))
        return fallback_plan(prompt or (source or "")[:2000], n, title), "fallback", errors

    @activity.defn(name="expand_node")
    async def expand_node(self, ref: NodeRef) -> None:
        """Plan the children of a node about to be written (once; a retry finds them planned)."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            node = await plan_node(tx, ref.node_id)
            if node.status != "pending":
                return
            brief = await _brief(tx, job, node)
            model = job.model
        items, source, errors = await self._ask_children(jid, model, node.id, brief)
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            node = await plan_node(tx, ref.node_id)
            if node.status != "pending":
                return
            children = await _children(tx, node.id)
            taken = {
                k
                for k in (
                    await tx.session.execute(select(PlanNode.heading_key).where(PlanNode.job_id == jid))
                ).scalars()
                if k is not None
            }
            for child, item in zip(children, items, strict=True):
                _apply(child, item, taken, context=node.title)
                if child.level == "section":
                    await _brief_chunks(tx, child)
            node.status = "expanded"
            tx.event(
                "plan",
                "expanded",
                {
                    "node": node.id,
                    "level": node.level,
                    "title": node.title,
                    "source": source,
                    "errors": errors,
                    "children": [c.title for c in children],
                    "budgets": [c.budget_words for c in children],
                },
            )

    async def _ask_children(
        self, jid: uuid.UUID, model: str, node_id: int, brief: NodeBrief
    ) -> tuple[list[PlanItem], str, list[str]]:
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
                    items = (items + fallback_items(brief.children, brief.path[-1][1]))[: brief.children]
                else:
                    items = parse_children(res.text, brief.children)
                return items, "model", errors
            except ValueError as exc:
                errors.append(str(exc))
        return fallback_items(brief.children, brief.path[-1][1]), "fallback", errors


def _apply(node: PlanNode, item: PlanItem, taken: set[str], context: str | None) -> None:
    """A planned item onto its node: the title (the input's own heading, for rewrites, wins),
    made distinct from every heading the job has; purpose, key points, entities."""
    if node.heading_key is None:
        node.title = distinct_title(node.title or item.title, taken, context)
        node.heading_key = heading_key(node.title)
    node.purpose = item.summary[:2000]
    node.key_points = item.key_points
    node.introduces = item.introduces
    node.relies_on = item.relies_on


async def _lay_out(session: AsyncSession, jid: uuid.UUID, tree: NodePlan, top: list[PlanItem]) -> list[PlanNode]:
    """Rows for the whole tree in document order (every node, every chunk with its unit), the top
    level planned by the skeleton; returns the top-level nodes."""
    unit = unit_level(tree_levels(tree))
    taken: set[str] = set()
    counter = {"position": 0, "chunk": 0}
    top_nodes: list[PlanNode] = []

    async def add(plan: NodePlan, parent: PlanNode | None, ordinal: int, depth: int, unit_id: int | None) -> None:
        node = PlanNode(
            job_id=jid,
            parent_id=parent.id if parent else None,
            level=plan.level,
            depth=depth,
            ordinal=ordinal,
            position=counter["position"],
            budget_words=plan.budget,
            status="pending",
        )
        counter["position"] += 1
        if plan.title and plan.level != "book":  # the input's own heading (rewrites)
            node.title = distinct_title(plan.title, taken, parent.title if parent else None)
            node.heading_key = heading_key(node.title)
        if depth == 1:  # the top level is planned by the skeleton
            _apply(node, top[ordinal], taken, None)
            top_nodes.append(node)
        session.add(node)
        await session.flush()
        if plan.level == unit:
            unit_id = node.id
        for i, child in enumerate(plan.children):
            await add(child, node, i, depth + 1, unit_id)
        for ci, c in enumerate(plan.chunks):
            session.add(
                Chunk(
                    job_id=jid,
                    section_id=node.id,
                    unit_id=unit_id,
                    ordinal=counter["chunk"],
                    index_in_section=ci,
                    brief=c.brief,
                    source_text=c.source,
                    target_words=c.target,
                    min_words=c.min_words,
                    max_words=c.max_words,
                )
            )
            counter["chunk"] += 1
        if plan.level == "book" or (depth == 1 and plan.level == "section"):
            await session.flush()
            if plan.level == "section":  # planned by the skeleton: its chunks can be briefed now
                await _brief_section_chunks(session, node)
            node.status = "expanded"

    await add(tree, None, 0, 0, None)
    await session.flush()
    return top_nodes


async def _brief_chunks(tx: JobTx, section: PlanNode) -> None:
    await _brief_section_chunks(tx.session, section)
    section.status = "expanded"


async def _brief_section_chunks(session: AsyncSession, section: PlanNode) -> None:
    """Each chunk's own brief (AgentWrite): the section's key points are its passages' points, one
    each; passages beyond them get briefs of their own, never a reused point (rewrites keep
    theirs: the source passage)."""
    chunks = (
        (await session.execute(select(Chunk).where(Chunk.section_id == section.id).order_by(Chunk.index_in_section)))
        .scalars()
        .all()
    )
    briefs = passage_briefs(section.title or "", section.purpose, list(section.key_points or []), len(chunks))
    for c, brief in zip(chunks, briefs, strict=True):
        if not c.source_text:
            c.brief = brief[:2000]


async def _plan_result(tx: JobTx, job: Job) -> PlanResult:
    units = (
        await tx.session.execute(
            select(PlanNode.id, PlanNode.parent_id, PlanNode.level, PlanNode.status)
            .where(PlanNode.job_id == job.id, PlanNode.id.in_(select(Chunk.unit_id).where(Chunk.job_id == job.id)))
            .where(PlanNode.is_continuation.is_(False))
            .order_by(PlanNode.position)
        )
    ).all()
    parents = {r.parent_id for r in units if r.parent_id is not None}
    parts = set(
        (
            await tx.session.execute(select(PlanNode.id).where(PlanNode.id.in_(parents), PlanNode.level == "part"))
        ).scalars()
    )
    done = next((i for i, r in enumerate(units) if r.status != "done"), len(units))
    last_round = (
        await tx.session.execute(
            select(func.max(LengthCheck.round)).where(LengthCheck.job_id == job.id, LengthCheck.scope == "final")
        )
    ).scalar_one()
    return PlanResult(
        units=[r.id for r in units],
        parents=[r.parent_id if r.parent_id in parts else 0 for r in units],
        parallelism=job_options(job).parallelism,
        units_done=done,
        round=last_round or 0,
        review=job_options(job).review_plan,
        target_words=job.target_words,
    )


async def _children(tx: JobTx, node_id: int) -> list[PlanNode]:
    return list(
        (await tx.session.execute(select(PlanNode).where(PlanNode.parent_id == node_id).order_by(PlanNode.ordinal)))
        .scalars()
        .all()
    )


async def _brief(tx: JobTx, job: Job, node: PlanNode) -> NodeBrief:
    """What the node's children are planned from: the skeleton, its path, its siblings."""
    path: list[PlanNode] = []
    cur: PlanNode | None = node
    while cur is not None and cur.level != "book":
        path.append(cur)
        cur = await tx.session.get(PlanNode, cur.parent_id) if cur.parent_id else None
    path.reverse()
    siblings = (
        (
            await tx.session.execute(
                select(PlanNode.title).where(PlanNode.parent_id == node.parent_id).order_by(PlanNode.ordinal)
            )
        )
        .scalars()
        .all()
    )
    children = await _children(tx, node.id)
    passages: list[int] = []
    if children and children[0].level == "section":
        counts = dict(
            (
                await tx.session.execute(
                    select(Chunk.section_id, func.count())
                    .where(Chunk.section_id.in_([c.id for c in children]))
                    .group_by(Chunk.section_id)
                )
            ).all()
        )
        passages = [int(counts.get(c.id, 0)) for c in children]
    avoid = (
        (await tx.session.execute(select(PlanNode.title).where(PlanNode.job_id == job.id, PlanNode.title.is_not(None))))
        .scalars()
        .all()
    )
    source = ""
    if job.kind == "rewrite":
        first = (  # the node's first chunk: descendants follow it in document order
            await tx.session.execute(
                select(Chunk.source_text)
                .join(PlanNode, PlanNode.id == Chunk.section_id)
                .where(Chunk.job_id == job.id, PlanNode.position > node.position)
                .order_by(PlanNode.position, Chunk.ordinal)
                .limit(1)
            )
        ).scalar_one_or_none()
        source = " ".join((first or "").split()[:SOURCE_OPENING_WORDS])
    return NodeBrief(
        book=job.skeleton,
        path=[(n.level, n.title or "", n.purpose) for n in path],
        siblings=[t or "" for t in siblings],
        key_points=list(node.key_points or []),
        children_level=children[0].level if children else "section",
        children=len(children),
        child_words=round(sum(c.budget_words for c in children) / max(1, len(children))),
        avoid=[t for t in avoid if t],
        source_opening=source,
        passages=passages,
    )
