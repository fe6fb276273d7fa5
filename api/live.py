"""The live audit stream: one LISTEN connection per API process, one shared feed per watched job,
and the server-sent-event generator of one client.

``AuditListener`` holds the process's one LISTEN connection; a notification names a job, whose
``Feed`` (one per watched job) reads ``seq > last`` once and wakes that job's streams. Seqs are
gap-free and commit in order, so reading ``seq > last`` after any notification, missed or merged,
never loses an event, and a stream sends each seq once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import structlog
from sqlalchemy import select

from api.metrics import SSE_SUBSCRIBERS
from core.spec import TERMINAL_STATUSES
from db.ddl import NOTIFY_CHANNEL
from db.models import AuditEvent, Job
from db.session import Database, plain_url
from services.logreader import COLUMNS, event_row, iter_events, job_status, open_activities

log = structlog.get_logger(__name__)

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
                select(*COLUMNS)
                .where(AuditEvent.job_id == self.job_id, AuditEvent.seq > self.last)
                .order_by(AuditEvent.seq)
                .limit(FEED_KEEP)
            )
            rows = (await s.execute(q)).all()
            self.status = (await s.execute(select(Job.status).where(Job.id == self.job_id))).scalar_one_or_none()
        for r in rows:
            self.events.append((r[0], json.dumps(event_row(r), ensure_ascii=False)))
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


WorkflowOpen = Callable[[], Awaitable[bool | None]]
Authorized = Callable[[], Awaitable[bool]]
AUTH_RECHECK_S = 5.0  # an open stream re-checks its API key this often: a revoked key ends it
POLL_S = 5.0  # re-read even without a notification (the listener may be reconnecting)
SETTLE_POLL_S = 0.2  # a finished job's writers are finishing: look again this often
SETTLE_MAX_S = 30.0  # end anyway this long after the job finished (a writer that died never ends)


async def stream(
    db: Database,
    listener: AuditListener,
    job_id: uuid.UUID,
    after: int,
    workflow_open: WorkflowOpen | None = None,
    authorized: Authorized | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events of one job: the backlog after ``after``, then each event as it commits,
    then ``event: end`` once the job has finished and every writer of its log is done.

    The job's status turns terminal inside its last activity, before that activity's end record
    and before the workflow closes; so the stream ends only when the status is terminal, the
    workflow is closed (``workflow_open`` answers False) and every activity attempt in the log has
    its end record, then reads the log one last time. A stream whose key is revoked meanwhile
    (``authorized`` answers False) ends with ``{"reason": "revoked"}`` and sends nothing more."""
    feed, wake = listener.subscribe(job_id)  # before reading: nothing committed meanwhile is missed
    loop = asyncio.get_running_loop()
    SSE_SUBSCRIBERS.inc()
    try:
        last = after
        finished_at: float | None = None
        woken = False
        checked = loop.time()
        while True:
            wake.clear()
            if authorized is not None and loop.time() - checked >= AUTH_RECHECK_S:
                checked = loop.time()
                if not await authorized():
                    yield {"event": "end", "data": json.dumps({"reason": "revoked", "last_seq": last})}
                    return
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
                timeout = min(POLL_S, AUTH_RECHECK_S) if authorized is not None else POLL_S
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                woken = True
            except TimeoutError:
                woken = False
    finally:
        SSE_SUBSCRIBERS.dec()
        listener.unsubscribe(feed, wake)
