"""Engine, sessions, and the audited job transaction.

``Database.job_tx(job_id)`` is the only way job data is written: everything it runs is captured
and written to ``audit_events`` in the same transaction, with seqs allocated under the job row's
lock (``UPDATE jobs SET audit_seq = audit_seq + n``) so that commit order equals seq order and a
reader tailing ``seq > last`` never skips a row.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from db.audit import CAPTURE_KEY, AuditBuffer, Redactor, install_capture
from db.models import AuditEvent


def async_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def plain_url(url: str) -> str:
    """The libpq form of a URL (for psycopg connections made without SQLAlchemy)."""
    return "postgresql://" + async_url(url)[len("postgresql+psycopg://") :]


class JobGone(Exception):
    """The job row no longer exists (the user deleted it): nothing more is written for it."""


class JobTx:
    """An open, audited transaction for one job."""

    def __init__(self, session: AsyncSession, buffer: AuditBuffer) -> None:
        self.session = session
        self.buffer = buffer

    @property
    def job_id(self) -> uuid.UUID:
        return self.buffer.job_id

    def event(self, kind: str, action: str, data: dict[str, Any] | None = None, **kw: Any) -> None:
        """Record a non-SQL event (llm, chunk, length, activity, error, ...) in this transaction."""
        self.buffer.add(kind, action, data, **kw)


class Database:
    def __init__(self, url: str, secrets: Iterable[str] = (), pool_size: int = 10) -> None:
        self.url = url
        self.redactor = Redactor(secrets)
        self.engine: AsyncEngine = create_async_engine(
            async_url(url), pool_size=pool_size, max_overflow=20, pool_pre_ping=True
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
    async def job_tx(self, job_id: uuid.UUID) -> AsyncIterator[JobTx]:
        buf = AuditBuffer(job_id=job_id, redactor=self.redactor)
        async with self.sessions() as session:
            conn = await session.connection()
            info = conn.sync_connection.info  # type: ignore[union-attr]
            info[CAPTURE_KEY] = buf
            session.info[CAPTURE_KEY] = buf
            try:
                yield JobTx(session, buf)
                await session.flush()
                buf.capturing = False
                await write_events(session, job_id, buf.events)
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
            finally:
                buf.capturing = False
                info.pop(CAPTURE_KEY, None)
                session.info.pop(CAPTURE_KEY, None)


async def write_events(session: AsyncSession, job_id: uuid.UUID, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    # The row lock taken here is held to commit: concurrent writers of one job commit in seq order.
    last = (
        await session.execute(
            text("UPDATE jobs SET audit_seq = audit_seq + :n WHERE id = :id RETURNING audit_seq"),
            {"n": len(events), "id": job_id},
        )
    ).scalar_one_or_none()
    if last is None:
        raise JobGone(str(job_id))
    first = last - len(events) + 1
    rows = [dict(ev, job_id=job_id, seq=first + i) for i, ev in enumerate(events)]
    await session.execute(insert(AuditEvent), rows)
