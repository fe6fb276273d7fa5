"""The coverage checks: whether a node's text carries each instruction its author gave (a
regenerate, a selection rewrite) and each key point added in plan review, as a rule or the judge
found it (``core.coverage``), one row per item and round (0: the first check, 1: after the one
retry), and the counts the coherence report shows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, Integer, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB, distinct_on
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.coverage import DETECTORS, SOURCES, VERDICTS
from core.spec import sql_in
from db.models import Base, ts_column


class CoverageCheck(Base):
    """One item checked against a node's text: its verdict, the quote that carries it (covered),
    why (missing), the judge's calls, and the finding a missing item made (its last round)."""

    __tablename__ = "coverage_checks"
    __table_args__ = (
        CheckConstraint(sql_in("source", SOURCES), name="source"),
        CheckConstraint(sql_in("verdict", VERDICTS), name="verdict"),
        CheckConstraint(sql_in("detector", DETECTORS), name="detector"),
        CheckConstraint("round >= 0", name="round"),
        CheckConstraint("verdict <> 'covered' OR quote <> ''", name="covered_has_quote"),
        Index("ix_coverage_checks_job_id", "job_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer, server_default="0")
    source: Mapped[str] = mapped_column(Text)
    item: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(Text)
    detector: Mapped[str] = mapped_column(Text)
    quote: Mapped[str] = mapped_column(Text, server_default="")
    why: Mapped[str] = mapped_column(Text, server_default="")
    llm_call_ids: Mapped[list[int]] = mapped_column(JSONB, server_default="[]")
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("continuity_findings.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = ts_column(default=True)


async def coverage_counts(s: AsyncSession, job_id: uuid.UUID) -> dict[str, Any]:
    """Each item's last verdict (per node, edit and item), counted: checked, covered, missing,
    unchecked (the coherence report's ``coverage``)."""
    last = (
        select(CoverageCheck.verdict)
        .where(CoverageCheck.job_id == job_id)
        .ext(distinct_on(CoverageCheck.node_id, CoverageCheck.edit_id, CoverageCheck.source, CoverageCheck.item))
        .order_by(
            CoverageCheck.node_id,
            CoverageCheck.edit_id,
            CoverageCheck.source,
            CoverageCheck.item,
            CoverageCheck.round.desc(),
            CoverageCheck.id.desc(),
        )
        .subquery()
    )
    rows = dict((await s.execute(select(last.c.verdict, func.count()).group_by(last.c.verdict))).all())
    return {"checked": sum(rows.values()), **{v: int(rows.get(v, 0)) for v in VERDICTS}}
