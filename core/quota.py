"""Per-user quotas: tokens a day, jobs at once, words a month. What each means, when its period
ends (``Retry-After``) and what a refusal says. Periods are calendar periods in UTC: a day's tokens
reset at 00:00 UTC, a month's words on the 1st.

- tokens per day: prompt and completion tokens of every model call made for the user's jobs
  since 00:00 UTC (checked at submit and before each model call);
- concurrent jobs: the user's jobs queued or running (checked at submit);
- words per month: the target words of the jobs the user submitted since the 1st, whatever became
  of them (checked at submit: a job that would go over is refused whole).
Jobs deleted in a period still count in it (their usage is kept in the account log).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

CONCURRENT_RETRY_S = 30  # no clock ends a running job: ask again in a while


class QuotaExceeded(Exception):
    """A user's quota is used up. Raised at submit (the API answers 429 with Retry-After) and
    before a model call (the job fails with E_QUOTA_EXCEEDED)."""

    def __init__(self, message: str, retry_after_s: int = CONCURRENT_RETRY_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Quotas:
    """None: no limit."""

    tokens_per_day: int | None = None
    concurrent_jobs: int | None = None
    words_per_month: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.tokens_per_day, self.concurrent_jobs, self.words_per_month))


@dataclass(frozen=True)
class Usage:
    tokens_today: int
    running_jobs: int
    words_this_month: int


def day_start(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: dt.datetime) -> dt.datetime:
    return day_start(now).replace(day=1)


def next_month(now: dt.datetime) -> dt.datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _seconds_until(now: dt.datetime, when: dt.datetime) -> int:
    return max(1, int((when - now).total_seconds()) + 1)


def tokens_refusal(q: Quotas, tokens_today: int, now: dt.datetime) -> QuotaExceeded | None:
    """Whether the day's tokens are used up (no new model call, no new job)."""
    if q.tokens_per_day is None or tokens_today < q.tokens_per_day:
        return None
    return QuotaExceeded(
        f"tokens-per-day quota of {q.tokens_per_day:,} used up ({tokens_today:,} tokens since 00:00 UTC); "
        "it resets at 00:00 UTC",
        _seconds_until(now, day_start(now) + dt.timedelta(days=1)),
    )


def submit_refusal(q: Quotas, u: Usage, target_words: int, now: dt.datetime) -> QuotaExceeded | None:
    """Why a new job of ``target_words`` may not start now, or None."""
    if q.concurrent_jobs is not None and u.running_jobs >= q.concurrent_jobs:
        return _concurrent(q, u, "submit")
    if q.words_per_month is not None and u.words_this_month + target_words > q.words_per_month:
        left = max(0, q.words_per_month - u.words_this_month)
        return QuotaExceeded(
            f"words-per-month quota of {q.words_per_month:,} would be exceeded: {u.words_this_month:,} asked for "
            f"since the 1st (UTC), {left:,} left, this job asks for {target_words:,}; it resets on the 1st",
            _seconds_until(now, next_month(now)),
        )
    return tokens_refusal(q, u.tokens_today, now)


def _concurrent(q: Quotas, u: Usage, action: str) -> QuotaExceeded:
    return QuotaExceeded(
        f"concurrent-jobs quota of {q.concurrent_jobs} reached ({u.running_jobs} queued or running, edits "
        "included); "
        f"{action} again when one of them has ended",
        CONCURRENT_RETRY_S,
    )


def resume_refusal(q: Quotas, u: Usage, now: dt.datetime) -> QuotaExceeded | None:
    """Why a failed or cancelled job may not start model work again now (its words were counted
    when it was submitted), or None: the same checks as a submit's, less the words."""
    if q.concurrent_jobs is not None and u.running_jobs >= q.concurrent_jobs:
        return _concurrent(q, u, "resume")
    return tokens_refusal(q, u.tokens_today, now)
