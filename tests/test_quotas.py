"""Cost and quotas: each model call priced in integer micro-dollars, job and user totals in the job
view and the history; per-user quotas refused at submit (429 with Retry-After) and before the next
model call (E_QUOTA_EXCEEDED); `quire user quota` sets them."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import uuid
from asyncio.subprocess import PIPE
from decimal import Decimal

import pytest
from sqlalchemy import select

from core.cost import Price, cost_micro_usd, usd
from core.quota import Quotas, Usage, submit_refusal
from db.loop import Edit
from db.manuscript import PlanNode
from db.models import AuditEvent, LlmCall
from tests.conftest import PRICES
from tests.helpers import auth, job_row, set_quotas, submit, wait

pytestmark = pytest.mark.usefixtures("worker")


def test_a_calls_cost_is_exact_integer_micro_dollars():
    p = Price(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10"))
    # 1,000 in (400 of them cached) and 500 out: 600 x 2.5 + 400 x 1.25 + 500 x 10 micro-dollars.
    assert cost_micro_usd(p, 1000, 400, 500) == 1500 + 500 + 5000
    assert cost_micro_usd(Price(input=Decimal("0.15"), output=Decimal("0.6")), 3, None, 1) == 1  # 1.05 rounds to 1
    assert cost_micro_usd(Price(input=Decimal("0.15"), output=Decimal("0.6")), 7, 0, 1) == 2  # 1.65 rounds to 2
    assert cost_micro_usd(None, 10, 0, 10) is None and cost_micro_usd(p, None, None, 3) is None
    assert usd(1_234_567) == "1.234567" and usd(5) == "0.000005"


def test_submit_refusals_say_which_quota_and_when_it_resets():
    now = dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC)
    words = submit_refusal(Quotas(words_per_month=1000), Usage(0, 0, 900), 200, now)
    assert words is not None and words.retry_after_s == 3601 and "900 asked for" in str(words)
    tokens = submit_refusal(Quotas(tokens_per_day=50), Usage(50, 0, 0), 10, now)
    assert tokens is not None and tokens.retry_after_s == 3601 and "resets at 00:00 UTC" in str(tokens)
    assert submit_refusal(Quotas(concurrent_jobs=2), Usage(0, 2, 0), 10, now) is not None
    assert submit_refusal(Quotas(concurrent_jobs=2, words_per_month=1000), Usage(49, 1, 800), 200, now) is None


async def test_each_call_is_priced_and_the_job_and_user_totals_add_up(http, db, client, fake, user):
    body = {"kind": "generate", "prompt": "Kites", "target_words": 60}
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    jid = r.json()["id"]
    assert await wait(client, uuid.UUID(jid)) == "succeeded"
    price = PRICES["fake-model"]
    async with db.tx() as s:
        calls = (await s.execute(select(LlmCall).where(LlmCall.job_id == uuid.UUID(jid)))).scalars().all()
        events = (
            (await s.execute(select(AuditEvent).where(AuditEvent.job_id == uuid.UUID(jid), AuditEvent.kind == "llm")))
            .scalars()
            .all()
        )
    assert calls
    for c in calls:
        assert c.cost_micro_usd == cost_micro_usd(price, c.tokens_in, c.tokens_cached, c.tokens_out)
    assert {e.data["llm_call_id"]: e.data["cost_micro_usd"] for e in events if "cost_micro_usd" in e.data} == {
        c.id: c.cost_micro_usd for c in calls
    }
    total = sum(c.cost_micro_usd or 0 for c in calls)
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["cost"] == {"micro_usd": total, "usd": usd(total), "unpriced_calls": 0} and total > 0
    assert job["user_cost"]["micro_usd"] == total  # the user's only job
    page = (await http.get("/v1/jobs", headers=auth(user))).json()
    assert page["items"][0]["cost_micro_usd"] == total and page["user_cost"]["micro_usd"] == total
    # A deleted job's cost stays in the user's total (and its tokens in their day).
    assert (await http.delete(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 204
    usage = (await http.get("/v1/usage", headers=auth(user))).json()
    assert usage["cost"]["micro_usd"] == total
    assert usage["tokens_today"] == sum((c.tokens_in or 0) + (c.tokens_out or 0) for c in calls)


async def test_a_quota_is_refused_mid_job_then_at_submit(http, db, client, fake, user):
    # One token a day: the plan's call is made (nothing was used before it), the next one is not.
    await set_quotas(db, user, tokens_per_day=1)
    jid = await submit(db, client, user, kind="generate", prompt="Glaciers", target_words=40)
    assert (await wait(client, jid)).startswith("failed")
    job = await job_row(db, jid)
    assert job.status == "failed" and job.error_code == "E_QUOTA_EXCEEDED"
    assert job.failure_reason.startswith("tokens-per-day quota of 1 used up")
    async with db.tx() as s:
        calls = (await s.execute(select(LlmCall.purpose).where(LlmCall.job_id == jid))).scalars().all()
        refusal = (
            await s.execute(
                select(AuditEvent.data).where(
                    AuditEvent.job_id == jid, AuditEvent.kind == "error", AuditEvent.action == "quota"
                )
            )
        ).scalar_one()
    assert len(calls) == 1 and "tokens-per-day quota of 1 used up" in refusal["reason"]
    # At submit: 429, Retry-After until 00:00 UTC, and a message that says which quota.
    body = {"kind": "generate", "prompt": "Fjords", "target_words": 10}
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    assert r.status_code == 429, r.text
    now = dt.datetime.now(dt.UTC)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert 0 < int(r.headers["retry-after"]) <= (midnight - now).total_seconds() + 2
    assert r.json()["detail"].startswith("tokens-per-day quota of 1 used up")


async def test_words_and_concurrent_jobs_are_refused_at_submit(http, db, fake, user):
    await set_quotas(db, user, words_per_month=100, concurrent_jobs=1)
    fake.set(delay_s=0.5)  # the first job is still running when the others are submitted
    body = {"kind": "generate", "prompt": "Salt marshes"}
    first = await http.post("/v1/jobs", json={**body, "target_words": 60}, headers=auth(user))
    assert first.status_code == 202
    over = await http.post("/v1/jobs", json={**body, "target_words": 50}, headers=auth(user))
    assert over.status_code == 429 and over.headers["retry-after"] == "30"
    assert "concurrent-jobs quota of 1 reached" in over.json()["detail"]
    await set_quotas(db, user, concurrent_jobs=None)
    over = await http.post("/v1/jobs", json={**body, "target_words": 50}, headers=auth(user))
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    detail = over.json()["detail"]
    assert "words-per-month quota of 100 would be exceeded" in detail and "40 left" in detail
    assert (await http.post("/v1/jobs", json={**body, "target_words": 40}, headers=auth(user))).status_code == 202
    usage = (await http.get("/v1/usage", headers=auth(user))).json()
    assert usage["quotas"] == {"tokens_per_day": None, "concurrent_jobs": None, "words_per_month": 100}
    assert usage["words_this_month"] == 100
    for j in (await http.get("/v1/jobs", headers=auth(user))).json()["items"]:
        await http.post(f"/v1/jobs/{j['id']}/cancel", headers=auth(user))


async def test_quire_user_quota_sets_shows_and_clears(pg_url, user):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "QUIRE_"))}

    async def quire(*args: str) -> tuple[int, str, str]:
        cmd = [sys.executable, "-m", "quire.cli", "user", "quota", user.name, *args, "--url", pg_url]
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=PIPE, stderr=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await quire("--tokens-per-day", "5000", "--concurrent-jobs", "2", "--words-per-month", "90000")
    assert code == 0, err
    assert "tokens per day    5,000" in out and "concurrent jobs   2" in out and "words per month   90,000" in out
    code, out, _ = await quire("--concurrent-jobs", "none")
    assert code == 0 and "concurrent jobs   no limit" in out and "words per month   90,000" in out
    code, _, err = await quire("--tokens-per-day", "-3")
    assert code == 2 and "a whole number >= 0, or 'none'" in err


async def test_edits_count_in_the_words_and_as_concurrent_work_and_stay_counted_after_deletion(
    http, db, client, fake, user
):
    fake.reset(ratio=(1.0, 1.15))
    done = await submit(db, client, user, kind="generate", prompt="Sails", target_words=200)
    assert await wait(client, done) == "succeeded"
    async with db.tx() as s:
        section = (
            (await s.execute(select(PlanNode).where(PlanNode.job_id == done, PlanNode.level == "section")))
            .scalars()
            .first()
        )
    fake.set(delay_s=1.0)  # the edit is still running when the next submit comes
    r = await http.post(f"/v1/jobs/{done}/nodes/{section.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 202, r.text
    async with db.tx() as s:
        edit = (await s.execute(select(Edit).where(Edit.job_id == done))).scalar_one()
    assert edit.words > 0
    # A running edit is model work in progress: it takes the one concurrent slot.
    await set_quotas(db, user, concurrent_jobs=1)
    body = {"kind": "generate", "prompt": "Spars", "target_words": 10}
    over = await http.post("/v1/jobs", json=body, headers=auth(user))
    assert over.status_code == 429 and "concurrent-jobs quota of 1 reached (1 queued or running" in over.text
    await set_quotas(db, user, concurrent_jobs=None)
    await client.get_workflow_handle(edit.workflow_id).result()
    fake.set(delay_s=0.0)
    before = (await http.get("/v1/usage", headers=auth(user))).json()["words_this_month"]
    assert before >= 200 + edit.words
    # Deleting the job gives back neither its words nor its edits' words.
    assert (await http.delete(f"/v1/jobs/{done}", headers=auth(user))).status_code == 204
    after = (await http.get("/v1/usage", headers=auth(user))).json()["words_this_month"]
    assert after == before, (before, after, edit.words)
