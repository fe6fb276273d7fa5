"""A job's numbers, read by finalize, the webhook, the job page and the coherence report alike:
what its words are made of (``word_account``) and its coherence in numbers (``coherence_counts``)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.continuity import ReportInput, report
from core.length import WordAccount
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, LedgerEntry, SeamCheck
from db.models import Document

_CUT_BY_RULE = text(
    "SELECT c->>'rule' AS rule, sum((c->>'words')::int) AS words FROM chunk_attempts a, "
    "jsonb_array_elements(a.cuts) c WHERE a.job_id = :j GROUP BY 1"
)
_SHORT_CHUNKS = text(
    "SELECT count(*) FROM chunks c JOIN LATERAL (SELECT l.passed FROM length_checks l WHERE l.chunk_id = c.id "
    "AND l.scope = 'chunk' ORDER BY l.round DESC LIMIT 1) last ON true "
    "WHERE c.job_id = :j AND c.status = 'done' AND NOT last.passed"
)
_TOP_UPS = text(
    "SELECT count(DISTINCT n.id), coalesce(sum(c.word_count), 0) FROM plan_nodes n "
    "LEFT JOIN chunks c ON c.section_id = n.id AND c.status = 'done' WHERE n.job_id = :j AND n.is_continuation"
)


async def word_account(session: AsyncSession, job_id: uuid.UUID) -> WordAccount:
    """The job's ``WordAccount``, from its chunk attempts, length checks and top-up sections."""
    p = {"j": job_id}
    model = (
        await session.execute(text("SELECT coalesce(sum(words_model), 0) FROM chunk_attempts WHERE job_id = :j"), p)
    ).scalar_one()
    by_rule = {r.rule: int(r.words) for r in (await session.execute(_CUT_BY_RULE, p)).all() if r.words}
    short = (await session.execute(_SHORT_CHUNKS, p)).scalar_one()
    rounds, top_up_words = (await session.execute(_TOP_UPS, p)).one()
    return WordAccount(
        words_model=int(model),
        words_cut=sum(by_rule.values()),
        cut_by_rule=by_rule,
        chunks_short=int(short),
        top_up_rounds=int(rounds),
        top_up_words=int(top_up_words),
    )


async def coherence_counts(s: AsyncSession, job_id: uuid.UUID, words_written: int) -> dict[str, Any]:
    """A job's coherence in numbers (``core.continuity.report``, without the findings' list): the
    report, the job page, the final audit event and the webhook all read it."""
    findings = [
        {"category": c, "severity": sev, "status": st}
        for c, sev, st in (
            await s.execute(
                select(ContinuityFinding.category, ContinuityFinding.severity, ContinuityFinding.status).where(
                    ContinuityFinding.job_id == job_id
                )
            )
        ).all()
    ]
    words = (
        await s.execute(
            select(Document.word_count)
            .where(Document.job_id == job_id, Document.role.in_(["output", "partial"]))
            .order_by(Document.role.desc(), Document.version.desc())
            .limit(1)
        )
    ).scalar_one_or_none() or words_written
    live = (
        select(LedgerEntry.kind, LedgerEntry.key)
        .outerjoin(Chunk, Chunk.id == LedgerEntry.chunk_id)
        .where(
            LedgerEntry.job_id == job_id,
            (LedgerEntry.chunk_id.is_(None)) | (LedgerEntry.chunk_version_id == Chunk.memory_version_id),
        )
        .subquery()
    )
    entries, entities = (
        await s.execute(
            select(
                func.count(),
                func.count(func.distinct(live.c.key)).filter(live.c.kind.in_(["entity", "attribute"])),
            ).select_from(live)
        )
    ).one()
    states = dict(
        (
            await s.execute(
                select(CoherenceState.source, func.count())
                .where(CoherenceState.job_id == job_id, CoherenceState.kind == "chunk")
                .group_by(CoherenceState.source)
            )
        ).all()
    )
    seams = dict(
        (
            await s.execute(
                select(SeamCheck.status, func.count()).where(SeamCheck.job_id == job_id).group_by(SeamCheck.status)
            )
        ).all()
    )
    return report(ReportInput(int(words or 0), findings, int(entries), int(entities), states, seams))
