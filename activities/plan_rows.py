"""The plan's rows: the whole tree laid out in document order (every node, every chunk with its
unit and budget), a planned item applied to its node, each chunk's own brief, what a node's
children are planned from, and the plan's result for the workflow. ``activities/plan.py`` asks the
model; ``activities/review.py`` lays out an approved outline with the same ``lay_out``."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.base import job_options
from activities.contracts import PlanResult
from activities.prompts import NodeBrief
from core.layout import NodePlan, tree_levels, unit_level
from core.plan import PlanItem, distinct_title, heading_key, passage_briefs
from db.manuscript import Chunk, LengthCheck, PlanNode
from db.models import Job
from db.session import JobTx

SOURCE_OPENING_WORDS = 250


def apply_item(node: PlanNode, item: PlanItem, taken: set[str], context: str | None) -> None:
    """A planned item onto its node: the title (the input's own heading, for rewrites, wins),
    made distinct from every heading the job has; purpose, key points, entities."""
    if node.heading_key is None:
        node.title = distinct_title(node.title or item.title, taken, context)
        node.heading_key = heading_key(node.title)
    node.purpose = item.summary[:2000]
    node.key_points = item.key_points
    node.introduces = item.introduces
    node.relies_on = item.relies_on


async def lay_out(session: AsyncSession, jid: uuid.UUID, tree: NodePlan, top: list[PlanItem]) -> list[PlanNode]:
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
            apply_item(node, top[ordinal], taken, None)
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


async def brief_chunks(tx: JobTx, section: PlanNode) -> None:
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


async def plan_result(tx: JobTx, job: Job) -> PlanResult:
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


async def children_of(tx: JobTx, node_id: int) -> list[PlanNode]:
    return list(
        (await tx.session.execute(select(PlanNode).where(PlanNode.parent_id == node_id).order_by(PlanNode.ordinal)))
        .scalars()
        .all()
    )


async def brief_of(tx: JobTx, job: Job, node: PlanNode) -> NodeBrief:
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
    children = await children_of(tx, node.id)
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
