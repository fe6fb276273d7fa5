"""A job's Merkle tree in the database: its interior nodes (``audit_nodes``, written with the events
that complete them), and RFC 9162 proofs read from them: each proof reads the O(log n) hashes it
folds (``core.merkle.needed``), in two indexed queries, whatever the log's size.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core import merkle
from core.merkle import Node

_NODE_COLUMNS = "COPY audit_nodes (job_id, level, idx, hash) FROM STDIN"


async def write_nodes(session: AsyncSession, job_id: uuid.UUID, nodes: Iterable[tuple[Node, bytes]]) -> None:
    """Store interior nodes (level >= 1) by COPY on the transaction's connection."""
    rows = list(nodes)
    if not rows:
        return
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    async with raw.cursor() as cur, cur.copy(_NODE_COLUMNS) as copy:
        for (level, idx), h in rows:
            await copy.write_row((job_id, level, idx, h))


class NodeReads:
    """What proofs read, counted (the benchmark's "rows read")."""

    rows = 0


async def read_nodes(
    session: AsyncSession, job_id: uuid.UUID, wanted: Iterable[Node], fresh: Mapping[Node, bytes] | None = None
) -> dict[Node, bytes]:
    """The hashes of the perfect subtrees ``wanted`` (level 0: leaf hashes of events), from
    ``fresh`` (nodes not yet stored) or the database. KeyError naming a node the log lacks."""
    fresh = fresh or {}
    out = {n: fresh[n] for n in wanted if n in fresh}
    leaves = sorted(idx + 1 for level, idx in wanted if level == 0 and (level, idx) not in out)
    inner = [(level, idx) for level, idx in wanted if level > 0 and (level, idx) not in out]
    if leaves:
        rows = await session.execute(
            text("SELECT seq, hash FROM audit_events WHERE job_id = :j AND seq = ANY(:s)"), {"j": job_id, "s": leaves}
        )
        for seq, h in rows:
            out[(0, seq - 1)] = merkle.leaf_hash(merkle.leaf_entry(h))
            NodeReads.rows += 1
    if inner:
        rows = await session.execute(
            text(
                "SELECT level, idx, hash FROM audit_nodes WHERE job_id = :j AND (level, idx) IN "
                "(SELECT * FROM unnest(CAST(:l AS smallint[]), CAST(:i AS bigint[])))"
            ),
            {"j": job_id, "l": [n[0] for n in inner], "i": [n[1] for n in inner]},
        )
        for level, idx, h in rows:
            out[(level, idx)] = bytes(h)
            NodeReads.rows += 1
    missing = [n for n in wanted if n not in out]
    if missing:
        raise KeyError(f"the log's tree lacks node {missing[0]} (level, index): it was not stored")
    return out


async def inclusion_proof(session: AsyncSession, job_id: uuid.UUID, index: int, size: int) -> list[bytes]:
    ranges = merkle.inclusion_ranges(index, size)
    return merkle.inclusion_proof(index, size, await read_nodes(session, job_id, merkle.needed(ranges)))


async def consistency_proof(
    session: AsyncSession, job_id: uuid.UUID, old: int, new: int, fresh: Mapping[Node, bytes] | None = None
) -> list[bytes]:
    if old == 0 or old == new:
        return []
    ranges = merkle.consistency_ranges(old, new)
    return merkle.consistency_proof(old, new, await read_nodes(session, job_id, merkle.needed(ranges), fresh))


async def root(session: AsyncSession, job_id: uuid.UUID, size: int, fresh: Mapping[Node, bytes] | None = None) -> bytes:
    """The root of the tree of ``size`` leaves, from stored nodes (O(log n) reads)."""
    if size == 0:
        return merkle.EMPTY_ROOT
    nodes = await read_nodes(session, job_id, merkle.needed([(0, size)]), fresh)
    return merkle.range_hash(0, size, nodes)
