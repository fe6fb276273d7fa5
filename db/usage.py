"""What a user has used, for their quotas (core.quota) and their totals: tokens since a time,
jobs queued or running and edits running, words asked for since a time (jobs' targets and edits'
words), and the cost of their model calls. Jobs the user deleted still count, their edits too:
their usage is kept in the account log (``job.deleted`` events)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.quota import Quotas, Usage, day_start, month_start
from db.loop import Edit, clock_start, moved_on, review_wait
from db.models import AccountEvent, Job, LlmCall, User

DELETED = "job.deleted"


def _deleted(key: str) -> object:
    return func.coalesce(func.sum(cast(AccountEvent.data[key].astext, BigInteger)), 0)


async def quotas(s: AsyncSession, user_id: int, *, lock: bool = False) -> Quotas:
    """The user's quotas; ``lock`` holds their row until commit (concurrent submits queue here)."""
    q = select(User.quota_tokens_per_day, User.quota_concurrent_jobs, User.quota_words_per_month).where(
        User.id == user_id
    )
    row = (await s.execute(q.with_for_update() if lock else q)).one_or_none()
    return Quotas(*row) if row is not None else Quotas()


def limits_columns(job_id: uuid.UUID) -> tuple[Any, ...]:
    """The columns ``limits_of`` reads (the plan review's wait, the owner's quotas), for a statement
    that reads them beside others (it selects from, or joins, the job's owner in ``users``)."""
    return (*review_wait(job_id), User.quota_tokens_per_day, User.quota_concurrent_jobs, User.quota_words_per_month)


def limits_of(job: Job, values: Sequence[Any]) -> tuple[dt.datetime, Quotas]:
    """(``db.loop.clock_start``, the owner's quotas) from the values of ``limits_columns``."""
    return moved_on(job, values[0], values[1]), Quotas(*values[2:5])


async def clock_and_quotas(s: AsyncSession, job: Job, edit: int | None = None) -> tuple[dt.datetime, Quotas]:
    """``db.loop.clock_start`` and the owner's ``quotas``, in one statement: what a step reads
    before its first model call (an edit's clock is read apart)."""
    if edit is not None:
        return await clock_start(s, job, edit), await quotas(s, job.user_id)
    row = (await s.execute(select(*limits_columns(job.id)).where(User.id == job.user_id))).one_or_none()
    if row is None:  # no such user (a job's owner is never deleted before it): no quotas
        return await clock_start(s, job), Quotas()
    return limits_of(job, row)


async def tokens_since(s: AsyncSession, user_id: int, since: dt.datetime) -> int:
    live = (
        await s.execute(
            select(func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0))
            .join(Job, Job.id == LlmCall.job_id)
            .where(Job.user_id == user_id, LlmCall.started_at >= since)
        )
    ).scalar_one()
    gone = (
        await s.execute(
            select(_deleted("tokens_in") + _deleted("tokens_out")).where(
                AccountEvent.user_id == user_id, AccountEvent.kind == DELETED, AccountEvent.ts >= since
            )
        )
    ).scalar_one()
    return int(live or 0) + int(gone or 0)


async def usage(s: AsyncSession, user_id: int, now: dt.datetime) -> Usage:
    # Model work in progress: jobs queued or running, and edits running (of finished jobs).
    running = (
        await s.execute(
            select(
                select(func.count())
                .select_from(Job)
                .where(Job.user_id == user_id, Job.status.in_(("queued", "running")))
                .scalar_subquery()
                + select(func.count())
                .select_from(Edit)
                .join(Job, Job.id == Edit.job_id)
                .where(Job.user_id == user_id, Edit.status == "running")
                .scalar_subquery()
            )
        )
    ).scalar_one()
    month = month_start(now)
    words = (
        await s.execute(
            select(func.coalesce(func.sum(Job.target_words), 0)).where(Job.user_id == user_id, Job.created_at >= month)
        )
    ).scalar_one()
    # A deleted job counts in the month it was submitted (the account log keeps when that was).
    words_gone = (
        await s.execute(
            select(_deleted("target_words")).where(
                AccountEvent.user_id == user_id,
                AccountEvent.kind == DELETED,
                AccountEvent.ts >= month,
                AccountEvent.data["created_at"].astext >= month.isoformat(),
            )
        )
    ).scalar_one()
    # The words an author asked the model to write again (regenerated nodes, rewritten selections),
    # their deleted jobs' too (the account log keeps them by the month they were asked in).
    words_edited = (
        await s.execute(
            select(func.coalesce(func.sum(Edit.words), 0))
            .join(Job, Job.id == Edit.job_id)
            .where(Job.user_id == user_id, Edit.created_at >= month)
        )
    ).scalar_one()
    edited_gone = (
        await s.execute(
            select(
                func.coalesce(
                    func.sum(cast(AccountEvent.data["edit_words"][month.strftime("%Y-%m")].astext, BigInteger)), 0
                )
            ).where(AccountEvent.user_id == user_id, AccountEvent.kind == DELETED, AccountEvent.ts >= month)
        )
    ).scalar_one()
    return Usage(
        tokens_today=await tokens_since(s, user_id, day_start(now)),
        running_jobs=int(running),
        words_this_month=int(words or 0) + int(words_gone or 0) + int(words_edited or 0) + int(edited_gone or 0),
    )


@dataclass(frozen=True)
class Cost:
    micro_usd: int  # the priced calls' sum
    unpriced_calls: int  # calls with tokens whose model has no price (not in micro_usd)


async def job_cost(s: AsyncSession, job_id: object) -> Cost:
    total, unpriced = (
        await s.execute(
            select(
                func.coalesce(func.sum(LlmCall.cost_micro_usd), 0),
                func.count().filter(LlmCall.cost_micro_usd.is_(None), LlmCall.tokens_in.is_not(None)),
            ).where(LlmCall.job_id == job_id)
        )
    ).one()
    return Cost(int(total or 0), int(unpriced or 0))


async def user_cost(s: AsyncSession, user_id: int) -> Cost:
    """Every model call made for the user, their deleted jobs' included."""
    total, unpriced = (
        await s.execute(
            select(
                func.coalesce(func.sum(LlmCall.cost_micro_usd), 0),
                func.count().filter(LlmCall.cost_micro_usd.is_(None), LlmCall.tokens_in.is_not(None)),
            )
            .join(Job, Job.id == LlmCall.job_id)
            .where(Job.user_id == user_id)
        )
    ).one()
    gone, gone_unpriced = (
        await s.execute(
            select(_deleted("cost_micro_usd"), _deleted("unpriced_calls")).where(
                AccountEvent.user_id == user_id, AccountEvent.kind == DELETED
            )
        )
    ).one()
    return Cost(int(total or 0) + int(gone or 0), int(unpriced or 0) + int(gone_unpriced or 0))


# The words a job's edits asked for, by the month (UTC) they were asked in: kept when it is deleted.
DELETED_EDITS_SQL = text(
    "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM'), sum(words) FROM edits WHERE job_id = :j"
    " AND words > 0 GROUP BY 1"
)

# What a deleted job leaves in the account log for the counts above (services.jobs.delete adds it).
DELETED_USAGE_SQL = text(
    "SELECT COALESCE(sum(tokens_in), 0), COALESCE(sum(tokens_out), 0), COALESCE(sum(cost_micro_usd), 0),"
    " count(*) FILTER (WHERE cost_micro_usd IS NULL AND tokens_in IS NOT NULL) FROM llm_calls WHERE job_id = :j"
)
