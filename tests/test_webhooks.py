"""Webhooks: a job's end POSTed to a real local server, signed per Standard Webhooks (verified with
the `standardwebhooks` library), retried after a 500, every attempt in the job's audit log; targets
refused at submit (422 naming the field) and again at delivery; the secret never in clear."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from standardwebhooks import Webhook

from core.sealing import Sealer
from core.spec import JobSpec
from db.models import AccountEvent, AuditEvent, User
from services import jobs, webhooks
from tests.conftest import SEALING_KEY, TASK_QUEUE, WEBHOOK_RETRY
from tests.helpers import Receiver, auth, job_row, wait

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver([500]) as r:
        yield r


async def webhook_events(db, job_id: uuid.UUID, n: int, within: float = 30) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        async with db.tx() as s:
            rows = (
                (
                    await s.execute(
                        select(AuditEvent)
                        .where(AuditEvent.job_id == job_id, AuditEvent.kind == "webhook")
                        .order_by(AuditEvent.seq)
                    )
                )
                .scalars()
                .all()
            )
        if len(rows) >= n or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.1)  # polling the log the worker writes, with a deadline


async def test_a_jobs_end_is_posted_signed_retried_after_a_500_and_audited(http, db, client, fake, user, receiver):
    r = await http.post("/v1/webhook/secret", headers=auth(user))
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    secret = r.json()["secret"]
    assert secret.startswith("whsec_")
    body = {"kind": "generate", "prompt": "Lighthouses", "target_words": 40, "webhook_url": receiver.url}
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    assert r.status_code == 202, r.text
    jid = uuid.UUID(r.json()["id"])
    assert await wait(client, jid) == "succeeded"
    got = await receiver.wait_for(2)
    assert [g["status"] for g in got] == [500, 200]
    hook = Webhook(secret)
    payloads = [hook.verify(g["body"], g["headers"]) for g in got]  # raises unless signed with the secret
    assert got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"] == f"msg_{jid.hex}"
    assert int(got[1]["headers"]["webhook-timestamp"]) >= int(got[0]["headers"]["webhook-timestamp"])
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(got[1]["body"], got[1]["headers"])
    data = payloads[1]["data"]
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert payloads[1]["type"] == "job.succeeded" and payloads[0] == payloads[1]
    assert data["job_id"] == str(jid) and data["status"] == "succeeded" and data["target_words"] == 40
    assert data["words"] == job["output_words"] >= 40 and data["target_met"] is True and data["error_code"] is None
    assert data["cost_micro_usd"] == job["cost"]["micro_usd"] > 0
    assert data["account"] == {k: v for k, v in job["account"].items() if k != "summary"}
    assert data["account"]["words_model"] > 0
    assert data["links"]["output"].endswith(f"/v1/jobs/{jid}/output") and job["webhook_url"] == receiver.url
    # Every attempt is an event of the job: status code, latency, error; the last says it was final.
    events = await webhook_events(db, jid, 2)
    assert [(e.action, e.data["attempt"], e.data["status_code"]) for e in events] == [
        ("failed", 1, 500),
        ("delivered", 2, 200),
    ]
    assert events[0].data["error"] == "HTTP 500" and events[0].data["final"] is False
    assert events[1].data["error"] is None and events[1].data["final"] is True
    assert all(e.data["latency_ms"] >= 0 and e.data["url"] == receiver.url for e in events)
    # The job's outcome waited for none of it: its workflow closed before the delivery succeeded.
    closed = (await client.get_workflow_handle(f"job-{jid}").describe()).close_time
    assert closed is not None and closed < events[1].ts and (await job_row(db, jid)).completed_at < events[0].ts
    # The secret is in no log: not the job's, not the account's; its row holds it sealed.
    async with db.tx() as s:
        logs = (
            await s.execute(
                text(
                    "SELECT string_agg(data::text || coalesce(sql_text, ''), ' ') FROM audit_events WHERE job_id = :j"
                ),
                {"j": jid},
            )
        ).scalar_one()
        account = (
            (await s.execute(select(AccountEvent.data).where(AccountEvent.user_id == user.user_id))).scalars().all()
        )
        sealed = (await s.execute(select(User.webhook_secret_sealed).where(User.id == user.user_id))).scalar_one()
    raw = secret.removeprefix("whsec_")
    assert raw not in logs and raw not in json.dumps(account) and raw not in sealed and SEALING_KEY not in logs
    assert any(a.get("by") == "user" for a in account)


async def test_targets_are_refused_at_submit_with_a_422_naming_the_field(http, user):
    body = {"kind": "generate", "prompt": "Tides", "target_words": 10}
    r = await http.post("/v1/jobs", json={**body, "webhook_url": "http://127.0.0.1:9/x"}, headers=auth(user))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    assert "no webhook signing secret yet" in r.json()["detail"][0]["msg"]
    assert (await http.post("/v1/webhook/secret", headers=auth(user))).status_code == 201
    for url, why in (
        ("ftp://127.0.0.1/x", "must be an http:// or https:// URL"),
        ("http://user:pw@127.0.0.1/x", "must not carry credentials"),
        ("http://10.1.2.3/x", "10.1.2.3 is outside the allowed webhook networks"),
        ("http://[::ffff:192.168.1.1]/x", "192.168.1.1 is outside the allowed webhook networks"),
        ("http://no-such-host.invalid/x", "does not resolve"),
    ):
        r = await http.post("/v1/jobs", json={**body, "webhook_url": url}, headers=auth(user))
        assert r.status_code == 422, (url, r.text)
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "webhook_url"] and why in err["msg"], (url, err)
    # The user's default is checked when set, and used by jobs that name none.
    r = await http.put("/v1/webhook", json={"url": "https://192.168.0.10/hook"}, headers=auth(user))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "url"]
    r = await http.put("/v1/webhook", json={"url": "http://localhost:9/hook"}, headers=auth(user))
    assert r.status_code == 200 and r.json()["url"] == "http://localhost:9/hook" and r.json()["secret"] is None
    view = (await http.get("/v1/webhook", headers=auth(user))).json()
    assert view["url"] == "http://localhost:9/hook" and view["secret_set"] is True and "secret" not in view


async def test_the_target_is_checked_again_at_delivery(db, client, fake, user):
    """DNS can change between submit and the job's end: the delivery checks the address it is about
    to connect to, and refuses (once, recorded, no retry) one that is no longer allowed."""
    await webhooks.rotate_secret(db, user.user_id, Sealer([SEALING_KEY]), by="test")
    job, _ = await jobs.submit(
        db,
        client,
        user_id=user.user_id,
        user_name=user.name,
        spec=JobSpec(kind="generate", prompt="Harbours", target_words=10),
        task_queue=TASK_QUEUE,
        default_model="fake-model",
        webhook_url="http://10.9.8.7/hook",  # as if it had resolved to an allowed address at submit
        webhook_retry=WEBHOOK_RETRY,
    )
    assert await wait(client, job.id) == "succeeded"
    (event,) = await webhook_events(db, job.id, 1)
    assert event.action == "refused" and event.data["final"] is True
    assert "10.9.8.7 is outside the allowed webhook networks" in event.data["error"]
    child = client.get_workflow_handle(f"job-{job.id}-webhook")
    with pytest.raises(Exception):  # noqa: B017 - the delivery workflow failed, not retried
        await child.result()
    assert (await job_row(db, job.id)).status == "succeeded"


async def test_quire_webhook_secret_rotates_and_shows_the_new_secret_once(api_url, http, db, user):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIRE_", "DATABASE_URL"))}

    async def quire(*args: str) -> tuple[int, str, str]:
        cmd = [sys.executable, "-m", "quire.cli", "webhook", *args, "--api", api_url, "--key", user.api_key]
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=PIPE, stderr=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    first = (await http.post("/v1/webhook/secret", headers=auth(user))).json()["secret"]
    code, out, err = await quire("secret")
    assert code == 0 and out.startswith("whsec_") and out.strip() != first and "shown once" in err
    async with db.tx() as s:  # what deliveries now sign with is the secret printed, nothing else
        sealed = (await s.execute(select(User.webhook_secret_sealed).where(User.id == user.user_id))).scalar_one()
    assert Sealer([SEALING_KEY]).open(sealed) == out.strip()
    Webhook(out.strip())  # a well-formed whsec_ secret, usable by receivers as printed
    shown = (await http.get("/v1/webhook", headers=auth(user))).json()
    assert shown["secret_set"] is True and "whsec_" not in json.dumps(shown)
