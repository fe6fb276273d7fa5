"""Model calls paid for are never lost: committed before the request, stored shielded from cancel;
answers stream in, with their time to first token, and a stream that stalls times out."""

from __future__ import annotations

import asyncio

import openai
import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from activities.llm_stream import sse_data
from core.errors import LlmUnavailable
from core.text import count_words
from db.models import AuditEvent, LlmCall
from testkit import make_job, until
from tests.conftest import make_llm


async def _wait_for(conn: psycopg.AsyncConnection, sql: str, params: tuple[object, ...], what: str) -> None:
    async def found() -> bool:
        return (await (await conn.execute(sql, params)).fetchone())[0] != 0  # type: ignore[index]

    await until(what, found, within=30)


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
            " AND query LIKE 'SELECT audit_seq, audit_head%%' AND %s = %s",
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


async def _calls(db, job_id) -> list[LlmCall]:
    async with db.tx() as s:
        return list(
            (await s.execute(select(LlmCall).where(LlmCall.job_id == job_id).order_by(LlmCall.attempt))).scalars().all()
        )


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_streamed_answer_records_its_time_to_first_token(db, fake, user):
    """The fake streams its first word at once and the rest at 400 tokens/s: the first token comes
    long before the last, and both are stored, with the usage the stream's last chunk gave."""
    fake.reset(ratio=(1.0, 1.0), tokens_per_s=400)
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake)
    ttft_count = _count("quire_model_time_to_first_token_seconds_count", model="fake-model")
    res = await llm.complete(
        job_id=job_id,
        purpose="write",
        request_key="ttft",
        messages=[{"role": "user", "content": "Write about 120 words."}],
        max_tokens=400,
    )
    await llm.close()
    (row,) = await _calls(db, job_id)
    body = fake.requests[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert row.status == "ok" and row.response == res.text and count_words(res.text) == 120
    assert not row.tokens_estimated and row.tokens_out == int(120 * 1.4)
    # 168 tokens at 400/s: ~0.4 s in all, the first word at once.
    assert 0 < row.ttft_ms < 100 < 350 < row.latency_ms
    assert _count("quire_model_time_to_first_token_seconds_count", model="fake-model") == ttft_count + 1
    async with db.tx() as s:
        event = (
            await s.execute(select(AuditEvent.data).where(AuditEvent.job_id == job_id, AuditEvent.kind == "llm"))
        ).scalar_one()
    assert event["ttft_ms"] == round(row.ttft_ms, 1) and event["tokens_estimated"] is False


async def test_a_stream_that_stalls_mid_way_times_out_and_is_asked_again(db, fake, user):
    fake.reset(hang_s=3.0)
    fake.inject("stall")  # its first word, then nothing for 3 s: longer than the call's 0.5 s
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake, timeout=0.5)
    timeouts = _count("quire_model_calls_total", model="fake-model", purpose="write", outcome="timeout")
    res = await llm.complete(
        job_id=job_id,
        purpose="write",
        request_key="stall",
        messages=[{"role": "user", "content": "Write about 60 words."}],
        max_tokens=200,
    )
    await llm.close()
    first, second = await _calls(db, job_id)
    assert first.status == "error" and first.error.startswith("LlmTimeout: the answer did not end within 0.5 s")
    assert first.http_status == 200 and first.ttft_ms is not None and first.response  # what came is kept
    assert 450 < first.latency_ms < 1500
    assert second.status == "ok" and second.response == res.text and res.call_id == second.id
    assert _count("quire_model_calls_total", model="fake-model", purpose="write", outcome="timeout") == timeouts + 1


async def test_a_stream_without_usage_is_estimated_and_a_broken_one_is_an_error(db, fake, user):
    """llama.cpp's server ignores include_usage: tokens are estimated and marked so. A stream that
    turns to garbage mid-way is recorded as an error with what came before it."""
    fake.reset(stream_usage=False)
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake)
    msgs = [{"role": "user", "content": "Write about 80 words."}]
    res = await llm.complete(job_id=job_id, purpose="write", request_key="nousage", messages=msgs, max_tokens=300)
    fake.inject("broken")
    with pytest.raises(Exception, match="Expecting property name") as broken:
        await llm.complete(job_id=job_id, purpose="write", request_key="broken", messages=msgs, max_tokens=300)
    assert not isinstance(broken.value, LlmUnavailable)  # not transient: Temporal retries the activity
    await llm.close()
    estimated, bad = await _calls(db, job_id)
    assert estimated.status == "ok" and estimated.tokens_estimated and estimated.ttft_ms is not None
    assert (estimated.tokens_in, estimated.tokens_out) == (len(msgs[0]["content"]) // 4, len(res.text) // 4)
    assert bad.status == "error" and "JSONDecodeError" in bad.error and bad.response and bad.http_status == 200


async def test_an_error_sent_mid_stream_is_recorded_with_what_came_before(db, fake, user):
    """Providers that fail mid-answer send ``data: {"error": ...}`` and end the stream: the call
    is an error with the provider's message and the words that had arrived, not a short answer."""
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake)
    msgs = [{"role": "user", "content": "Write about 80 words."}]
    fake.inject("error_event")
    with pytest.raises(openai.APIError, match="overloaded mid-answer"):
        await llm.complete(job_id=job_id, purpose="write", request_key="midstream", messages=msgs, max_tokens=300)
    await llm.close()
    (bad,) = await _calls(db, job_id)
    assert bad.status == "error" and "overloaded mid-answer" in bad.error and bad.http_status == 200
    assert bad.response and len(bad.response.split()) >= 1  # the first piece, kept


async def test_server_sent_events_are_read_as_the_spec_reads_them():
    """A stream is read line by line (not through the SDK's typed chunks): an event's data lines
    join, comments and other fields are no data, a final event without its blank line still counts."""

    async def lines(*xs: str):
        for x in xs:
            yield x

    got = [
        d
        async for d in sse_data(
            lines(": ping", "", "event: delta", 'data: {"a":', "data:1}", "", "id: 7", "retry: 10", "", "data: [DONE]")
        )
    ]
    assert got == ['{"a":\n1}', "[DONE]"]
