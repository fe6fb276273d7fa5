"""Reading a job's audit log: keyset pages, whole-log downloads in constant memory, JSON, NDJSON
and TXT renderings, and the facts a live stream needs to know when the log is complete.

Reads made here are the viewer's, not the job's: they use unaudited transactions and are not
recorded in the job's log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select, text

from core.audit import TXT_HEADER, txt_line
from db.models import AuditEvent, Job
from db.session import Database

BATCH = 500

COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.kind,
    AuditEvent.action,
    AuditEvent.table_name,
    AuditEvent.row_id,
    AuditEvent.sql_text,
    AuditEvent.data,
)


def event_row(r: Any) -> dict[str, Any]:
    return {
        "seq": r[0],
        "ts": r[1].isoformat(),
        "kind": r[2],
        "action": r[3],
        "table_name": r[4],
        "row_id": r[5],
        "sql_text": r[6],
        "data": r[7],
    }


async def read_events(
    db: Database, job_id: uuid.UUID, after: int, limit: int, kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` events with seq > ``after``, in seq order (one keyset page: an index range)."""
    q = select(*COLUMNS).where(AuditEvent.job_id == job_id, AuditEvent.seq > after)
    if kinds:
        q = q.where(AuditEvent.kind.in_(kinds))
    async with db.tx() as s:
        rows = (await s.execute(q.order_by(AuditEvent.seq).limit(limit))).all()
    return [event_row(r) for r in rows]


async def iter_batches(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, kinds: list[str] | None = None
) -> AsyncIterator[list[dict[str, Any]]]:
    """Events in seq order, in keyset batches of at most BATCH, each read in its own short
    transaction: memory stays flat for any log size and no connection is held between batches."""
    sent = 0
    while limit is None or sent < limit:
        n = BATCH if limit is None else min(BATCH, limit - sent)
        batch = await read_events(db, job_id, after, n, kinds)
        if batch:
            yield batch
        sent += len(batch)
        if len(batch) < n:
            return
        after = batch[-1]["seq"]


async def iter_events(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, kinds: list[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    async for batch in iter_batches(db, job_id, after, limit, kinds):
        for e in batch:
            yield e


def _dumps(e: dict[str, Any]) -> str:
    return json.dumps(e, ensure_ascii=False)


async def render(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, fmt: str, kinds: list[str] | None = None
) -> AsyncIterator[str]:
    """A log (or a page of it) as JSON, NDJSON or TXT text, one piece per batch of events."""
    batches = iter_batches(db, job_id, after, limit, kinds)
    if fmt == "ndjson":
        async for batch in batches:
            yield "".join(_dumps(e) + "\n" for e in batch)
    elif fmt == "txt":
        yield TXT_HEADER
        async for batch in batches:
            yield "".join(txt_line(e) for e in batch)
    else:
        yield f'{{"job_id":"{job_id}","events":['
        sep, last_seq, count = "", after, 0
        async for batch in batches:
            yield sep + ",".join(_dumps(e) for e in batch)
            sep, last_seq, count = ",", batch[-1]["seq"], count + len(batch)
        more = limit is not None and count == limit
        yield f'],"next_after":{last_seq if more else "null"}}}'


async def job_status(db: Database, job_id: uuid.UUID) -> str | None:
    async with db.tx() as s:
        return (await s.execute(select(Job.status).where(Job.id == job_id))).scalar_one_or_none()


async def open_activities(db: Database, job_id: uuid.UUID) -> int:
    """Activity attempts the log shows started but not yet ended (each writes its end or error)."""
    q = text(
        "SELECT count(*) FILTER (WHERE action = 'start') - count(*) FILTER (WHERE action IN ('end', 'error'))"
        " FROM audit_events WHERE job_id = :j AND kind = 'activity'"
    )
    async with db.tx() as s:
        return int((await s.execute(q, {"j": job_id})).scalar_one())
