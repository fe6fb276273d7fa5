"""Which chunks are locked: under a node an author locked (its section, chapter, part or the book).
A locked chunk is checked and never repaired: by the seam step, the stitch, an edit's checks."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_LOCKED = text(
    "WITH RECURSIVE up(chunk_id, node_id) AS ("
    " SELECT c.id, c.section_id FROM chunks c WHERE c.id = ANY(CAST(:ids AS bigint[]))"
    " UNION ALL SELECT up.chunk_id, n.parent_id FROM up JOIN plan_nodes n ON n.id = up.node_id"
    " WHERE n.parent_id IS NOT NULL)"
    " SELECT DISTINCT up.chunk_id FROM up JOIN plan_nodes n ON n.id = up.node_id WHERE n.locked_at IS NOT NULL"
)


async def locked_chunks(s: AsyncSession, chunk_ids: list[int]) -> set[int]:
    """Those of ``chunk_ids`` under a locked node (their section, chapter, part or the book)."""
    if not chunk_ids:
        return set()
    return set((await s.execute(_LOCKED, {"ids": chunk_ids})).scalars())
