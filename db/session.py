"""Engine, sessions, and the audited job transaction.

``Database.job_tx(job_id)`` is the only way job data is written: everything it runs is captured
and written to ``audit_events`` in the same transaction, with seqs allocated under the job row's
lock (``SELECT ... FROM jobs ... FOR NO KEY UPDATE``, taken after the transaction's own work and held
to its commit) so that commit order equals seq order and a
reader tailing ``seq > last`` never skips a row. Under the same lock each event is chained to the
one before it (``core.eventformat.event_hash``) and the job row keeps the head, so the chain has no
more gaps than the seqs. A transaction that rolls back leaves its statements, events and error
in the log all the same: written right after the rollback, in a transaction of their own,
marked ``rolled_back``. A commit that fails may have landed all the same (the connection lost on
COMMIT): whether it did is read (under the job row's lock, which it held to its end) before anything
is written again, so each event is written once, as committed or as rolled back; when that cannot
be read yet, the record waits until it can (``pending``, or the activity's next attempt).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from core import checkpoint
from core.errors import JobGone
from db.capture import CAPTURE_KEY, AuditBuffer, install_capture
from db.logwrite import HEAD_KEY, LOCK_SQL, write_events
from db.models import Job
from db.signer import Refusal, Signer
from db.values import Redactor
from db.witness import WitnessClient
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
# write once the database is back, instead of losing them; with (seq, hash) when the transaction's
# commit failed ambiguously: the record is written only if that commit did not land after all.
Unrecorded = tuple[uuid.UUID, list[dict[str, Any]], tuple[int, str] | None]
UNRECORDED: ContextVar[list[Unrecorded] | None] = ContextVar("unrecorded", default=None)
CONNECT_TIMEOUT_S = 10  # a server that does not answer is an outage, not a hang


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


# The one mode a job's row is locked in, by every writer (``lock_job``, ``JobTx.head``,
# ``write_events``): FOR NO KEY UPDATE serialises the writers of a job without blocking the rows
# they insert under it (their foreign keys take KEY SHARE). A FOR UPDATE waits for those, while
# their own transactions wait for it at their ``write_events``: a deadlock (see there).
JOB_LOCK = {"key_share": True}


async def lock_job(session: AsyncSession, job_id: uuid.UUID) -> Job | None:
    """The job's row, read afresh under its lock (held to commit); None if it is deleted."""
    return await session.get(Job, job_id, with_for_update=JOB_LOCK, populate_existing=True)


# The activity attempt the current task runs (set by the interceptor; each attempt has its own task).
STEP: ContextVar[StepEvents | None] = ContextVar("quire_step", default=None)


class JobTx:
    """An open, audited transaction for one job."""

    def __init__(self, session: AsyncSession, buffer: AuditBuffer, final: bool = False) -> None:
        self.session = session
        self.buffer = buffer
        self.last_seq: int | None = None  # the seq of its last event, once committed
        self.download = False  # a download's write: it signs a checkpoint marked ``download``
        self.alarms: list[Refusal] = []  # checkpoints refused while it wrote (an alarm each)
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
        """(seq, hash) of the log's head, locking the job row until commit (``JOB_LOCK``'s mode):
        nothing is appended before this transaction's own events, so the head read here is the one
        they follow."""
        row = (
            await self.session.execute(
                text(f"SELECT audit_seq, audit_head FROM jobs WHERE id = :id {LOCK_SQL}"), {"id": self.job_id}
            )
        ).one_or_none()
        if row is None:
            raise JobGone(str(self.job_id))
        return int(row[0]), str(row[1])


class Database:
    """``signer``: the operator's checkpoint key (core.checkpoint; kept outside the database). With
    it, each write that ends a step, and at least every ``checkpoint_every`` events (every write once
    the job has ended), signs a checkpoint of the job's log, submitted first to ``witnesses``
    (``db.witness``; ``witness_quorum`` of them must cosign for it to count as witnessed); without
    it (read-only tools) none are made. ``on_alarm`` is called after the commit of a write whose
    checkpoint was refused (``db.signer.Refusal``): the API and the worker tell the job's owner."""

    def __init__(
        self,
        url: str,
        secrets: Iterable[str] = (),
        pool_size: int = 10,
        *,
        signer: checkpoint.SignerKey | None = None,
        checkpoint_every: int = 1000,
        witnesses: Sequence[WitnessClient] = (),
        witness_quorum: int | None = None,
    ) -> None:
        self.url = url
        self.signer = Signer(signer, checkpoint_every, list(witnesses), witness_quorum) if signer is not None else None
        self.on_alarm: Callable[[uuid.UUID, Refusal], Awaitable[None]] | None = None
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
        # Records of rolled-back transactions the database could not take outside an activity:
        # written before this process next writes their job (``write_pending``), or at dispose.
        self.pending: list[Unrecorded] = []

    async def dispose(self) -> None:
        try:
            await self.write_pending()
        except Exception as exc:  # noqa: BLE001 - still unwritable: said, not hidden
            log.error("audit.pending_lost", records=len(self.pending), why=str(exc))
        for w in self.signer.witnesses if self.signer is not None else ():
            await w.close()
        await self.engine.dispose()

    async def _alarmed(self, job_id: uuid.UUID, alarms: list[Refusal]) -> None:
        """Tell whoever listens of checkpoints refused in a committed write (never failing the write)."""
        for refusal in alarms if self.on_alarm is not None else ():
            try:
                await self.on_alarm(job_id, refusal)  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - the alarm is in the log and the metrics already
                log.error("audit.alarm_not_sent", job_id=str(job_id), error=f"{type(exc).__name__}: {exc}")

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
        if self.pending:
            await self.write_pending(job_id)  # an earlier transaction's record first, once
        failed: BaseException | None = None
        written: tuple[int, str] | None = None  # (last seq, its hash): what a commit that failed may have landed
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
                await write_events(
                    session, job_id, events, self.signer, lead=lead, download=tx.download, alarms=tx.alarms
                )
                written = session.info.pop(HEAD_KEY, None)
                await session.commit()
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
        # A commit that failed may have landed all the same (the connection lost on COMMIT): read
        # whether it did before anything is written again, so that no event is written twice.
        committed, check = failed is None, written if failed is not None else None
        if check is not None and isinstance(failed, Exception | asyncio.CancelledError):
            landed = await self._landed_or_unknown(job_id, check)
            if landed:
                log.warning("audit.commit_ambiguous_landed", job_id=str(job_id), seq=check[0], error=str(failed))
                # Committed: a cancel that came with it still stands; an error of the commit does not.
                committed, check = True, None
                failed = failed if isinstance(failed, asyncio.CancelledError) else None
            elif landed is False:
                check = None  # it did not: the record of its rollback is the only one
        if committed:
            last = written[0] if written else None
            tx.last_seq = last
            if lead:
                step.seq = last - len(events) + 1 if last is not None else None  # type: ignore[union-attr]
            if tx.final and step is not None:
                step.ended = True
            count_written(events)
            await self._alarmed(job_id, tx.alarms)
            if failed is not None:
                raise failed
            return
        if isinstance(failed, Exception | asyncio.CancelledError) and not isinstance(failed, JobGone):
            await self._record_rollback(job_id, buf, failed, lead=lead, check=check)
        raise failed  # type: ignore[misc]

    async def landed(self, job_id: uuid.UUID, written: tuple[int, str]) -> bool:
        """Whether the transaction that wrote seq ``written[0]`` with hash ``written[1]`` committed.
        Read under the job row's lock, which that transaction held to its end: the answer waits for
        it to be over, committed or rolled back, on the server."""
        async with self.sessions() as s, s.begin():
            await s.execute(text("SET LOCAL lock_timeout = '30s'"))
            if (await s.execute(text(f"SELECT 1 FROM jobs WHERE id = :j {LOCK_SQL}"), {"j": job_id})).first() is None:
                return False  # deleted since: nothing of it is left to write twice
            found = await s.scalar(
                text("SELECT hash FROM audit_events WHERE job_id = :j AND seq = :s"), {"j": job_id, "s": written[0]}
            )
            return bool(found == written[1])

    async def _landed_or_unknown(self, job_id: uuid.UUID, written: tuple[int, str]) -> bool | None:
        try:
            return await self.landed(job_id, written)
        except Exception as exc:  # noqa: BLE001 - the database still gone: asked again before the record is written
            log.warning("audit.commit_ambiguous_unknown", job_id=str(job_id), seq=written[0], why=str(exc))
            return None

    async def write_pending(self, job_id: uuid.UUID | None = None) -> None:
        """Write the records this process kept because the database could not take them (outside an
        activity, whose retry carries them instead: services.temporal), oldest first, each once: one
        whose transaction's commit was ambiguous is dropped if that commit landed after all."""
        for item in [i for i in self.pending if job_id is None or i[0] == job_id]:
            jid, events, check = item
            if check is None or not await self.landed(jid, check):
                try:
                    await self._record(jid, events)
                except JobGone:
                    pass
            self.pending.remove(item)

    async def _record_rollback(
        self,
        job_id: uuid.UUID,
        buf: AuditBuffer,
        exc: BaseException,
        *,
        lead: bool = False,
        check: tuple[int, str] | None = None,
    ) -> None:
        """What a rolled-back transaction ran and why it failed, in a transaction of its own (the
        step's start first, when it led: the step still began). ``check``: its commit failed and
        whether it landed is not known yet; the record is kept until it is."""
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
            if check is not None:
                raise ConnectionError("whether its commit landed is not known yet")
            last = await self.record_events(job_id, events, lead=lead)
            if lead and step is not None and last is not None and step.seq is None:
                step.seq = last - len(events) + 1
        except JobGone:
            pass
        except Exception as rec:  # noqa: BLE001 - never hide the original error behind this one
            sink = UNRECORDED.get()  # an activity's: its next attempt writes it (services.temporal)
            (sink if sink is not None else self.pending).append((job_id, events, check))
            log.error("audit.rollback_not_recorded", job_id=str(job_id), error=error, why=str(rec), kept=True)

    async def record_events(self, job_id: uuid.UUID, events: list[dict[str, Any]], *, lead: bool = False) -> int | None:
        """Append finished events (``AuditBuffer.finished``) to a job's log in a transaction of their
        own; the seq of the last. ``lead``: the first is a step's start, which the others name."""
        if self.pending:
            await self.write_pending(job_id)
        return await self._record(job_id, events, lead=lead)

    async def _record(self, job_id: uuid.UUID, events: list[dict[str, Any]], *, lead: bool = False) -> int | None:
        alarms: list[Refusal] = []
        async with self.sessions() as session, session.begin():
            last = await write_events(session, job_id, events, self.signer, lead=lead, alarms=alarms)
        count_written(events)
        await self._alarmed(job_id, alarms)
        return last


def count_written(events: list[dict[str, Any]]) -> None:
    """Count committed events in this process's metrics (after the commit: a rollback wrote none)."""
    for kind, n in Counter(e["kind"] for e in events).items():
        AUDIT_EVENTS.labels(kind).inc(n)


def _statements(buf: AuditBuffer) -> int:
    return sum(1 for e in buf.events if e["kind"] == "sql")
