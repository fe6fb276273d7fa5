"""Model calls paid for are never lost: committed before the request, stored shielded from cancel."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlalchemy import select

from db.models import AuditEvent, LlmCall
from testkit import make_job
from tests.conftest import make_llm


async def _wait_for(conn: psycopg.AsyncConnection, sql: str, params: tuple[object, ...], what: str) -> None:
    deadline = time.monotonic() + 30
    while (await (await conn.execute(sql, params)).fetchone())[0] == 0:  # type: ignore[index]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_cancel_between_answer_and_commit_still_stores_the_answer(db, fake, user, pg_url):
    """The worker has the answer and is committing it (held up here by a lock on the job row)
    when its task is cancelled: the answer is stored all the same, then the cancel goes on."""
    fake.reset(delay_s=1.0)  # time to take the lock again between the request and the answer
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake)
    async with (
        await psycopg.AsyncConnection.connect(pg_url) as lock,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as watch,
    ):
        await lock.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        call = asyncio.create_task(
            llm.complete(
                job_id=job_id,
                purpose="write",
                request_key="k1",
                messages=[{"role": "user", "content": "Write about 40 words."}],
                max_tokens=100,
            )
        )
        # The pending row is written first, so the lock is released briefly for it: take it
        # again only once it is there.
        await lock.rollback()
        await _wait_for(watch, "SELECT count(*) FROM llm_calls WHERE job_id = %s", (job_id,), "pending row")
        await lock.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        await _wait_for(
            watch,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'UPDATE jobs SET audit_seq%%' AND %s = %s",
            (1, 1),
            "the answer's commit waits on the job row",
        )
        assert len(fake.requests) == 1  # answered: paid for
        call.cancel()
        await lock.rollback()  # the commit goes through
        with pytest.raises(asyncio.CancelledError):
            await call
    await llm.close()
    async with db.tx() as s:
        row = (await s.execute(select(LlmCall).where(LlmCall.job_id == job_id))).scalar_one()
        events = (
            (await s.execute(select(AuditEvent.action).where(AuditEvent.job_id == job_id, AuditEvent.kind == "llm")))
            .scalars()
            .all()
        )
    assert row.status == "ok" and row.response and row.completed_at is not None
    assert events == ["call"]


async def test_a_call_cut_off_by_a_dead_worker_is_marked_interrupted_and_asked_again(db, fake, user, pg_url):
    job_id = await make_job(db, user.user_id)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a worker killed mid-call leaves
        conn.execute(
            "INSERT INTO llm_calls (job_id, purpose, request_key, attempt, model, base_url, messages, status,"
            " started_at) VALUES (%s, 'write', 'k2', 1, 'fake-model', 'x', '[]', 'pending', now())",
            (job_id,),
        )
    llm = make_llm(db, fake)
    res = await llm.complete(
        job_id=job_id,
        purpose="write",
        request_key="k2",
        messages=[{"role": "user", "content": "Write about 30 words."}],
        max_tokens=80,
    )
    await llm.close()
    async with db.tx() as s:
        rows = (
            (await s.execute(select(LlmCall).where(LlmCall.job_id == job_id).order_by(LlmCall.attempt))).scalars().all()
        )
    assert [(r.attempt, r.status) for r in rows] == [(1, "error"), (2, "ok")]
    assert rows[0].error.startswith("interrupted") and res.call_id == rows[1].id
