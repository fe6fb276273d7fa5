"""Reading audit logs: pages, whole-log downloads in constant memory, the TXT line format, and
the live stream.

Reads made here are the viewer's, not the job's: they use unaudited transactions and are not
recorded in the job's log. ``AuditListener`` holds the API process's one LISTEN connection; a
notification names a job, whose ``Feed`` (one per watched job) reads ``seq > last`` once and wakes
that job's streams. Seqs are gap-free and commit in order, so reading ``seq > last`` after any
notification, missed or merged, never loses an event, and a stream sends each seq once.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import structlog
from sqlalchemy import select, text

from db.ddl import NOTIFY_CHANNEL
from db.models import TERMINAL_STATUSES, AuditEvent, Job
from db.session import Database, plain_url

log = structlog.get_logger(__name__)

BATCH = 500
# The TXT format: one line per event, tab-separated, a header line first. The first seven columns
# are for reading (the summary of an sql event is its SQL text); the last, the event's data as
# JSON, makes the line complete, so a TXT log holds exactly what the JSON and NDJSON logs hold.
TXT_COLUMNS = ("seq", "ts", "kind", "action", "table", "row", "summary", "data")
TXT_HEADER = "\t".join(TXT_COLUMNS) + "\n"


def _short(v: Any, n: int = 40) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


def _n(v: Any) -> str:
    return "?" if v is None else str(v)


def summary(e: dict[str, Any]) -> str:
    """What one event says, in one line of words (the TXT format's summary column; the CLI's and
    the Audit Panel's lines show the same). For an sql event: its SQL text, exactly."""
    d: dict[str, Any] = e.get("data") or {}
    kind, action = e.get("kind"), e.get("action")
    if kind == "sql":
        return str(e.get("sql_text") or "")
    if kind == "row":
        changes = d.get("changes") or {}
        what = ", ".join(f"{k}: {_short(c.get('old'))} → {_short(c.get('new'))}" for k, c in changes.items())
        return f"{e.get('table_name')} #{e.get('row_id')}" + (f" {what}" if what else "")
    if kind == "llm":
        err = f" · ERROR {d.get('error') or ''}" if d.get("status") == "error" else ""
        return (
            f"{d.get('purpose') or ''} · {d.get('model') or ''} · tokens {_n(d.get('tokens_in'))} in / "
            f"{_n(d.get('tokens_out'))} out · {_n(d.get('latency_ms'))} ms{err}"
        )
    if kind == "chunk" and isinstance(d.get("chunk"), int):
        out = d.get("words_out", d.get("words"))
        verdict = "" if d.get("passed") is None else (" · PASS" if d["passed"] else " · FAIL")
        return (
            f"chunk {d['chunk'] + 1} {action}"
            + (f" attempt {d['attempt']}" if d.get("attempt") else "")
            + f" · words {_n(d.get('words_in'))} → {_n(out)} / target {_n(d.get('target_words'))}{verdict}"
        )
    if kind == "length":
        where = f"chunk {d['chunk'] + 1}" if isinstance(d.get("chunk"), int) else str(d.get("scope"))
        limit = d.get("min_words", d.get("target_words"))
        return f"{where} · {_n(d.get('words'))} / {_n(limit)} words · {'PASS' if d.get('passed') else 'FAIL'}"
    if kind == "activity":
        ms = f" {d['duration_ms']} ms" if d.get("duration_ms") is not None else ""
        err = f" · {d['error']}" if d.get("error") else ""
        return f"{d.get('activity') or ''} (attempt {_n(d.get('attempt'))}){ms}{err}"
    return _short(json.dumps(d, ensure_ascii=False, separators=(",", ":")), 240)


# Characters that end a line for some readers (str.splitlines, editors): never raw in a TXT line.
_LINE_BREAKS = {c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", **_LINE_BREAKS}
_ESCAPE_RE = re.compile("[" + re.escape("".join(_ESCAPES)) + "]")


def _esc(s: str | None) -> str:
    if s is None:
        return "-"
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], s)


def _json_line(v: Any) -> str:
    # json.dumps escapes C0 controls; these it leaves raw (valid JSON either way).
    return _ESCAPE_RE.sub(
        lambda m: _LINE_BREAKS.get(m.group(), m.group()), json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    )


def txt_line(e: dict[str, Any], *, with_data: bool = True) -> str:
    """One event as a line of the TXT format: ``seq ts kind action table row summary data``,
    tab-separated; tabs, newlines and backslashes inside a field are escaped as \\t \\n \\\\ and a
    missing value is ``-``. ``with_data=False`` leaves the data column out (for display)."""
    cols = [
        str(e["seq"]),
        str(e["ts"]),
        str(e["kind"]),
        str(e["action"]),
        _esc(e.get("table_name")),
        _esc(e.get("row_id")),
        _esc(e.get("sql_text") if e["kind"] == "sql" else summary(e)),
    ]
    if with_data:
        cols.append(_json_line(e.get("data") or {}))
    return "\t".join(cols) + "\n"


def _unesc(s: str) -> str | None:
    if s == "-":
        return None
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            c = s[i + 1]
            if c == "u":
                out.append(chr(int(s[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(c, c))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_txt_line(line: str) -> dict[str, Any]:
    """The inverse of ``txt_line``: the event as the JSON formats give it."""
    seq, ts, kind, action, table, row, summ, data = line.rstrip("\n").split("\t", 7)
    return {
        "seq": int(seq),
        "ts": ts,
        "kind": kind,
        "action": action,
        "table_name": _unesc(table),
        "row_id": _unesc(row),
        "sql_text": _unesc(summ) if kind == "sql" else None,
        "data": json.loads(data),
    }


_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.kind,
    AuditEvent.action,
    AuditEvent.table_name,
    AuditEvent.row_id,
    AuditEvent.sql_text,
    AuditEvent.data,
)


def _event_row(r: Any) -> dict[str, Any]:
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
    q = select(*_COLUMNS).where(AuditEvent.job_id == job_id, AuditEvent.seq > after)
    if kinds:
        q = q.where(AuditEvent.kind.in_(kinds))
    async with db.tx() as s:
        rows = (await s.execute(q.order_by(AuditEvent.seq).limit(limit))).all()
    return [_event_row(r) for r in rows]


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


FEED_KEEP = 1000  # events a feed keeps for its streams (a stream further behind reads the table)


class Feed:
    """The live tail of one job's log, shared by every stream of that job in this process.

    On each notification one task reads the new events (``seq > last``) and the job's status,
    once, keeps the newest ``FEED_KEEP`` events serialised, and wakes the streams, which then send
    from memory: a commit costs two queries however many clients watch. A stream that is behind
    what the feed holds (its backlog, or a slow client) reads the table itself until it catches up.
    """

    def __init__(self, db: Database, job_id: uuid.UUID) -> None:
        self.db, self.job_id = db, job_id
        self.ready = False  # base/last are known
        self.base = 0  # the feed holds every event with base < seq <= last
        self.last = 0
        self.events: deque[tuple[int, str]] = deque()
        self.status: str | None = None
        self.wakes: set[asyncio.Event] = set()
        self._dirty = False
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """New events may have committed: fetch them (one fetch at a time; pokes meanwhile coalesce)."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._fetch_loop())

    def take(self, after: int) -> list[tuple[int, str]] | None:
        """The events after ``after`` as (seq, JSON), or None when the feed can't tell (not ready yet,
        or it no longer holds seq ``after + 1``): then the caller reads the table."""
        if not self.ready or after < self.base:
            return None
        if after >= self.last:
            return []
        return [ev for ev in self.events if ev[0] > after]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _fetch_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self._fetch()
            except Exception as exc:  # noqa: BLE001 - streams fall back to reading the table
                self.ready = False
                log.warning("audit.feed_fetch_failed", job_id=str(self.job_id), error=str(exc))
            for ev in list(self.wakes):
                ev.set()

    async def _fetch(self) -> None:
        async with self.db.tx() as s:
            if not self.ready:
                # Start at what has committed: older events are the streams' backlog, read by them.
                row = (await s.execute(select(Job.audit_seq, Job.status).where(Job.id == self.job_id))).first()
                self.base = self.last = row[0] if row else 0
                self.status = row[1] if row else None
                self.events.clear()
                self.ready = True
                return
            q = (
                select(*_COLUMNS)
                .where(AuditEvent.job_id == self.job_id, AuditEvent.seq > self.last)
                .order_by(AuditEvent.seq)
                .limit(FEED_KEEP)
            )
            rows = (await s.execute(q)).all()
            self.status = (await s.execute(select(Job.status).where(Job.id == self.job_id))).scalar_one_or_none()
        for r in rows:
            self.events.append((r[0], json.dumps(_event_row(r), ensure_ascii=False)))
            self.last = r[0]
        while len(self.events) > FEED_KEEP:
            self.base = self.events.popleft()[0]
        if len(rows) == FEED_KEEP:
            self._dirty = True  # more than one fetch's worth committed: go on


class AuditListener:
    """One LISTEN connection per API process; each notification pokes the feed of the job it names."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.url = plain_url(db.url)
        self.feeds: dict[uuid.UUID, Feed] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for feed in list(self.feeds.values()):
            await feed.close()

    def subscribe(self, job_id: uuid.UUID) -> tuple[Feed, asyncio.Event]:
        """Synchronous: a stream subscribes before it reads its backlog, so nothing is missed."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed(self.db, job_id)
            feed.poke()
        wake = asyncio.Event()
        feed.wakes.add(wake)
        return feed, wake

    def unsubscribe(self, feed: Feed, wake: asyncio.Event) -> None:
        feed.wakes.discard(wake)
        if not feed.wakes and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]  # a fetch under way finishes on its own

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.ready.set()
                    # A reconnect may have missed notifications: every feed looks again.
                    for feed in list(self.feeds.values()):
                        feed.poke()
                    async for n in conn.notifies():
                        job, _, _seq = n.payload.partition(":")
                        try:
                            watched = self.feeds.get(uuid.UUID(job))
                        except ValueError:
                            continue
                        if watched is not None:
                            watched.poke()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: retry; streams poll the table meanwhile
                self.ready.clear()
                log.warning("audit.listener_reconnect", error=str(exc))
                await asyncio.sleep(1.0)


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


WorkflowOpen = Callable[[], Awaitable[bool | None]]
POLL_S = 5.0  # re-read even without a notification (the listener may be reconnecting)
SETTLE_POLL_S = 0.2  # a finished job's writers are finishing: look again this often
SETTLE_MAX_S = 30.0  # end anyway this long after the job finished (a writer that died never ends)


async def stream(
    db: Database,
    listener: AuditListener,
    job_id: uuid.UUID,
    after: int,
    workflow_open: WorkflowOpen | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events of one job: the backlog after ``after``, then each event as it commits,
    then ``event: end`` once the job has finished and every writer of its log is done.

    The job's status turns terminal inside its last activity, before that activity's end record
    and before the workflow closes; so the stream ends only when the status is terminal, the
    workflow is closed (``workflow_open`` answers False) and every activity attempt in the log has
    its end record, then reads the log one last time."""
    feed, wake = listener.subscribe(job_id)  # before reading: nothing committed meanwhile is missed
    loop = asyncio.get_running_loop()
    try:
        last = after
        finished_at: float | None = None
        woken = False
        while True:
            wake.clear()
            tail = feed.take(last) if woken else None
            if tail is None:  # the backlog, a fallback poll, or a feed that can't tell: the table
                async for e in iter_events(db, job_id, last, None):
                    last = e["seq"]
                    yield {"id": str(last), "data": json.dumps(e, ensure_ascii=False)}
                status = await job_status(db, job_id)
            else:
                for seq, data in tail:
                    last = seq
                    yield {"id": str(seq), "data": data}
                status = feed.status
            if status is None:
                yield {"event": "end", "data": json.dumps({"reason": "deleted", "last_seq": last})}
                return
            if status in TERMINAL_STATUSES:
                finished_at = finished_at or loop.time()
                is_open = await workflow_open() if workflow_open is not None else False
                settled = is_open is False and await open_activities(db, job_id) <= 0
                if settled or loop.time() - finished_at >= SETTLE_MAX_S:
                    async for e in iter_events(db, job_id, last, None):  # what committed meanwhile
                        last = e["seq"]
                        yield {"id": str(last), "data": json.dumps(e, ensure_ascii=False)}
                    yield {"event": "end", "data": json.dumps({"status": status, "last_seq": last})}
                    return
                timeout = SETTLE_POLL_S
            else:
                timeout = POLL_S
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                woken = True
            except TimeoutError:
                woken = False
    finally:
        listener.unsubscribe(feed, wake)
