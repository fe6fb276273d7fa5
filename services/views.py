"""Reading jobs for their owners: one job with its totals, its documents, and the job history.

Every read is scoped to a user: another user's job is indistinguishable from a missing one.
These are the viewer's reads, made in unaudited transactions.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, func, select, text

from db import usage
from db.models import Document, Job, LlmCall
from db.session import Database
from db.writing import Chunk, PlanNode


class BadCursor(ValueError):
    """A history cursor that no page of this API produced."""


async def own_job(db: Database, job_id: str, user_id: int) -> Job | None:
    """The user's job with this id, or None (no such job, not a job id, or someone else's)."""
    try:
        jid = uuid.UUID(job_id)
    except ValueError:
        return None
    async with db.tx() as s:
        job = await s.get(Job, jid)
    return job if job is not None and job.user_id == user_id else None


@dataclass(frozen=True)
class JobTotals:
    tokens_in: int
    tokens_out: int
    llm_calls: int
    sections_done: int
    words_so_far: int  # the chunks' sum while the job runs
    output_words: int | None  # the finished output's count, once it exists


async def job_totals(db: Database, job: Job) -> JobTotals:
    async with db.tx() as s:
        tokens_in, tokens_out, calls = (
            await s.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0),
                    func.coalesce(func.sum(LlmCall.tokens_out), 0),
                    func.count(),
                ).where(LlmCall.job_id == job.id)
            )
        ).one()
        sections_done = (
            await s.execute(
                select(func.count())
                .select_from(PlanNode)
                .where(PlanNode.job_id == job.id, PlanNode.level == "section", PlanNode.status == "done")
            )
        ).scalar_one()
        words_so_far = (
            await s.execute(select(func.coalesce(func.sum(Chunk.word_count), 0)).where(Chunk.job_id == job.id))
        ).scalar_one()
    out = await latest_document(db, job.id, "output")
    return JobTotals(
        tokens_in=int(tokens_in or 0),
        tokens_out=int(tokens_out or 0),
        llm_calls=int(calls),
        sections_done=int(sections_done),
        words_so_far=int(words_so_far),
        output_words=out.word_count if out is not None else None,
    )


async def costs(db: Database, job: Job) -> tuple[usage.Cost, usage.Cost]:
    """(the job's cost, its owner's total cost) in micro-dollars, by the price table."""
    async with db.tx() as s:
        return await usage.job_cost(s, job.id), await usage.user_cost(s, job.user_id)


async def user_costs(db: Database, user_id: int) -> usage.Cost:
    async with db.tx() as s:
        return await usage.user_cost(s, user_id)


async def latest_document(db: Database, job_id: uuid.UUID, role: str) -> Document | None:
    """The newest version of the job's ``output`` or ``partial`` document."""
    async with db.tx() as s:
        return (
            await s.execute(
                select(Document)
                .where(Document.job_id == job_id, Document.role == role)
                .order_by(Document.version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()


# A cursor is a position in the history's order: microseconds since the epoch and a job id. Any
# string of this shape is a position, so the pattern alone says which cursors are valid.
CURSOR_PATTERN = "^[0-9]{1,16}_[0-9a-f]{32}$"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def encode_cursor(created: dt.datetime, jid: uuid.UUID) -> str:
    return f"{(created - _EPOCH) // _US}_{jid.hex}"


def decode_cursor(c: str) -> tuple[dt.datetime, uuid.UUID]:
    if not re.fullmatch(CURSOR_PATTERN, c):
        raise BadCursor("invalid cursor: pass next_cursor from the previous page")
    us, _, jid = c.partition("_")
    return _EPOCH + int(us) * _US, uuid.UUID(jid)


async def history(
    db: Database, user_id: int, *, status: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[RowMapping], str | None]:
    """One page of the user's jobs (rows of the ``job_history`` view), newest first, and the
    cursor of the next page (None on the last). Raises ``BadCursor``."""
    where = ["user_id = :u"]
    params: dict[str, Any] = {"u": user_id, "n": limit + 1}
    if status:
        where.append("status = :status")
        params["status"] = status
    if kind:
        where.append("kind = :kind")
        params["kind"] = kind
    if cursor is not None:  # "" is no position either: BadCursor
        params["c_ts"], params["c_id"] = decode_cursor(cursor)
        where.append("(created_at, id) < (:c_ts, :c_id)")
    sql = f"SELECT * FROM job_history WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT :n"
    async with db.tx() as s:
        rows = (await s.execute(text(sql), params)).mappings().all()
    nxt = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], nxt
