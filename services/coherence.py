"""A job's coherence report: its continuity findings with their evidence (the chunk and version
where each was found, the ledger entry and quote it contradicts, the model call and the audit
event that found it, the repair, or what was tried), counted per 10,000 words by category; the
ledger's size; the share of memory states the model wrote vs the fallback; the seams by status;
what went unchecked; and in words what was checked and which model judged (``core.coherence``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, cast, select

from core.coherence import summary_line
from core.continuity import BROKEN_SEAM
from core.memory import CATEGORY_NAMES
from db.counts import coherence_counts
from db.coverage import coverage_counts
from db.manuscript import Chunk, ChunkVersion, ContinuityFinding, PlanNode
from db.models import AuditEvent, Job
from db.session import Database


async def coherence(db: Database, job: Job) -> dict[str, Any]:
    """The report (``core.coherence.report``) with every finding and its evidence links."""
    async with db.tx() as s:
        rep = await coherence_counts(s, job.id, job.words_written)
        # Instructions and key points: each item's last verdict (covered, missing: a finding, unchecked).
        rep["coverage"] = await coverage_counts(s, job.id)
        rows = (
            await s.execute(
                select(ContinuityFinding, Chunk.ordinal, Chunk.unit_id, ChunkVersion.version)
                .join(Chunk, Chunk.id == ContinuityFinding.chunk_id)
                .outerjoin(ChunkVersion, ChunkVersion.id == ContinuityFinding.chunk_version_id)
                .where(ContinuityFinding.job_id == job.id)
                .order_by(Chunk.ordinal, ContinuityFinding.id)
            )
        ).all()
        repairs = dict(
            (
                await s.execute(
                    select(ChunkVersion.id, ChunkVersion.version).where(
                        ChunkVersion.id.in_([f.repair_version_id for f, *_ in rows if f.repair_version_id])
                    )
                )
            ).all()
        )
        seqs = dict(
            (
                await s.execute(
                    select(cast(AuditEvent.data["finding"].astext, Integer), AuditEvent.seq).where(
                        AuditEvent.job_id == job.id, AuditEvent.kind == "continuity"
                    )
                )
            ).all()
        )
        units = dict(
            (
                await s.execute(
                    select(PlanNode.id, PlanNode.title).where(
                        PlanNode.id.in_({u for *_, u, _v in rows if u is not None})
                    )
                )
            ).all()
        )
    rep["items"] = [
        {
            "id": f.id,
            "category": f.category,
            "category_name": CATEGORY_NAMES.get(f.category, f.category),
            "subtype": f.subtype,
            "severity": f.severity,
            "status": f.status,
            "detector": f.detector,
            "message": f.message,
            # A broken seam (the stitch's) is between this chunk and the next, inside their chapter.
            "where": "seam" if f.seam_check_id or f.subtype == BROKEN_SEAM else "chunk",
            "chunk": ordinal,
            "chapter": units.get(unit_id),
            "version": version,
            "quote": f.quote,
            "contradicts": {
                "entry_id": f.entry_id,
                "chunk": f.doc_order_there if f.doc_order_there is not None and f.doc_order_there >= 0 else None,
                "quote": f.quote_there,
            },
            "repair_version": repairs.get(f.repair_version_id) if f.repair_version_id else None,
            "tried": f.tried or None,
            "llm_call_id": f.llm_call_id,
            "audit_seq": seqs.get(f.id),
            "seam_check_id": f.seam_check_id,
            "edit": f.edit_id,
        }
        for f, ordinal, unit_id, version in rows
    ]
    # Its own kind: a later passage that relied on what an author's edit changed (read it again).
    rep["relied_on_changed"] = sum(1 for f, *_ in rows if f.subtype == "relied_on_changed" and f.status == "open")
    rep["job_id"] = str(job.id)
    rep["summary"] = summary_line(rep)
    return rep
