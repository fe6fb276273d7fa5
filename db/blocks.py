"""The document as the manuscript's tables hold it: its nodes in document order, each with its chunks'
latest versions, as ``core.layout`` blocks. Read by the steps that assemble it (finalize, an
edit's recheck) and by the job page's draft (``services.views``)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from core.layout import Block
from db.manuscript import Chunk, ChunkVersion, PlanNode
from db.models import Job


async def document_blocks(session: AsyncSession, job: Job, *, committed_only: bool = False) -> list[Block]:
    """The document's nodes in document order, each with its heading and its chunks' latest
    versions; a chunk not yet committed gives its working text, or nothing when ``committed_only``
    (the draft the job page shows while the job runs). ``core.layout`` makes them the document."""
    nodes = (
        (await session.execute(select(PlanNode).where(PlanNode.job_id == job.id).order_by(PlanNode.position)))
        .scalars()
        .all()
    )
    latest = (
        select(ChunkVersion.chunk_id, ChunkVersion.text)
        .where(ChunkVersion.job_id == job.id)
        .ext(distinct_on(ChunkVersion.chunk_id))
        .order_by(ChunkVersion.chunk_id, ChunkVersion.version.desc())
        .subquery()
    )
    chunks = select(Chunk.section_id, Chunk.ordinal, func.coalesce(latest.c.text, Chunk.text)).where(
        Chunk.job_id == job.id
    )
    if committed_only:
        chunks = chunks.join(latest, latest.c.chunk_id == Chunk.id)
    else:
        chunks = chunks.outerjoin(latest, latest.c.chunk_id == Chunk.id)
    texts: dict[int, list[str]] = {}
    ordinals: dict[int, list[int]] = {}
    for sid, ordinal, text in (await session.execute(chunks.order_by(Chunk.ordinal))).all():
        texts.setdefault(sid, []).append(text or "")
        ordinals.setdefault(sid, []).append(ordinal)
    return [
        Block(
            n.depth + 1,
            None if n.is_continuation else n.title,
            texts.get(n.id, []),
            node=n.id,
            chunks=tuple(ordinals.get(n.id, ())),
        )
        for n in nodes
        if n.level != "book"
    ]
