"""Estimates (``core.estimate``) from what is stored: the plan's shape for a job spec, and the
history of the model on finished jobs (the user's own first, else everyone's: calls and tokens by
kind, shapes, wall times, and the model's compliance from their stored attempts); and, for a job
that has run, its estimate beside what it actually used."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.estimate import CHAT, LOCAL, Measured, Profile, Shape, estimate, shape_of
from core.layout import generate_tree, planned_words, rewrite_tree
from core.length import compliance
from core.spec import JobOptions, JobSpec
from db.loop import clock_start
from db.manuscript import Chunk, ChunkAttempt, PlanNode
from db.models import Document, Job, LlmCall
from db.session import Database
from services.config import Settings

HISTORY_JOBS = 10  # the most recent finished jobs of the model an estimate learns from
PURPOSE = case((LlmCall.request_key.like("expand:%"), "expand"), else_=LlmCall.purpose)


def spec_shape(spec: JobSpec) -> Shape:
    total = planned_words(spec.target_words, spec.max_words)
    o = spec.options
    tree = (
        rewrite_tree(spec.input_text, total, o.chunk_words) if spec.input_text else generate_tree(total, o.chunk_words)
    )
    return shape_of(tree, o.chunk_words, o.parallelism, rewrite=bool(spec.input_text))


def profile_of(settings: Settings) -> Profile:
    """The defaults for a model with no history: the local model's when this deployment serves it."""
    return LOCAL if settings.uses_local_model else CHAT


async def for_spec(
    db: Database, settings: Settings, user_id: int, spec: JobSpec, before: dt.datetime | None = None
) -> dict[str, Any]:
    """The estimate of a job of ``spec`` for this user, from the history before ``before`` (now)."""
    model = spec.model or settings.quire_model
    async with db.tx() as s:
        jobs = await _history_jobs(s, model, before, user_id)
        whose = "your"
        if not jobs:
            jobs, whose = await _history_jobs(s, model, before, None), "all users'"
        history = [await measured(s, j) for j in jobs]
        rows = (
            await s.execute(
                select(ChunkAttempt.words_asked, ChunkAttempt.words_added).where(
                    ChunkAttempt.job_id.in_([j.id for j in jobs]), ChunkAttempt.words_asked > 0
                )
            )
        ).all()
    out = estimate(
        spec_shape(spec),
        history,
        settings.quire_prices.get(model),
        compliance([(a, b) for a, b in rows]) if rows else None,
        profile=profile_of(settings),
        concurrency=settings.llm_concurrency,
        source=f"{len(history)} of {whose} finished jobs of {model}",
    )
    return {"model": model, **out}


async def _history_jobs(s: AsyncSession, model: str, before: dt.datetime | None, user_id: int | None) -> list[Job]:
    q = select(Job).where(Job.model == model, Job.status == "succeeded", Job.completed_at.is_not(None))
    if before is not None:
        q = q.where(Job.completed_at < before)
    if user_id is not None:
        q = q.where(Job.user_id == user_id)
    return list((await s.execute(q.order_by(Job.completed_at.desc()).limit(HISTORY_JOBS))).scalars().all())


async def measured(s: AsyncSession, job: Job) -> Measured:
    """What a job made, up to its end (an author's later edits are not the job's): its shape, its
    calls and tokens by kind, its wall time."""
    opts = JobOptions(**(job.params or {}))
    # The shape as planned, as an estimate sees it: top-ups (continuation sections) are calls the
    # plan's passages cost, not passages of the plan.
    planned = (PlanNode.job_id == job.id, PlanNode.is_continuation.is_(False))
    levels = dict(
        (await s.execute(select(PlanNode.level, func.count()).where(*planned).group_by(PlanNode.level))).all()
    )
    chunks = (
        await s.execute(
            select(func.count()).select_from(Chunk).join(PlanNode, Chunk.section_id == PlanNode.id).where(*planned)
        )
    ).scalar_one()
    book = (
        await s.execute(select(PlanNode.budget_words).where(PlanNode.job_id == job.id, PlanNode.level == "book"))
    ).scalar_one_or_none()
    chapters, parts = int(levels.get("chapter", 0)), int(levels.get("part", 0))
    top = (
        await s.execute(
            select(func.count())
            .select_from(PlanNode)
            .where(PlanNode.job_id == job.id, PlanNode.depth == 1, PlanNode.is_continuation.is_(False))
        )
    ).scalar_one()
    shape = Shape(
        words=int(book or job.target_words),
        chunk_words=opts.chunk_words,
        parallelism=opts.parallelism,
        chunks=int(chunks),
        sections=int(levels.get("section", 0)),
        units=chapters or 1,
        expanded=chapters + parts,
        summarized=chapters + parts,
        top=int(top),
        rewrite=job.kind == "rewrite",
    )
    calls: dict[str, int] = {}
    t_in: dict[str, int] = {}
    t_out: dict[str, int] = {}
    end = job.completed_at or dt.datetime.now(dt.UTC)
    for purpose, n, i, o in (
        await s.execute(
            select(
                PURPOSE,
                func.count(),
                func.coalesce(func.sum(LlmCall.tokens_in), 0),
                func.coalesce(func.sum(LlmCall.tokens_out), 0),
            )
            .where(LlmCall.job_id == job.id, LlmCall.started_at <= end)
            .group_by(PURPOSE)
        )
    ).all():
        calls[purpose], t_in[purpose], t_out[purpose] = int(n), int(i), int(o)
    # The job's own time: a plan's wait for its author is not the model's (nor estimable).
    wall = (end - await clock_start(s, job)).total_seconds()
    return Measured(shape, calls, t_in, t_out, wall)


async def for_job(db: Database, settings: Settings, job: Job) -> dict[str, Any]:
    """The job's estimate as it would have been made at submit (from the history before it), and,
    once it has run, what it actually used, up to its end."""
    async with db.tx() as s:
        source = (
            await s.execute(select(Document.text).where(Document.job_id == job.id, Document.role == "input"))
        ).scalar_one_or_none()
    spec = JobSpec.model_construct(
        kind=job.kind,
        target_words=job.target_words,
        prompt=job.prompt,
        input_text=source,
        model=job.model,
        options=JobOptions(**(job.params or {})),
    )
    est = await for_spec(db, settings, job.user_id, spec, before=job.created_at)
    async with db.tx() as s:
        m = await measured(s, job)
        cost = (
            await s.execute(
                select(func.coalesce(func.sum(LlmCall.cost_micro_usd), 0)).where(
                    LlmCall.job_id == job.id, LlmCall.started_at <= (job.completed_at or dt.datetime.now(dt.UTC))
                )
            )
        ).scalar_one()
    actual = {
        "ended": job.completed_at is not None,
        "calls": sum(m.calls.values()),
        "tokens_in": sum(m.tokens_in.values()),
        "tokens_out": sum(m.tokens_out.values()),
        "wall_seconds": round(m.wall_s, 1),
        "cost_micro_usd": int(cost or 0),
        "by_purpose": {
            p: {"calls": m.calls[p], "tokens_in": m.tokens_in[p], "tokens_out": m.tokens_out[p]} for p in m.calls
        },
    }
    return {"job_id": str(job.id), "estimate": est, "actual": actual}
