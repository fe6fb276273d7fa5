"""A job's numbers, read by finalize, the webhook, the job page and the coherence report alike:
what its words are made of (``word_account``: its attempts' words, its repairs' and bridges'
among them, what was cut of them, what was trimmed to a length) and its coherence in numbers
(``coherence_counts``: what was found, repaired, left open, unchecked, and by which model)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.coherence import ReportInput, report
from core.length import WordAccount
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, LedgerEntry, SeamCheck
from db.models import Document, LlmCall

# A job's cuts: its attempts' (every model answer for the document, repairs and bridges too) and,
# in jobs written before those were attempts, the cuts their versions recorded (``detail.gate``).
_CUT_BY_RULE = text(
    "SELECT c->>'rule' AS rule, sum((c->>'words')::int) AS words FROM ("
    "SELECT a.cuts AS cuts FROM chunk_attempts a WHERE a.job_id = :j UNION ALL "
    "SELECT v.detail->'gate'->'cuts' FROM chunk_versions v WHERE v.job_id = :j AND v.detail ? 'gate'"
    ") x, jsonb_array_elements(x.cuts) c GROUP BY 1"
)
_WORDS_MODEL = text(
    "SELECT (SELECT coalesce(sum(words_model), 0) FROM chunk_attempts WHERE job_id = :j) + "
    "(SELECT coalesce(sum((detail->'gate'->>'words_model')::int), 0) FROM chunk_versions "
    "WHERE job_id = :j AND detail ? 'gate')"
)
# A chunk's last length check, the one recorded last: its last attempt's, or its last version's
# after a repair, the stitch or an edit (``activities.base.check_version_length``, negative rounds).
_SHORT_CHUNKS = text(
    "SELECT count(*) FROM chunks c JOIN LATERAL (SELECT l.passed FROM length_checks l WHERE l.chunk_id = c.id "
    "AND l.scope = 'chunk' ORDER BY l.id DESC LIMIT 1) last ON true "
    "WHERE c.job_id = :j AND c.status = 'done' AND NOT last.passed"
)
_CHUNK_TRIMS = text(
    "SELECT coalesce(sum((detail->>'words_removed')::int), 0) FROM chunk_versions WHERE job_id = :j AND reason = 'trim'"
)
# Finalize's cut of the document's end, in its final length event (one job has one at most).
_FINAL_TRIM = text(
    "SELECT data->'trimmed' FROM audit_events WHERE job_id = :j AND kind = 'length' AND data ? 'trimmed' "
    "ORDER BY seq DESC LIMIT 1"
)
_TOP_UPS = text(
    "SELECT count(DISTINCT n.id), coalesce(sum(c.word_count), 0) FROM plan_nodes n "
    "LEFT JOIN chunks c ON c.section_id = n.id AND c.status = 'done' WHERE n.job_id = :j AND n.is_continuation"
)


async def word_account(session: AsyncSession, job_id: uuid.UUID) -> WordAccount:
    """The job's ``WordAccount``, from its chunk attempts (every model answer for the document),
    length checks, top-up sections, trimmed versions and finalize's trim (its length event)."""
    p = {"j": job_id}
    trimmed = (await session.execute(_CHUNK_TRIMS, p)).scalar_one()
    final_trim = (await session.execute(_FINAL_TRIM, p)).scalar_one_or_none()
    model = (await session.execute(_WORDS_MODEL, p)).scalar_one()
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
        trimmed_words=int(trimmed),
    ).with_trim(final_trim)


async def coherence_counts(s: AsyncSession, job_id: uuid.UUID, words_written: int) -> dict[str, Any]:
    """A job's coherence in numbers (``core.coherence.report``, without the findings' list): the
    report, the job page, the final audit event and the webhook all read it."""
    findings = [
        {"category": c, "subtype": sub, "severity": sev, "status": st}
        for c, sub, sev, st in (
            await s.execute(
                select(
                    ContinuityFinding.category,
                    ContinuityFinding.subtype,
                    ContinuityFinding.severity,
                    ContinuityFinding.status,
                ).where(ContinuityFinding.job_id == job_id)
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
    why = func.coalesce(CoherenceState.delta["why_fallback"].astext, "no model answer")
    unchecked = dict(
        (
            await s.execute(
                select(why, func.count())
                .where(
                    CoherenceState.job_id == job_id,
                    CoherenceState.kind == "chunk",
                    CoherenceState.source == "fallback",
                )
                .group_by(why)
            )
        ).all()
    )
    seams_unchecked = dict(
        (
            await s.execute(
                select(SeamCheck.unchecked_reason, func.count())
                .where(SeamCheck.job_id == job_id, SeamCheck.status == "unchecked")
                .group_by(SeamCheck.unchecked_reason)
            )
        ).all()
    )
    judges = (
        await s.execute(
            select(LlmCall.model)
            .where(LlmCall.job_id == job_id, LlmCall.purpose.in_(["memory", "judge"]), LlmCall.status == "ok")
            .distinct()
            .order_by(LlmCall.model)
        )
    ).scalars()
    counts = ReportInput(int(words or 0), findings, int(entries), int(entities), states, seams)
    return report(replace(counts, unchecked=unchecked, seams_unchecked=seams_unchecked, judges=list(judges)))
