"""Reading audit logs: pages, whole-log downloads in constant memory, and the live stream.

Reads made here are the viewer's, not the job's: they use unaudited transactions.
``AuditListener`` holds the API process's one LISTEN connection and wakes the streams of the
job a notification names; each stream then reads ``seq > last`` from the table, so a missed or
merged notification never loses an event and none is sent twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import structlog
from sqlalchemy import select

from db.ddl import NOTIFY_CHANNEL
from db.models import TERMINAL_STATUSES, AuditEvent, Job
from db.session import Database, plain_url

log = structlog.get_logger(__name__)

BATCH = 500
TXT_HEADER = "seq\tts\tkind\taction\ttable\trow_id\tsql_text\tdata\n"


def event_dict(e: AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "ts": e.ts.isoformat(),
        "kind": e.kind,
        "action": e.action,
        "table_name": e.table_name,
        "row_id": e.row_id,
        "sql_text": e.sql_text,
        "data": e.data,
    }


def _esc(s: str | None) -> str:
    if s is None:
        return "-"
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def txt_line(d: dict[str, Any]) -> str:
    """One event per line, tab-separated, nothing left out: the TXT download format."""
    return (
        "\t".join(
            [
                str(d["seq"]),
                d["ts"],
                d["kind"],
                d["action"],
                _esc(d["table_name"]),
                _esc(d["row_id"]),
                _esc(d["sql_text"]),
                json.dumps(d["data"], ensure_ascii=False, separators=(",", ":")),
            ]
        )
        + "\n"
    )


def parse_txt_line(line: str) -> dict[str, Any]:
    """The inverse of ``txt_line`` (used by tests and by anyone re-reading a TXT log)."""

    def unesc(s: str) -> str | None:
        if s == "-":
            return None
        out, i = [], 0
        while i < len(s):
            if s[i] == "\\" and i + 1 < len(s):
                out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(s[i + 1], s[i + 1]))
                i += 2
            else:
                out.append(s[i])
                i += 1
        return "".join(out)

    seq, ts, kind, action, table, row, sql, data = line.rstrip("\n").split("\t", 7)
    return {
        "seq": int(seq),
        "ts": ts,
        "kind": kind,
        "action": action,
        "table_name": unesc(table),
        "row_id": unesc(row),
        "sql_text": unesc(sql),
        "data": json.loads(data),
    }


async def read_events(
    db: Database, job_id: uuid.UUID, after: int, limit: int, kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    async with db.tx() as s:
        q = select(AuditEvent).where(AuditEvent.job_id == job_id, AuditEvent.seq > after)
        if kinds:
            q = q.where(AuditEvent.kind.in_(kinds))
        rows = (await s.execute(q.order_by(AuditEvent.seq).limit(limit))).scalars().all()
        return [event_dict(e) for e in rows]


async def iter_events(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, kinds: list[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Events in seq order, fetched in keyset batches: memory stays flat for any log size."""
    sent = 0
    while limit is None or sent < limit:
        n = BATCH if limit is None else min(BATCH, limit - sent)
        batch = await read_events(db, job_id, after, n, kinds)
        for e in batch:
            yield e
        sent += len(batch)
        if len(batch) < n:
            return
        after = batch[-1]["seq"]


async def render(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, fmt: str, kinds: list[str] | None = None
) -> AsyncIterator[str]:
    if fmt == "ndjson":
        async for e in iter_events(db, job_id, after, limit, kinds):
            yield json.dumps(e, ensure_ascii=False) + "\n"
    elif fmt == "txt":
        yield TXT_HEADER
        async for e in iter_events(db, job_id, after, limit, kinds):
            yield txt_line(e)
    else:
        yield f'{{"job_id":"{job_id}","events":['
        first, last_seq, count = True, after, 0
        async for e in iter_events(db, job_id, after, limit, kinds):
            yield ("" if first else ",") + json.dumps(e, ensure_ascii=False)
            first, last_seq, count = False, e["seq"], count + 1
        more = limit is not None and count == limit
        yield f'],"next_after":{last_seq if more else "null"}}}'


class AuditListener:
    """One LISTEN connection per API process, fanned out to the streams of each job."""

    def __init__(self, url: str) -> None:
        self.url = plain_url(url)
        self.waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def subscribe(self, job_id: uuid.UUID) -> asyncio.Event:
        ev = asyncio.Event()
        self.waiters[job_id].add(ev)
        return ev

    def unsubscribe(self, job_id: uuid.UUID, ev: asyncio.Event) -> None:
        self.waiters[job_id].discard(ev)
        if not self.waiters[job_id]:
            self.waiters.pop(job_id, None)

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.ready.set()
                    # A reconnect may have missed notifications: wake everyone to re-read.
                    for evs in list(self.waiters.values()):
                        for ev in evs:
                            ev.set()
                    async for n in conn.notifies():
                        job, _, _seq = n.payload.partition(":")
                        try:
                            jid = uuid.UUID(job)
                        except ValueError:
                            continue
                        for ev in list(self.waiters.get(jid, ())):
                            ev.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: retry, streams fall back to polling meanwhile
                self.ready.clear()
                log.warning("audit.listener_reconnect", error=str(exc))
                await asyncio.sleep(1.0)


async def job_status(db: Database, job_id: uuid.UUID) -> str | None:
    async with db.tx() as s:
        return (await s.execute(select(Job.status).where(Job.id == job_id))).scalar_one_or_none()


async def stream(
    db: Database, listener: AuditListener, job_id: uuid.UUID, after: int, quiet_end_s: float = 1.5, poll_s: float = 5.0
) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events of one job: the backlog after ``after``, then each event as it commits;
    ends once the job is finished and its last events (the closing activity's record is written
    just after the job's own) have been sent."""
    wake = listener.subscribe(job_id)  # before reading: nothing committed meanwhile is missed
    try:
        last = after
        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()
            got = False
            async for e in iter_events(db, job_id, last, None):
                last = e["seq"]
                got = True
                yield {"id": str(e["seq"]), "data": json.dumps(e, ensure_ascii=False)}
            status = await job_status(db, job_id)
            if status is None:
                yield {"event": "end", "data": json.dumps({"reason": "deleted", "last_seq": last})}
                return
            if status in TERMINAL_STATUSES:
                now = loop.time()
                if got or quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= quiet_end_s:
                    yield {"event": "end", "data": json.dumps({"status": status, "last_seq": last})}
                    return
                timeout = quiet_end_s
            else:
                timeout = poll_s
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass
    finally:
        listener.unsubscribe(job_id, wake)
