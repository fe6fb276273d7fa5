"""Trust: no paid answer lost, no quota bypass, no side doors (issue 20's findings, one test each)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import uuid

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

import testkit
from api.app import create_app
from api.limits import StreamSlots
from api.live import AuditListener
from core.eventformat import parse_txt_line, txt_line
from core.quota import QuotaExceeded
from core.spec import JobSpec
from core.webhooks import WebhookPolicy, delivery_error
from db.models import AccountEvent, LlmCall
from db.session import Database
from quire.remote import event_line
from services import jobs, logreader
from services.config import load_settings
from testkit import make_job, until
from tests.conftest import api_settings, make_llm
from tests.helpers import FAST, TASK_QUEUE, arun, auth, job_row, output, set_quotas, submit, wait
from workflows.steps import Durability

pytestmark = pytest.mark.usefixtures("worker")
CONTROLS = "\x1b]0;pwned\x07\x1b[31mred\x9b2J\x00"


# --- 1. no paid answer lost ------------------------------------------------------------------


async def test_a_model_that_writes_nul_bel_and_escapes_neither_fails_the_job_nor_reaches_the_document(
    db, client, fake, user
):
    fake.reset(mode="controls")
    jid = await submit(db, client, user, kind="generate", prompt="Canal boats", target_words=600)
    assert await wait(client, jid) == "succeeded"
    doc = await output(db, jid)
    assert doc is not None and not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", doc.text)
    async with db.tx() as s:
        calls = (await s.execute(select(LlmCall).where(LlmCall.job_id == jid))).scalars().all()
    kept = [c for c in calls if c.response_raw is not None]
    assert kept and all(b"\x00" in c.response_raw and "\u2400" in c.response for c in kept)  # exact, and shown
    assert any("\x1b[31m" in (c.response or "") for c in calls)  # the record keeps what came, escapes too
    assert all(c.status != "pending" and c.tokens_in is not None for c in calls)
    v = await logreader.verify(db, jid)
    assert v.intact, v.reason


async def test_an_upstream_error_with_nul_and_escapes_fails_the_job_with_a_readable_reason(
    db, client, fake, user, api_url
):
    """An endpoint's error carrying NUL, a screen clear, a window title and a bell: the job fails
    (it is not left running, its reason unstorable), its reason says what came, escaped, and no
    terminal that shows it gets a raw control byte."""
    fake.reset(mode="error_event", error_message="upstream \x00 broke \x1b[2J\x1b]0;pwned\x07 here " + "x" * 9000)
    job_, _ = await jobs.submit(
        db, client, user_id=user.user_id, user_name=user.name, spec=JobSpec(kind="generate", prompt="Quays",
        target_words=60), task_queue=TASK_QUEUE, default_model="fake-model", durability=FAST,
    )  # fmt: skip
    jid = job_.id
    assert (await wait(client, jid)).startswith("failed")
    job = await job_row(db, jid)
    assert job.status == "failed" and job.error_code is not None
    assert "upstream \\u0000 broke \\u001b[2J\\u001b]0;pwned\\u0007 here" in job.failure_reason
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", job.failure_reason)
    assert "more characters cut]" in job.failure_reason and len(job.failure_reason) < 4100  # capped
    env = {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": user.api_key, "QUIRE_HOME": "/nonexistent"}
    code, out, err = await arun("status", str(jid), env=env)
    assert code == 1 and "upstream \\u0000 broke" in out
    code, out2, err2 = await arun("output", str(jid), env=env)
    assert code != 0 and "upstream \\u0000 broke" in err2
    for text in (out, err, out2, err2):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text[:300])


async def test_an_answer_is_stored_through_a_database_blip(db, fake, user, pg_url):
    """The answer's commit loses its connection (a Postgres blip): it is written again, not lost."""
    fake.reset(delay_s=0.5)
    job_id = await make_job(db, user.user_id)
    llm = make_llm(db, fake)
    async with (
        await psycopg.AsyncConnection.connect(pg_url) as lock,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as watch,
    ):
        call = asyncio.create_task(
            llm.complete(
                job_id=job_id, purpose="write", request_key="blip",
                messages=[{"role": "user", "content": "Write about 30 words."}], max_tokens=100,
            )
        )  # fmt: skip

        async def pending() -> bool:
            q = "SELECT count(*) FROM llm_calls WHERE job_id = %s"
            return (await (await watch.execute(q, (job_id,))).fetchone())[0] == 1  # type: ignore[index]

        await until("the pending row", pending, within=30)
        await lock.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        waiting: list[int] = []

        async def close_waits() -> bool:
            rows = await (
                await watch.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'SELECT audit_seq, audit_head%%'"
                )
            ).fetchall()
            waiting[:] = [r[0] for r in rows]
            return bool(waiting)

        await until("the answer's commit waits on the job row", close_waits, within=30)
        await watch.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))  # the blip
        await lock.rollback()
        res = await call
    await llm.close()
    async with db.tx() as s:
        row = (await s.execute(select(LlmCall).where(LlmCall.job_id == job_id))).scalar_one()
    assert row.status == "ok" and row.response == res.text and row.tokens_out


async def test_a_call_cut_off_by_a_dead_worker_still_counts_its_tokens(db, fake, user, pg_url):
    job_id = await make_job(db, user.user_id)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a worker killed mid-call leaves
        conn.execute(
            "INSERT INTO llm_calls (job_id, purpose, request_key, attempt, model, base_url, messages, params, status,"
            " started_at) VALUES (%s, 'write', 'cut', 1, 'fake-model', 'x', %s, '{\"max_tokens\": 300}', 'pending',"
            " now())",
            (job_id, json.dumps([{"role": "user", "content": "x" * 400}])),
        )
    llm = make_llm(db, fake)
    await llm.complete(
        job_id=job_id, purpose="write", request_key="cut", messages=[{"role": "user", "content": "Write."}],
        max_tokens=300,
    )  # fmt: skip
    await llm.close()
    async with db.tx() as s:
        cut = (await s.execute(select(LlmCall).where(LlmCall.job_id == job_id, LlmCall.attempt == 1))).scalar_one()
    assert cut.error.startswith("interrupted") and cut.tokens_estimated
    assert (cut.tokens_in, cut.tokens_out) == (100, 300) and cut.cost_micro_usd is not None


# --- 2. resume goes through the quotas -------------------------------------------------------


async def test_resume_is_held_to_the_concurrent_jobs_quota_like_a_submit(db, client, fake, user):
    fake.reset(delay_s=0.3)  # keeps B running
    await set_quotas(db, user, concurrent_jobs=1)
    a = await submit(db, client, user, kind="generate", prompt="Owls", target_words=3000)
    await jobs.cancel(db, client, await job_row(db, a))
    assert (await wait(client, a)).startswith("failed")
    b = await submit(db, client, user, kind="generate", prompt="Bats", target_words=3000)
    with pytest.raises(QuotaExceeded, match="concurrent-jobs quota of 1 reached"):
        await jobs.resume(db, client, a, user_name=user.name, task_queue=TASK_QUEUE, durability=jobs.Durability())
    assert (await job_row(db, a)).status == "cancelled"
    await jobs.cancel(db, client, await job_row(db, b))
    await wait(client, b)


# --- 3. webhooks: no loopback unless the operator says so; no oracle in the errors ------------


def test_the_embedded_stack_refuses_loopback_webhooks_unless_the_operator_allows_them(monkeypatch):
    for name in ("DATABASE_URL", "QUIRE_WEBHOOK_ALLOW_LOOPBACK"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings(database_url=None).webhook_policy.allow_loopback is False
    assert load_settings(database_url=None, quire_webhook_allow_loopback=True).webhook_policy.allow_loopback


def test_ipv6_forms_of_refused_ipv4_addresses_are_refused():
    policy = WebhookPolicy()
    for form in ("2002:7f00:1::1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a9fe:a9fe", "::ffff:10.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(form)) is not None, form
    assert policy.refusal(ipaddress.ip_address("64:ff9b::5db8:d822")) is None  # NAT64 of a public address
    assert "127.0.0.1" in (policy.refusal(ipaddress.ip_address("2002:7f00:1::1")) or "")


def test_delivery_errors_are_classes_not_the_raw_text():
    refused = httpx.ConnectError("[Errno 111] Connection refused to 127.0.0.1:5432")
    assert delivery_error(refused, None) == "could not connect"
    assert delivery_error(httpx.ReadTimeout("timed out"), None) == "no answer in time"
    assert delivery_error(None, 502) == "HTTP 502" and delivery_error(None, 204) is None


# --- 5. the job row ends with its workflow, whatever the outage ------------------------------


async def test_the_step_that_ends_a_failed_job_outlives_any_outage(db, client, fake, user):
    """The step that marks a job failed (or cancelled) has no retry window: an outage longer than
    the job's window (which ends the step in flight) cannot also end it, leaving the job 'running'
    for ever (resume 409, cancel 409, a quota slot held). Temporal's own record says so."""
    fake.reset(mode="down")  # the endpoint is down: the job fails with E_LLM_UNAVAILABLE
    job = await testkit.submit(
        db, client, TASK_QUEUE, 40, user=user, durability=Durability(outage_window_s=60, retry_max_s=0.1)
    )
    assert (await wait(client, job.id)).startswith("failed")
    row = await job_row(db, job.id)
    assert row.status == "failed" and row.error_code == "E_LLM_UNAVAILABLE"
    windows: dict[str, float] = {}
    async for ev in client.get_workflow_handle(job.workflow_id).fetch_history_events():
        if ev.HasField("activity_task_scheduled_event_attributes"):
            a = ev.activity_task_scheduled_event_attributes
            windows[a.activity_type.name] = a.schedule_to_close_timeout.ToTimedelta().total_seconds()
    assert windows["fail_job"] == 0 and windows["plan_job"] >= 60, windows  # 0: none, retried until it lands
    fake.reset()
    resumed = await jobs.resume(db, client, job.id, user_name=user.name, task_queue=TASK_QUEUE, durability=FAST)
    assert resumed.status == "running"


# --- 6. no terminal escapes in text outputs --------------------------------------------------


def test_txt_lines_and_cli_lines_carry_no_control_characters():
    e = {
        "seq": 3,
        "ts": "2026-11-23T14:05:30.271690Z",
        "kind": "llm",
        "action": "error",
        "table_name": None,
        "row_id": None,
        "sql_text": None,
        "data": {"status": "error", "error": f"APIError: {CONTROLS}", "purpose": "write"},
        "chain": 2,
        "job_id": str(uuid.uuid4()),
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    line = txt_line(e)
    assert not any(ord(c) < 0x20 and c not in "\t\n" or 0x7F <= ord(c) <= 0x9F for c in line)
    assert line.endswith("\t" + "0" * 64 + "\t" + "1" * 64 + "\n")  # hashes last, where a reader can hide them
    back = parse_txt_line(line)
    assert back == e  # lossless: each control written \uXXXX
    shown = event_line(e)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown) and "\\u001b" in shown


# --- 9. Idempotency-Key: a racing loser gets 409 ---------------------------------------------


async def test_a_racing_submit_with_the_same_key_and_another_body_gets_409(http, db, client, user):
    key = {"Idempotency-Key": f"race-{uuid.uuid4().hex[:6]}"}
    bodies = [{"kind": "generate", "prompt": p, "target_words": 40} for p in ("Moss", "Lichen")]
    rs = await asyncio.gather(*(http.post("/v1/jobs", json=b, headers={**auth(user), **key}) for b in bodies))
    assert sorted(r.status_code for r in rs) == [202, 409], [r.text for r in rs]
    # The loser arriving after the winner's row committed (what a race comes to) is refused the same.
    spec = JobSpec(kind="generate", prompt="Fern", target_words=40)
    with pytest.raises(jobs.IdempotencyConflict):
        await jobs.submit(
            db, client, user_id=user.user_id, user_name=user.name, spec=spec, task_queue=TASK_QUEUE,
            default_model="fake-model", idempotency_key=key["Idempotency-Key"],
        )  # fmt: skip
    winner = next(r for r in rs if r.status_code == 202).json()["id"]
    await until("the winner ends", lambda: _ended(db, winner), within=60)


async def _ended(db, jid: str) -> bool:  # type: ignore[no-untyped-def]
    return (await job_row(db, uuid.UUID(jid))).status in ("succeeded", "failed", "cancelled")


async def _account_rows(db, user_id: int | None = None) -> int:  # type: ignore[no-untyped-def]
    async with db.tx() as s:
        q = select(func.count()).select_from(AccountEvent)
        q = q.where(AccountEvent.user_id.is_(None)) if user_id is None else q.where(AccountEvent.user_id == user_id)
        return int((await s.execute(q)).scalar_one())


# --- 4. bounded live streams, rate limits, no row per bad key ---------------------------------


def _app(db, client, settings):  # type: ignore[no-untyped-def]
    """The real app over ``db``, with what its lifespan would set (no LISTEN connection started)."""
    app = create_app(settings, db=db, client=client)
    app.state.db, app.state.client, app.state.settings = db, client, settings
    app.state.listener = AuditListener(db)
    return app


def _remote(app, ip: str = "198.51.100.7") -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://quire")


async def test_requests_are_rate_limited_per_key_and_bad_keys_write_no_rows(db, client, user):
    app = _app(db, client, api_settings(quire_rate_limit="3/minute", quire_auth_failure_limit="4/minute"))
    async with _remote(app) as http:
        rs = [await http.get("/v1/jobs", headers=auth(user)) for _ in range(4)]
        assert [r.status_code for r in rs] == [200, 200, 200, 429]
        assert 0 < int(rs[-1].headers["retry-after"]) <= 60 and "QUIRE_RATE_LIMIT" in rs[-1].json()["detail"]
        before = await _account_rows(db)
        bad = [await http.get("/v1/jobs", headers={"Authorization": "Bearer qk_nope_nope"}) for _ in range(6)]
        assert [r.status_code for r in bad] == [401] * 4 + [429] * 2
        assert await _account_rows(db) == before  # no row per refused request


async def test_live_streams_are_bounded_per_user_with_a_429(api_app, http, fake, user):
    fake.reset(delay_s=0.1)
    kept = api_app.state.streams
    api_app.state.streams = StreamSlots(per_user=1, total=100)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Kelp", "target_words": 3000}, headers=auth(user)
    )
    jid = r.json()["id"]
    try:
        async with http.stream("GET", f"/v1/jobs/{jid}/audit/stream", headers=auth(user)) as first:
            assert first.status_code == 200
            second = await http.get(f"/v1/jobs/{jid}/audit/stream", headers=auth(user))
            assert second.status_code == 429 and int(second.headers["retry-after"]) > 0
            assert "QUIRE_MAX_STREAMS_PER_USER" in second.json()["detail"]

        async def freed() -> bool:
            return api_app.state.streams.open == {}

        await until("the closed stream's slot is freed", freed, within=30)
    finally:
        api_app.state.streams = kept
        await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))


# --- 8. readiness and metrics leak nothing ----------------------------------------------------


async def test_readiness_says_codes_and_metrics_answer_only_the_operators_networks(client, tmp_path):
    dead = Database(f"postgresql://postgres@/quire?host={tmp_path}")
    try:
        app = _app(dead, client, api_settings())
        async with _remote(app, "203.0.113.9") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"] == "database_unreachable"
            assert str(tmp_path) not in ready.text and "postgres" not in ready.text.lower()
            assert (await http.get("/metrics")).status_code == 403
        async with _remote(app, "127.0.0.1") as http:
            assert (await http.get("/metrics")).status_code == 200
        token = _app(dead, client, api_settings(quire_metrics_token="scrape-7f2"))
        async with _remote(token, "203.0.113.9") as http:
            assert (await http.get("/metrics", headers={"Authorization": "Bearer scrape-7f2"})).status_code == 200
    finally:
        await dead.dispose()
