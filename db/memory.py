"""The story memory's rows: the ledger as a chunk sees it (document order: only what comes before
it, and never a value a chunk stated against what was established while that finding is open),
the book so far in summaries, a passage's delta and findings written, and a job's coherence in
numbers. ``activities/memory.py`` asks the model; ``core/memory.py`` is what the rows mean."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BigInteger, Text, and_, cast, exists, func, literal, null, or_, select, text, union_all

from core.continuity import Finding
from core.memory import ChunkMemory, Entry, Ledger, NewEntry, entries_of, fold
from core.recall import Summary
from core.repair import MEMORY_SUBTYPES
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, LedgerEntry, NodeSummary, PlanNode
from db.session import JobTx

# A value a chunk stated against what was established, while the finding that says so is open:
# not part of the ledger (what was established stays the latest value, for the prompts and the
# checks after it); the finding reports it.
_DISPUTED = exists().where(
    ContinuityFinding.chunk_id == LedgerEntry.chunk_id,
    ContinuityFinding.quote == LedgerEntry.quote,
    ContinuityFinding.status == "open",
    ContinuityFinding.severity == "major",
    ContinuityFinding.subtype.in_(sorted(MEMORY_SUBTYPES)),
)


async def ledger_before(tx: JobTx, doc_order: int) -> Ledger:
    """The ledger as a chunk at ``doc_order`` sees it: the plan's entries and those of the
    current memory version of every chunk before it in the document (never a later one's,
    whatever the clock says), without the values an open finding says contradict it."""
    rows = (
        await tx.session.execute(
            select(
                LedgerEntry.id,
                LedgerEntry.kind,
                LedgerEntry.key,
                LedgerEntry.name,
                LedgerEntry.value,
                LedgerEntry.quote,
                LedgerEntry.doc_order,
                LedgerEntry.attribute,
                LedgerEntry.etype,
                LedgerEntry.when_,
                LedgerEntry.chunk_version_id,
                LedgerEntry.source,
            )
            .outerjoin(Chunk, Chunk.id == LedgerEntry.chunk_id)
            .where(
                LedgerEntry.job_id == tx.job_id,
                LedgerEntry.doc_order < doc_order,
                or_(LedgerEntry.chunk_id.is_(None), LedgerEntry.chunk_version_id == Chunk.memory_version_id),
                ~and_(LedgerEntry.kind == "attribute", _DISPUTED),
            )
        )
    ).all()
    return fold(
        Entry(
            id=r.id,
            kind=r.kind,
            key=r.key,
            name=r.name,
            value=r.value,
            quote=r.quote,
            doc_order=r.doc_order,
            attribute=r.attribute,
            etype=r.etype,
            when=r.when_,
            chunk_version_id=r.chunk_version_id,
            source=r.source,
        )
        for r in rows
    )


async def summaries_before(tx: JobTx, chunk: Chunk, path: list[PlanNode] | None = None) -> list[Summary]:
    """The book before a chunk, one line per stretch at the coarsest level that covers it,
    oldest first: earlier parts, then earlier chapters of this part (or of the book), each by its
    summary or, not written yet (a chapter still being written in parallel), its plan synopsis;
    then the chunks before it in its own chapter, by their states' summaries. ``path``: the plan
    nodes above the chunk's section and the section, outermost first (``plan_path``), when the
    caller has read them."""
    chain: list[PlanNode] = []  # the unit and the nodes above it, up to the book (excluded)
    if path is not None:
        ids = [n.id for n in path]
        chain = list(reversed(path[: ids.index(chunk.unit_id) + 1])) if chunk.unit_id in ids else []
    elif chunk.unit_id:
        cur = await tx.session.get(PlanNode, chunk.unit_id)
        while cur is not None and cur.level != "book":
            chain.append(cur)
            cur = await tx.session.get(PlanNode, cur.parent_id) if cur.parent_id else None
    # The chunks before it in its chapter (after the unit's first chunk), by their states' summaries.
    first = select(func.min(Chunk.ordinal)).where(Chunk.unit_id == chunk.unit_id).scalar_subquery()
    q = select(
        literal(1).label("k"),
        literal(0).label("a"),
        CoherenceState.ordinal.label("b"),
        cast(null(), BigInteger).label("node"),
        literal("chunk").label("level"),
        cast(null(), Text).label("title"),
        cast(null(), Text).label("purpose"),
        cast(null(), BigInteger).label("summary_id"),
        CoherenceState.summary.label("summary"),
    ).where(
        CoherenceState.job_id == tx.job_id,
        CoherenceState.kind == "chunk",
        CoherenceState.ordinal > func.coalesce(first, chunk.ordinal),
        CoherenceState.ordinal <= chunk.ordinal,
    )
    if chain:  # and before them, every level above in the same statement: earlier parts, then chapters
        latest = (
            select(NodeSummary.node_id, func.max(NodeSummary.version).label("v"))
            .where(NodeSummary.job_id == tx.job_id)
            .group_by(NodeSummary.node_id)
            .subquery()
        )
        nodes = (
            select(literal(0), PlanNode.depth, PlanNode.position, PlanNode.id, PlanNode.level, PlanNode.title)
            .add_columns(PlanNode.purpose, NodeSummary.id, NodeSummary.summary)
            .outerjoin(latest, latest.c.node_id == PlanNode.id)
            .outerjoin(NodeSummary, and_(NodeSummary.node_id == PlanNode.id, NodeSummary.version == latest.c.v))
            .where(
                PlanNode.job_id == tx.job_id,
                PlanNode.is_continuation.is_(False),
                or_(*[and_(PlanNode.parent_id == n.parent_id, PlanNode.position < n.position) for n in chain]),
            )
        )
        q = union_all(nodes, q)  # type: ignore[assignment]
    rows = (await tx.session.execute(q.order_by(text("1, 2, 3")))).all()
    out: list[Summary] = []
    for k, _, ordinal, nid, level, title, purpose, sid, summary in rows:
        if k == 0:
            out.append(Summary(level, title or "", summary or purpose or "", nid, sid, planned=summary is None))
        elif summary:
            out.append(Summary("chunk", "", summary, ordinal - 1))
    return out


def ledger_rows(
    tx: JobTx, entries: Sequence[NewEntry], *, chunk: Chunk, version_id: int, state_id: int | None, source: str
) -> list[LedgerEntry]:
    rows = [
        LedgerEntry(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            chunk_version_id=version_id,
            state_id=state_id,
            doc_order=chunk.ordinal,
            kind=e.kind,
            key=e.key,
            name=e.name[:300],
            attribute=e.attribute,
            value=e.value[:1000],
            quote=e.quote[:1000],
            etype=e.etype,
            when_=e.when,
            source=source,
        )
        for e in entries
    ]
    tx.session.add_all(rows)
    return rows


async def store_memory(
    tx: JobTx, chunk: Chunk, version_id: int, state_id: int | None, memory: ChunkMemory, source: str
) -> list[LedgerEntry]:
    """A version's delta into the ledger, made the chunk's current memory."""
    rows = ledger_rows(tx, entries_of(memory), chunk=chunk, version_id=version_id, state_id=state_id, source=source)
    chunk.memory_version_id = version_id
    await tx.session.flush()
    return rows


def finding_rows(
    tx: JobTx,
    findings: Sequence[tuple[Finding, bool]],
    *,
    chunk: Chunk,
    version_id: int,
    repair_version_id: int | None,
    call_id: int | None,
    rounds: int,
    seam_check_id: int | None = None,
    edit_id: int | None = None,
) -> list[ContinuityFinding]:
    """Each (finding, repaired?) as a row: ``repaired`` only with the version that repaired it
    (``core.repair`` decided, on the evidence), else ``open`` with what was tried."""
    rows = [
        ContinuityFinding(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            chunk_version_id=version_id,
            seam_check_id=seam_check_id,
            category=f.category,
            subtype=f.subtype,
            severity=f.severity,
            detector=f.detector,
            message=f.message[:1000],
            quote=f.quote[:1000],
            entry_id=f.entry_id,
            quote_there=(f.quote_there or "")[:1000],
            doc_order_there=f.doc_order_there,
            llm_call_id=call_id if f.detector == "judge" else None,
            status="repaired" if repaired and repair_version_id else "open",
            repair_version_id=repair_version_id if repaired else None,
            repair_attempts=rounds,
            tried="" if repaired and repair_version_id else f.tried[:1000],
            edit_id=edit_id,
        )
        for f, repaired in findings
    ]
    tx.session.add_all(rows)
    return rows


def finding_events(tx: JobTx, rows: Sequence[ContinuityFinding], chunk: Chunk, where: str) -> None:
    """One ``continuity`` event per finding (its id: the report links a finding to its seq)."""
    for r in rows:
        tx.event(
            "continuity",
            "repaired" if r.status == "repaired" else "found",
            {
                "finding": r.id,
                "where": where,
                "chunk": chunk.ordinal,
                "category": r.category,
                "subtype": r.subtype,
                "severity": r.severity,
                "detector": r.detector,
                "message": r.message,
                "quote": r.quote,
                "quote_there": r.quote_there,
                "entry": r.entry_id,
                "version": r.chunk_version_id,
                "repair_version": r.repair_version_id,
                "llm_call_id": r.llm_call_id,
                **({"tried": r.tried} if r.tried else {}),
            },
        )
