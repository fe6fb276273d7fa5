"""Engine, sessions, and the audited job transaction.

``Database.job_tx(job_id)`` is the only way job data is written: everything it runs is captured
and written to ``audit_events`` in the same transaction, with seqs allocated under the job row's
lock (``SELECT ... FROM jobs ... FOR NO KEY UPDATE``, taken after the transaction's own work and held
to its commit) so that commit order equals seq order and a
reader tailing ``seq > last`` never skips a row. Under the same lock each event is chained to the
one before it (``core.eventformat.event_hash``) and the job row keeps the head, so the chain has no
more gaps than the seqs. A transaction that rolls back leaves its statements, events and error
in the log all the same: written right after the rollback, in a transaction of their own,
marked ``rolled_back``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from temporalio.service import RPCError, RPCStatusCode

from core import checkpoint
from core.errors import BudgetExhausted, ContinuityBroken, JobGone, JobNotRunnable, LlmUnavailable
from core.eventformat import CHAIN_VERSION, event_hash
from core.merkle import Frontier, leaf_entry
from core.quota import QuotaExceeded
from db.capture import CAPTURE_KEY, AuditBuffer, install_capture
from db.models import AuditCheckpoint
from db.values import Redactor
from metrics import AUDIT_EVENTS

log = structlog.get_logger(__name__)


def async_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def plain_url(url: str) -> str:
    """The libpq form of a URL (for psycopg connections made without SQLAlchemy)."""
    return "postgresql://" + async_url(url)[len("postgresql+psycopg://") :]


# Where a rollback's record goes when it cannot be written either (the database is gone): a task
# that sets a list here (the activity interceptor, services.temporal) gets (job id, events) to
# write once the database is back, instead of losing them.
UNRECORDED: ContextVar[list[tuple[uuid.UUID, list[dict[str, Any]]]] | None] = ContextVar("unrecorded", default=None)
CONNECT_TIMEOUT_S = 10  # a server that does not answer is an outage, not a hang
# The database being down, not a statement being wrong: a lost, refused or timed-out connection, a
# deadlock or a server shutting down (every DB-API OperationalError), a full pool, the network.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage of Quire's own infrastructure (the database, the network,
    Temporal unavailable: retried through a long window) rather than an error of the step (retried
    a few times, then the job fails).

    A model endpoint that keeps failing (``LlmUnavailable``) is not: its client has already retried
    every call, each retry is a recorded, paid-for request, and an endpoint that stays down (a wrong
    URL, a revoked key, a removed model) is a fault the user must see and fix (then ``quire resume``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(
            e, LlmUnavailable | BudgetExhausted | QuotaExceeded | JobGone | JobNotRunnable | ContinuityBroken
        ):
            return False
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, OUTAGE_ERRORS):
            return True
        if isinstance(e, RPCError) and e.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return True
        e = e.__cause__ or e.__context__
    return False


@dataclass
class StepEvents:
    """The audit interceptor's events of one activity attempt (services.temporal), written inside
    the step's own transactions rather than in transactions of their own: its ``start`` leads the
    first transaction the step commits for ``job_id`` (whose seq then names the step in every later
    event, ``data.activity_seq``), and its ``end`` closes the transaction the step marks final
    (``job_tx(..., final=True)``). What the step never wrote, the interceptor writes at the end."""

    job_id: uuid.UUID
    start: dict[str, Any]
    t0: float = field(default_factory=time.perf_counter)
    seq: int | None = None  # the start's seq, once committed
    leading: bool = False  # a transaction carrying the start is open
    ended: bool = False

    def end_data(self) -> dict[str, Any]:
        return {**self.start, "duration_ms": round((time.perf_counter() - self.t0) * 1000, 2), "outcome": "completed"}


# The activity attempt the current task runs (set by the interceptor; each attempt has its own task).
STEP: ContextVar[StepEvents | None] = ContextVar("quire_step", default=None)


class JobTx:
    """An open, audited transaction for one job."""

    def __init__(self, session: AsyncSession, buffer: AuditBuffer, final: bool = False) -> None:
        self.session = session
        self.buffer = buffer
        self.last_seq: int | None = None  # the seq of its last event, once committed
        # The step's last transaction: it carries the activity's ``end`` (see StepEvents). Set it
        # once the step knows (``tx.final = True``) so that nothing it does after commits alone.
        self.final = final

    @property
    def job_id(self) -> uuid.UUID:
        return self.buffer.job_id

    def event(self, kind: str, action: str, data: dict[str, Any] | None = None, **kw: Any) -> None:
        """Record a non-SQL event (llm, chunk, length, activity, error, ...) in this transaction."""
        self.buffer.add(kind, action, data, **kw)

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the log's head, locking the job row until commit: nothing is appended
        before this transaction's own events, so the head read here is the one they follow."""
        row = (
            await self.session.execute(
                text("SELECT audit_seq, audit_head FROM jobs WHERE id = :id FOR UPDATE"), {"id": self.job_id}
            )
        ).one_or_none()
        if row is None:
            raise JobGone(str(self.job_id))
        return int(row[0]), str(row[1])


class Database:
    """``signer``: the operator's checkpoint key (core.checkpoint; kept outside the database). With
    it, each write that ends a step, and at least every ``checkpoint_every`` events, signs a
    checkpoint of the job's log; without it (read-only tools) none are made."""

    def __init__(
        self,
        url: str,
        secrets: Iterable[str] = (),
        pool_size: int = 10,
        *,
        signer: checkpoint.SignerKey | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        self.url = url
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.redactor = Redactor(secrets)
        self.engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_size=pool_size,
            max_overflow=20,
            pool_pre_ping=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
        install_capture(self.engine.sync_engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """An unaudited transaction: account-level data and reads made by the audit viewer."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def job_tx(self, job_id: uuid.UUID, *, final: bool = False) -> AsyncIterator[JobTx]:
        step = STEP.get()
        if step is not None and step.job_id != job_id:
            step = None
        lead = step is not None and step.seq is None and not step.leading
        if lead:
            step.leading = True  # type: ignore[union-attr]
        buf = AuditBuffer(job_id=job_id, redactor=self.redactor, activity_seq=step.seq if step is not None else None)
        if lead:
            buf.add("activity", "start", step.start)  # type: ignore[union-attr]
        failed: BaseException | None = None
        async with self.sessions() as session:
            conn = await session.connection()
            info = conn.sync_connection.info  # type: ignore[union-attr]
            info[CAPTURE_KEY] = buf
            session.info[CAPTURE_KEY] = buf
            tx = JobTx(session, buf, final)
            try:
                yield tx
                await session.flush()
                buf.capturing = False
                if tx.final and step is not None and not step.ended:
                    buf.add("activity", "end", step.end_data())
                events = buf.finished()
                last = await write_events(session, job_id, events, self, lead=lead)
                await session.commit()
                tx.last_seq = last
                if lead:
                    step.seq = last - len(events) + 1 if last is not None else None  # type: ignore[union-attr]
                if tx.final and step is not None:
                    step.ended = True
                count_written(events)
            except BaseException as exc:
                failed = exc
                buf.capturing = False
                try:
                    await session.rollback()
                except Exception as rb:  # noqa: BLE001 - a lost connection: the server rolled it back
                    log.warning("audit.rollback_failed", job_id=str(job_id), error=str(rb))
            finally:
                buf.capturing = False
                info.pop(CAPTURE_KEY, None)
                session.info.pop(CAPTURE_KEY, None)
                if lead:
                    step.leading = False  # type: ignore[union-attr]
        if failed is not None:
            if isinstance(failed, Exception | asyncio.CancelledError) and not isinstance(failed, JobGone):
                await self._record_rollback(job_id, buf, failed, lead=lead)
            raise failed

    async def _record_rollback(
        self, job_id: uuid.UUID, buf: AuditBuffer, exc: BaseException, *, lead: bool = False
    ) -> None:
        """What a rolled-back transaction ran and why it failed, in a transaction of its own (the
        step's start first, when it led: the step still began)."""
        error = f"{type(exc).__name__}: {exc}"
        if buf.events and buf.events[-1]["kind"] == "activity" and buf.events[-1]["action"] == "end":
            buf.events.pop()  # the step did not end here
        buf.add("error", "rollback", {"error_type": type(exc).__name__, "statements": _statements(buf)})
        buf.events[-1]["data"]["error"] = self.redactor.text(error)  # whole, however long
        events = buf.finished(rolled_back=True)
        if lead:
            events[0]["data"].pop("rolled_back", None)  # the start itself happened
        step = STEP.get()
        try:
            last = await self.record_events(job_id, events, lead=lead)
            if lead and step is not None and last is not None and step.seq is None:
                step.seq = last - len(events) + 1
        except JobGone:
            pass
        except Exception as rec:  # noqa: BLE001 - never hide the original error behind this one
            sink = UNRECORDED.get()
            if sink is not None:
                sink.append((job_id, events))
            log.error(
                "audit.rollback_not_recorded", job_id=str(job_id), error=error, why=str(rec), kept=sink is not None
            )

    async def record_events(self, job_id: uuid.UUID, events: list[dict[str, Any]], *, lead: bool = False) -> int | None:
        """Append finished events (``AuditBuffer.finished``) to a job's log in a transaction of their
        own; the seq of the last. ``lead``: the first is a step's start, which the others name."""
        async with self.sessions() as session, session.begin():
            last = await write_events(session, job_id, events, self, lead=lead)
        count_written(events)
        return last


def count_written(events: list[dict[str, Any]]) -> None:
    """Count committed events in this process's metrics (after the commit: a rollback wrote none)."""
    for kind, n in Counter(e["kind"] for e in events).items():
        AUDIT_EVENTS.labels(kind).inc(n)


def _statements(buf: AuditBuffer) -> int:
    return sum(1 for e in buf.events if e["kind"] == "sql")


async def write_events(
    session: AsyncSession,
    job_id: uuid.UUID,
    events: list[dict[str, Any]],
    db: Database | None = None,
    *,
    lead: bool = False,
) -> int | None:
    """Append ``events`` to the job's log, chained and in its Merkle tree, with a signed checkpoint
    when one is due (``db.signer``); returns the seq of the last (None when there are none).
    ``lead``: ``events[0]`` is a step's start, and every other event names its seq (activity_seq)."""
    if not events:
        return None
    # The row lock taken here is held to commit: concurrent writers of one job commit in seq order,
    # and each writer's events follow the head the one before it left. One lock, one UPDATE, then
    # the inserts: an UPDATE of the row after rows referencing it were inserted (their foreign keys
    # lock it FOR KEY SHARE) would have to queue behind any waiter for the row (a resume, a
    # cancel), who waits for this transaction: a deadlock.
    row = (
        await session.execute(
            text(
                "SELECT audit_seq, audit_head, audit_frontier, audit_signed FROM jobs WHERE id = :id FOR NO KEY UPDATE"
            ),
            {"id": job_id},
        )
    ).one_or_none()
    if row is None:
        raise JobGone(str(job_id))
    first, head, stored, signed = int(row[0]) + 1, str(row[1]), row[2], int(row[3])
    last = first + len(events) - 1
    tree = await _frontier(session, job_id, first - 1, stored)
    rows = []
    for i, ev in enumerate(events):
        if lead and i:
            ev = dict(ev, data={**ev["data"], "activity_seq": first})
        r = dict(ev, job_id=job_id, seq=first + i, prev_hash=head, chain=CHAIN_VERSION)
        head = r["hash"] = event_hash(head, r)
        tree.append(leaf_entry(head))
        rows.append(r)
    signer = db.signer if db is not None else None
    note = None
    if signer is not None and checkpoint.due(events, last - signed, db.checkpoint_every):  # type: ignore[union-attr]
        root = tree.root()
        note = AuditCheckpoint(
            job_id=job_id,
            tree_size=last,
            root=root.hex(),
            key_id=f"{signer.name}+{signer.verifier.id_hex}",
            note=signer.sign(checkpoint.body(job_id, last, root)),
        )
        signed = last
    await session.execute(
        text(
            "UPDATE jobs SET audit_seq = :seq, audit_head = :h, audit_frontier = :f, audit_signed = :s WHERE id = :id"
        ),
        {"seq": last, "h": head, "f": tree.to_text(), "s": signed, "id": job_id},
    )
    await _copy_events(session, rows)
    if note is not None:
        session.add(note)
    return last


# The events go in by COPY on the transaction's own connection: one round trip, and none of the
# ORM's per-row work (this runs in every audited transaction). Not captured: it is the log itself.
_EVENT_COLUMNS = (
    "job_id",
    "seq",
    "ts",
    "kind",
    "action",
    "table_name",
    "row_id",
    "sql_text",
    "data",
    "prev_hash",
    "hash",
    "chain",
)
_COPY_EVENTS = f"COPY audit_events ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"


async def _copy_events(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    async with raw.cursor() as cur, cur.copy(_COPY_EVENTS) as copy:
        for r in rows:
            await copy.write_row(tuple(Jsonb(r[c]) if c == "data" else r[c] for c in _EVENT_COLUMNS))


async def _frontier(session: AsyncSession, job_id: uuid.UUID, size: int, stored: str | None) -> Frontier:
    """The log's tree as the job row keeps it; for a log written before it was kept, rebuilt once
    from its hashes (the leaves)."""
    if stored is not None:
        return Frontier.from_text(size, stored)
    tree = Frontier()
    if size:
        hashes = await session.execute(
            text("SELECT hash FROM audit_events WHERE job_id = :j ORDER BY seq"), {"j": job_id}
        )
        tree.extend(leaf_entry(h) for (h,) in hashes)
    return tree
