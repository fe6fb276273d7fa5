"""Reads of the plan tree that the author's loop shares (the review, the edits, the API's checks):
the chunks under a node and their text, its neighbours in document order, the lock that covers it,
the outline a review shows and the plan's latest version."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.loop import PlanVersion
from db.manuscript import Chunk, ChunkVersion, PlanNode
from db.session import JobTx


async def nodes_under(s: AsyncSession, node: PlanNode) -> list[PlanNode]:
    """The node and every node below it (the tree's positions are document order: a node's
    descendants are the nodes after it up to the next node at its depth or above)."""
    rows = (
        (
            await s.execute(
                select(PlanNode)
                .where(PlanNode.job_id == node.job_id, PlanNode.position >= node.position)
                .order_by(PlanNode.position)
            )
        )
        .scalars()
        .all()
    )
    out = [node]
    for n in rows[1:]:
        if n.depth <= node.depth:
            break
        out.append(n)
    return out


async def chunks_under(s: AsyncSession, node: PlanNode) -> list[Chunk]:
    """The chunks of a node, in order."""
    ids = [n.id for n in await nodes_under(s, node)]
    return list(
        (await s.execute(select(Chunk).where(Chunk.section_id.in_(ids)).order_by(Chunk.ordinal))).scalars().all()
    )


async def latest_text(s: AsyncSession, chunk_id: int) -> str:
    """A chunk's text as it now reads: its latest version's (empty before it has one)."""
    text = (
        await s.execute(
            select(ChunkVersion.text)
            .where(ChunkVersion.chunk_id == chunk_id)
            .order_by(ChunkVersion.version.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return text or ""


async def ancestors(s: AsyncSession, node: PlanNode) -> list[PlanNode]:
    """The nodes above a node, nearest first (the book last)."""
    out: list[PlanNode] = []
    cur = await s.get(PlanNode, node.parent_id) if node.parent_id else None
    while cur is not None:
        out.append(cur)
        cur = await s.get(PlanNode, cur.parent_id) if cur.parent_id else None
    return out


async def lock_over(s: AsyncSession, node: PlanNode) -> PlanNode | None:
    """The locked node that covers ``node`` (itself, a node above it, or one inside it), if any:
    regenerating or repairing ``node`` would touch it."""
    for n in [node, *await ancestors(s, node), *(await nodes_under(s, node))[1:]]:
        if n.locked_at is not None:
            return n
    return None


async def next_node(s: AsyncSession, node: PlanNode) -> PlanNode | None:
    """The node after ``node`` at its level, in document order (its successor at a seam)."""
    return (
        await s.execute(
            select(PlanNode)
            .where(PlanNode.job_id == node.job_id, PlanNode.level == node.level, PlanNode.position > node.position)
            .order_by(PlanNode.position)
            .limit(1)
        )
    ).scalar_one_or_none()


def lock_message(locked: PlanNode, asked: PlanNode) -> str:
    """What a refusal because of a lock says: which node is locked, by whom, since when."""
    what = "is locked" if locked.id == asked.id else f"is under lock: {locked.level} {locked.id} '{locked.title}'"
    when = locked.locked_at.isoformat() if locked.locked_at else ""
    return (
        f"{asked.level} {asked.id} '{asked.title}' {what} (locked by {locked.locked_by} at {when}): "
        f"unlock it first: `quire unlock {locked.job_id} {locked.id}` "
        f"(DELETE /v1/jobs/{locked.job_id}/nodes/{locked.id}/lock)"
    )


async def outline(s: AsyncSession, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's top-level nodes in order, as a review shows and edits them."""
    nodes = (
        await s.execute(
            select(PlanNode)
            .where(PlanNode.job_id == job_id, PlanNode.depth == 1, PlanNode.is_continuation.is_(False))
            .order_by(PlanNode.position)
        )
    ).scalars()
    return [
        {
            "node": n.id,
            "level": n.level,
            "title": n.title or "",
            "summary": n.purpose,
            "key_points": list(n.key_points or []),
            "budget_words": n.budget_words,
        }
        for n in nodes
    ]


async def latest_version(tx: JobTx) -> PlanVersion | None:
    return (
        await tx.session.execute(
            select(PlanVersion).where(PlanVersion.job_id == tx.job_id).order_by(PlanVersion.version.desc()).limit(1)
        )
    ).scalar_one_or_none()
