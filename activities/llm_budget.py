"""Before a model call: the job's budgets (tokens, wall time) and its owner's tokens of the day.
Tokens of every call count, estimated ones (an endpoint that gave no usage, a call cut off by a
dead worker) included: no call escapes them."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from sqlalchemy import func, select

from core.quota import QuotaExceeded, day_start, tokens_refusal
from core.spec import JobOptions
from db.models import LlmCall
from db.session import JobTx
from db.usage import Quotas, quotas, tokens_since

__all__ = ["budget_exhausted", "quota_refused"]


async def quota_refused(tx: JobTx, user_id: int, known: Quotas | None = None) -> tuple[QuotaExceeded | None, Quotas]:
    """(whether the job's owner has used up their tokens of the day (core.quota), their quotas).
    ``known``: their quotas as this step read them for an earlier call (the tokens used are read
    again every time)."""
    q = known if known is not None else await quotas(tx.session, user_id)
    if q.tokens_per_day is None:
        return None, q
    now = dt.datetime.now(dt.UTC)
    return tokens_refusal(q, await tokens_since(tx.session, user_id, day_start(now)), now), q


async def budget_exhausted(tx: JobTx, job_id: uuid.UUID, opts: JobOptions, deadline: float) -> str | None:
    """Why the next model call must not be made (the job's token or time budget is used up), or None."""
    if time.time() >= deadline:
        return f"time budget of {opts.max_wall_seconds} s used up before the next model call"
    if opts.max_tokens is not None:
        used = (
            await tx.session.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0)
                ).where(LlmCall.job_id == job_id)
            )
        ).scalar_one() or 0
        if used >= opts.max_tokens:
            return f"token budget of {opts.max_tokens} used up ({used} tokens) before the next model call"
    return None
