"""Reading a job's audit log: keyset pages, whole-log downloads in constant memory, JSON, NDJSON
and TXT renderings, the facts a live stream needs to know when the log is complete, and
verification of the log's hash chain against the job's head and the rows it references.

Reads made here are the viewer's, not the job's: they use unaudited transactions and are not
recorded in the job's log (a download is recorded as a user action by the route that serves it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select, text

from core.audit import GENESIS, TXT_HEADER, parse_location, ts_text, txt_line
from core.chain import ChainVerifier, Verdict, check_reference
from db.models import AuditEvent, Base, Document, Job
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
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


def event_row(r: Any) -> dict[str, Any]:
    return {
        "seq": r[0],
        "ts": ts_text(r[1]),
        "kind": r[2],
        "action": r[3],
        "table_name": r[4],
        "row_id": r[5],
        "sql_text": r[6],
        "data": r[7],
        "prev_hash": r[8],
        "hash": r[9],
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
        sep, last_seq, count, head = "", after, 0, None
        async for batch in batches:
            yield sep + ",".join(_dumps(e) for e in batch)
            sep, last_seq, count, head = ",", batch[-1]["seq"], count + len(batch), batch[-1]["hash"]
        more = limit is not None and count == limit
        # The head of what was sent: the hash of its last event (GENESIS for an empty log). A log
        # filtered by kind is no chain, so it states none.
        if head is None and after == 0:
            head = GENESIS
        tail = f',"head_seq":{last_seq},"head_hash":"{head}"' if head is not None and not kinds else ""
        yield f'],"next_after":{last_seq if more else "null"}{tail}}}'


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


async def verify(db: Database, job_id: uuid.UUID) -> Verdict | None:
    """The job's log checked from the database: the chain from seq 1, the head on the job row, the
    heads its documents recorded, and the current value of every row the log references. None if
    there is no such job."""
    async with db.tx() as s:
        job = (await s.execute(select(Job.audit_seq, Job.audit_head).where(Job.id == job_id))).one_or_none()
        docs = (
            await s.execute(
                select(Document.audit_seq, Document.audit_head).where(
                    Document.job_id == job_id, Document.audit_head.is_not(None)
                )
            )
        ).all()
    if job is None:
        return None
    v = ChainVerifier(anchors={int(d[0]): str(d[1]) for d in docs if d[0] is not None})
    async for batch in iter_batches(db, job_id, 0, None):
        for e in batch:
            v.feed(e)
    verdict = v.verdict(int(job[0]), str(job[1]))
    problems = [(verdict.first_bad_seq, verdict.reason)] if verdict.first_bad_seq is not None else []
    refs = v.references_to_check()
    stored = await _stored_values(db, job_id, list(refs))
    for loc, ref in refs.items():
        exists = loc in stored
        verdict.references_checked += int(exists)
        verdict.references_gone += int(not exists)
        bad = check_reference(loc, ref, stored.get(loc), exists)
        if bad is not None:
            problems.append(bad)
    if problems:
        seq, reason = min(problems, key=lambda p: p[0] or 0)
        verdict.intact, verdict.first_bad_seq, verdict.reason = False, seq, reason
    return verdict


async def _stored_values(db: Database, job_id: uuid.UUID, locations: list[str]) -> dict[str, Any]:
    """The values now at these ``table.column#id`` locations of this job (absent: no such row),
    read a column at a time in batches. Tables and columns must be Quire's: a log is data, not SQL."""
    wanted: dict[tuple[str, str], dict[Any, str]] = {}
    for loc in locations:
        parsed = parse_location(loc)
        table = Base.metadata.tables.get(parsed[0]) if parsed else None
        if parsed is None or table is None or parsed[1] not in table.c or "id" not in table.c:
            continue
        key = _row_key(table.name, parsed[2], job_id)
        if key is not None:
            wanted.setdefault((parsed[0], parsed[1]), {})[key] = loc
    out: dict[str, Any] = {}
    async with db.tx() as s:
        for (name, column), ids in wanted.items():
            table = Base.metadata.tables[name]
            keys = list(ids)
            for i in range(0, len(keys), BATCH):
                q = select(table.c.id, table.c[column]).where(table.c.id.in_(keys[i : i + BATCH]))
                if "job_id" in table.c:
                    q = q.where(table.c.job_id == job_id)
                for row_id, value in (await s.execute(q)).all():
                    out[ids[row_id]] = value
    return out


def _row_key(table: str, row_id: str, job_id: uuid.UUID) -> Any:
    """The primary key a location names, if it can be a row of this job."""
    if table == "jobs":
        return job_id if row_id == str(job_id) else None
    try:
        return int(row_id)
    except ValueError:
        return None
