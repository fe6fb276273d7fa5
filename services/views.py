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

from sqlalchemy import RowMapping, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.eventformat import written_rows
from core.layout import Piece, pieces
from core.length import WordAccount
from core.spec import TERMINAL_STATUSES
from db import usage
from db.blocks import document_blocks
from db.counts import word_account
from db.manuscript import Chunk, ChunkVersion, PlanNode
from db.models import AuditEvent, Document, Job, LlmCall
from db.session import Database


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
    words_so_far: int  # the committed chunks' sum while the job runs
    output_words: int | None  # the finished output's count, once it exists
    account: WordAccount  # the model's words, what the gate cut, chunks accepted short, top-ups


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
        # What the document holds so far: committed chunks only, as the draft, the map and the history
        # count (a chunk's working text between its attempts is not in the document yet).
        words_so_far = (
            await s.execute(
                select(func.coalesce(func.sum(Chunk.word_count), 0)).where(
                    Chunk.job_id == job.id, Chunk.status == "done"
                )
            )
        ).scalar_one()
        account = await word_account(s, job.id)
    out = await latest_document(db, job.id, "output")
    return JobTotals(
        tokens_in=int(tokens_in or 0),
        tokens_out=int(tokens_out or 0),
        llm_calls=int(calls),
        sections_done=int(sections_done),
        words_so_far=int(words_so_far),
        output_words=out.word_count if out is not None else None,
        account=account,
    )


async def costs(db: Database, job: Job) -> tuple[usage.Cost, usage.Cost]:
    """(the job's cost, its owner's total cost) in micro-dollars, by the price table."""
    async with db.tx() as s:
        return await usage.job_cost(s, job.id), await usage.user_cost(s, job.user_id)


async def user_costs(db: Database, user_id: int) -> usage.Cost:
    async with db.tx() as s:
        return await usage.user_cost(s, user_id)


async def latest_document(db: Database, job_id: uuid.UUID, role: str, version: int | None = None) -> Document | None:
    """The newest version of the job's ``output`` or ``partial`` document (or version ``version``)."""
    q = select(Document).where(Document.job_id == job_id, Document.role == role)
    if version is not None:
        q = q.where(Document.version == version)
    async with db.tx() as s:
        return (await s.execute(q.order_by(Document.version.desc()).limit(1))).scalar_one_or_none()


@dataclass(frozen=True)
class DraftPiece:
    key: str  # "title", "n<node>" (a heading), "c<ordinal>" (a chunk)
    piece: Piece
    sent: bool  # False: unchanged since the reader's cursor; its text is not sent again


@dataclass(frozen=True)
class Draft:
    seq: int  # the log's head when read: the reader's next cursor
    status: str
    complete: bool  # the job has ended: this is the document as it stays
    pieces: list[DraftPiece]


async def draft(db: Database, job_id: uuid.UUID, after: int) -> Draft | None:
    """The document so far, in pieces: while the job runs, its committed chunks' latest versions
    under the headings they have; once it has ended, its output (or, failed or cancelled, its
    partial document). Chunk texts go only for chunks with a version committed after ``after`` (a
    seq: the log is the commit-ordered feed of what changed; versions' ids are not, as chapters
    commit in parallel), so a page refreshing on each commit reads only what is new; headings,
    small and retitled as the plan grows, always go. One snapshot for all of it, so the cursor
    and the pieces agree. None when the job is gone."""
    async with db.sessions() as s:  # read only: closing it rolls back
        await s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        job = await s.get(Job, job_id)
        if job is None:
            return None
        complete = job.status in TERMINAL_STATUSES
        blocks = await document_blocks(s, job, committed_only=job.status not in ("failed", "cancelled"))
        parts = pieces(job.title, job.target_words, blocks)
        if job.status == "succeeded":
            out = (
                await s.execute(
                    select(Document.text)
                    .where(Document.job_id == job_id, Document.role == "output")
                    .order_by(Document.version.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            parts = _as_far_as(parts, out or "")
        elif not complete:
            parts = _with_text_below(parts)
        fresh = None if complete or after == 0 else await _chunks_committed_after(s, job_id, after)
    return Draft(
        seq=job.audit_seq,
        status=job.status,
        complete=complete,
        pieces=[DraftPiece(_key(p), p, p.chunk is None or fresh is None or p.chunk in fresh) for p in parts],
    )


def _key(p: Piece) -> str:
    return f"c{p.chunk}" if p.chunk is not None else f"n{p.node}" if p.node is not None else "title"


async def _chunks_committed_after(s: AsyncSession, job_id: uuid.UUID, after: int) -> set[int]:
    """The ordinals of the chunks that gained a version in events after seq ``after`` (the INSERT's
    sql event names the rows it wrote; a row of a rolled-back insert does not exist: it joins
    nothing)."""
    found = await s.execute(
        select(AuditEvent.kind, AuditEvent.row_id, AuditEvent.sql_text, AuditEvent.data["rows"].label("rows")).where(
            AuditEvent.job_id == job_id,
            or_(
                and_(AuditEvent.kind == "sql", AuditEvent.action == "write"),
                and_(AuditEvent.kind == "row", AuditEvent.action == "insert"),
            ),
            AuditEvent.seq > after,
            AuditEvent.table_name == "chunk_versions",
        )
    )
    ids = [
        row_id
        for e in found
        for action, _, row_id, _ in written_rows(
            dict(e._mapping, action="insert", table_name="chunk_versions", data={"rows": e.rows})
        )
        if action == "insert"
    ]
    wanted = {int(i) for i in ids if i and i.isdigit()}
    if not wanted:
        return set()
    rows = await s.execute(
        select(Chunk.ordinal).join(ChunkVersion, ChunkVersion.chunk_id == Chunk.id).where(ChunkVersion.id.in_(wanted))
    )
    return set(rows.scalars())


def _with_text_below(parts: list[Piece]) -> list[Piece]:
    """Only the headings with some text under them yet: the document as far as it is written.
    (A heading covers the text after it up to the next heading of its level or above; walking
    backwards, the nearest text ahead decides: any text further on lies beyond that too.)"""
    out: list[Piece] = []
    text_ahead, shallowest = False, 99  # the shallowest heading between here and that text
    for p in reversed(parts):
        if not p.heading:
            text_ahead, shallowest = True, 99
        elif not text_ahead or shallowest <= p.heading:
            shallowest = min(shallowest, p.heading)
            continue
        else:
            shallowest = p.heading
        out.append(p)
    return out[::-1]


def _as_far_as(parts: list[Piece], document: str) -> list[Piece]:
    """The pieces as far as the stored document goes: finalize may have cut the assembled text
    short (to the job's maximum, at a sentence end), never changed it otherwise."""
    body, pos = document.rstrip(), 0
    out: list[Piece] = []
    for p in parts:
        start = pos + 2 if out else 0
        if start >= len(body):
            break
        md = p.markdown
        if body.startswith(md, start):
            out.append(p)
            pos = start + len(md)
            continue
        if p.heading or not md.startswith(body[start:]):
            return parts  # not this document's pieces after all: show them whole
        out.append(Piece(body[start:], node=p.node, chunk=p.chunk))
        break
    return out


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
