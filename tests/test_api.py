"""The API: every endpoint's main path, isolation, history, cancel, delete, the access log, a
plain 500, and schemathesis. Bad input rejected precisely: test_api_input.py. Audit downloads and
the live stream: test_api_audit.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from db.models import AccountEvent, AuditEvent, Job
from services import accounts
from testkit import make_job
from tests.helpers import auth, follow_to_end, set_status, sse

pytestmark = pytest.mark.usefixtures("worker")
ROOT = Path(__file__).parent.parent


async def test_job_lifecycle_through_the_api(http, fake, user, db):
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Lanterns", "target_words": 300}, headers=auth(user)
    )
    assert r.status_code == 202, r.text
    body = r.json()
    jid = body["id"]
    assert body["status"] == "queued" and body["workflow_id"] == f"job-{jid}" and body["created"] is True
    assert r.headers["location"] == f"/v1/jobs/{jid}"
    assert body["links"] == {
        "self": f"/v1/jobs/{jid}",
        "output": f"/v1/jobs/{jid}/output",
        "audit": f"/v1/jobs/{jid}/audit",
        "stream": f"/v1/jobs/{jid}/audit/stream",
        "cancel": f"/v1/jobs/{jid}/cancel",
        "page": f"/jobs/{jid}",
    }
    seqs, end = await follow_to_end(http, jid, user)
    assert seqs == list(range(1, len(seqs) + 1))
    assert end == {"status": "succeeded", "last_seq": seqs[-1]}
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    # The end event came after the job's last event: nothing was written after it.
    assert job["audit_events"] == len(seqs)
    assert job["status"] == "succeeded" and job["kind"] == "generate" and job["target_words"] == 300
    assert job["target_met"] is True and job["output_words"] >= 300 and job["words_written"] == job["output_words"]
    assert job["error_code"] is None and job["failure_reason"] is None
    p = job["progress"]
    assert p["chunks_done"] == p["chunks_total"] > 0 and p["sections_done"] == p["sections_total"] > 0
    assert p["current_step"] == "done"
    assert job["created_at"] <= job["started_at"] <= job["completed_at"] and job["elapsed_seconds"] > 0
    assert job["tokens"]["in"] > 0 and job["tokens"]["out"] > 0 and job["tokens"]["llm_calls"] > 0
    async with db.tx() as s:
        tokens_out = (
            await s.execute(text("SELECT sum(tokens_out) FROM llm_calls WHERE job_id = :j"), {"j": uuid.UUID(jid)})
        ).one()
    assert job["tokens"]["out"] == tokens_out[0]
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 200 and int(out.headers["x-quire-word-count"]) == job["output_words"]
    assert out.headers["x-quire-target-words"] == "300" and out.headers["x-quire-target-met"] == "true"
    assert out.headers["content-type"] == "text/markdown; charset=utf-8" and len(out.text.split()) >= 300
    plain = await http.get(f"/v1/jobs/{jid}/output?format=text", headers=auth(user))  # = format=txt
    assert plain.headers["content-type"] == "text/plain; charset=utf-8" and "\n#" not in plain.text
    assert plain.headers["x-quire-word-count"] == out.headers["x-quire-word-count"]
    hist = (await http.get("/v1/jobs", headers=auth(user))).json()
    top = hist["items"][0]
    assert top["id"] == jid and top["target_met"] is True and top["output_words"] == job["output_words"]
    # The log has grown by the two reads of the output above: user actions are in it.
    assert top["audit_events"] == len(seqs) + 2 and top["tokens_out"] == job["tokens"]["out"]
    r = await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))
    assert r.status_code == 409 and r.json()["detail"] == "job already succeeded"
    assert (await http.delete(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 204
    for path in ("", "/output", "/audit", "/audit/stream"):
        r = await http.get(f"/v1/jobs/{jid}{path}", headers=auth(user))
        assert r.status_code == 404 and r.json()["detail"] == f"no job '{jid}'"
    async with db.tx() as s:
        assert await s.get(Job, uuid.UUID(jid)) is None
        left = (await s.execute(select(AuditEvent.seq).where(AuditEvent.job_id == uuid.UUID(jid)))).all()
        assert left == []
        deleted = (
            await s.execute(
                select(AccountEvent).where(AccountEvent.kind == "job.deleted", AccountEvent.job_id == uuid.UUID(jid))
            )
        ).scalar_one()
    assert deleted.user_id == user.user_id and deleted.data["audit_events"] == len(seqs) + 2
    assert deleted.data["status"] == "succeeded" and deleted.data["llm_calls"] == job["tokens"]["llm_calls"]


async def test_a_success_says_when_chunks_were_accepted_short_and_topped_up(http, fake, user, db):
    """One attempt per chunk: chunks the model answered short are accepted short, finalize tops the
    document up, and the job succeeds saying so (its JSON, and the final audit event)."""
    body = {"kind": "generate", "prompt": "Tides", "target_words": 200, "options": {"max_attempts_per_chunk": 1}}
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    a = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()["account"]
    assert a["chunks_short"] >= 1 and a["top_up_rounds"] >= 1 and a["top_up_words"] > 0
    assert a["words_model"] > 0 and a["words_cut"] == sum(a["cut_by_rule"].values())
    assert "accepted short" in a["summary"] and "top-up round(s) added" in a["summary"]
    async with db.tx() as s:
        final = (
            await s.execute(
                text("SELECT data FROM audit_events WHERE job_id = :j AND kind = 'job' AND action = 'succeeded'"),
                {"j": uuid.UUID(jid)},
            )
        ).scalar_one()
    assert final["account"] == {k: v for k, v in a.items() if k != "summary"} and final["summary"] == a["summary"]


async def test_multipart_rewrite_and_idempotency_key(http, fake, user):
    text_in = "\n\n".join(f"Paragraph {i} about the sea and the shore and the ships that pass." for i in range(40))
    key = f"k-{uuid.uuid4()}"
    form = {"files": {"file": ("sea.md", text_in.encode(), "text/markdown")}, "data": {"target_words": "200"}}
    r1 = await http.post("/v1/jobs", headers={**auth(user), "Idempotency-Key": key}, **form)
    r2 = await http.post("/v1/jobs", headers={**auth(user), "Idempotency-Key": key}, **form)
    assert r1.status_code == 202 and r2.status_code == 200, (r1.text, r2.text)
    assert r1.json()["id"] == r2.json()["id"] and r2.json()["created"] is False
    jid = r1.json()["id"]
    # The same key for a different request is an error, not silently the old job.
    r3 = await http.post(
        "/v1/jobs",
        headers={**auth(user), "Idempotency-Key": key},
        files={"file": ("sea.md", text_in.encode() + b" More.", "text/markdown")},
        data={"target_words": "200"},
    )
    assert r3.status_code == 409
    assert r3.json() == {"detail": f"Idempotency-Key '{key}' was used for a different request (job {jid})"}
    # Keys are per user: another user's identical key makes their own job.
    await follow_to_end(http, jid, user)
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["kind"] == "rewrite" and job["status"] == "succeeded"
    out = await http.get(f"/v1/jobs/{jid}/output?format=text", headers=auth(user))
    assert out.status_code == 200 and int(out.headers["x-quire-word-count"]) >= 200
    hist = (await http.get("/v1/jobs?kind=rewrite&status=succeeded", headers=auth(user))).json()["items"]
    assert [h["id"] for h in hist].count(jid) == 1


async def test_idempotency_keys_are_per_user(http, fake, user, db):
    other = await accounts.create_user(db, f"other-{uuid.uuid4().hex[:6]}")
    key = f"k-{uuid.uuid4()}"
    body = {"kind": "generate", "prompt": "Tides", "target_words": 20}
    a = await http.post("/v1/jobs", json=body, headers={**auth(user), "Idempotency-Key": key})
    b = await http.post("/v1/jobs", json=body, headers={**auth(other), "Idempotency-Key": key})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]
    await follow_to_end(http, a.json()["id"], user)
    await follow_to_end(http, b.json()["id"], other)


async def test_output_is_409_while_running_then_cancel(http, fake, user):
    fake.reset(delay_s=0.05)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Ice", "target_words": 5000}, headers=auth(user)
    )
    jid = r.json()["id"]
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 409 and out.json()["detail"] in (
        "job is queued; the output is not ready",
        "job is running; the output is not ready",
    )
    seen = 0
    async for _event, eid, data in sse(http, f"/v1/jobs/{jid}/audit/stream", auth(user)):
        seen = int(eid)
        if json.loads(data)["kind"] == "chunk":
            break
    r = await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))
    assert r.status_code == 202 and r.json() == {"id": jid, "status": "cancelling"}
    seqs, end = await follow_to_end(http, jid, user, after=seen)
    assert seqs == list(range(seen + 1, seen + 1 + len(seqs))) and end["status"] == "cancelled"
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["status"] == "cancelled" and job["error_code"] == "E_CANCELLED"
    assert job["failure_reason"] == "cancelled by request" and job["completed_at"] is not None
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 409 and out.json()["detail"] == "job is cancelled; the output is not ready"
    r = await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))
    assert r.status_code == 409 and r.json()["detail"] == "job already cancelled"
    cancels = (await http.get(f"/v1/jobs/{jid}/audit?kind=workflow", headers=auth(user))).json()["events"]
    assert [e["action"] for e in cancels] == ["start", "cancel"]


async def test_a_failed_job_shows_its_reason_and_code(http, fake, user):
    fake.reset(mode="empty")
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "Hush", "target_words": 60}, headers=auth(user))
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "failed"
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["status"] == "failed" and job["error_code"] == "E_LENGTH_NOT_MET" and job["failure_reason"]
    assert job["target_met"] is False and job["output_words"] is None
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 409
    assert out.json()["detail"] == f"job is failed; the output is not ready: E_LENGTH_NOT_MET: {job['failure_reason']}"
    hist = (await http.get("/v1/jobs?status=failed", headers=auth(user))).json()["items"]
    assert hist[0]["id"] == jid and hist[0]["error_code"] == "E_LENGTH_NOT_MET"


async def test_deleting_a_running_job_stops_it_and_ends_its_stream(http, fake, user, db):
    fake.reset(delay_s=0.05)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Fog", "target_words": 5000}, headers=auth(user)
    )
    jid = r.json()["id"]
    events = sse(http, f"/v1/jobs/{jid}/audit/stream", auth(user))
    async for _event, _eid, data in events:
        if json.loads(data)["kind"] == "chunk":
            break
    assert (await http.delete(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 204
    # The open stream ends at once (the delete notifies it), with the reason.
    async with asyncio.timeout(10):
        async for event, _eid, data in events:
            if event == "end":
                assert json.loads(data)["reason"] == "deleted"
                break
    await events.aclose()
    async with db.tx() as s:
        assert await s.get(Job, uuid.UUID(jid)) is None
        n = (
            await s.execute(text("SELECT count(*) FROM audit_events WHERE job_id = :j"), {"j": uuid.UUID(jid)})
        ).scalar_one()
    assert n == 0
    desc = await http.get(f"/v1/jobs/{jid}", headers=auth(user))
    assert desc.status_code == 404


async def test_history_is_newest_first_with_cursor_pages_and_filters(http, db):
    owner = await accounts.create_user(db, f"hist-{uuid.uuid4().hex[:6]}")
    made = [await make_job(db, owner.user_id) for _ in range(5)]
    await set_status(db, made[1], "failed")
    await set_status(db, made[3], "succeeded")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        q = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await http.get(q, headers=auth(owner))).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [str(j) for j in reversed(made)]
    failed = (await http.get("/v1/jobs?status=failed", headers=auth(owner))).json()["items"]
    assert [j["id"] for j in failed] == [str(made[1])]
    assert failed[0]["error_code"] == "E_LENGTH_NOT_MET" and failed[0]["target_met"] is False
    none = {"items": [], "next_cursor": None, "user_cost": {"micro_usd": 0, "usd": "0.000000", "unpriced_calls": 0}}
    assert (await http.get("/v1/jobs?kind=rewrite", headers=auth(owner))).json() == none
    queued = (await http.get("/v1/jobs?kind=generate&status=queued", headers=auth(owner))).json()["items"]
    assert {j["id"] for j in queued} == {str(made[i]) for i in (0, 2, 4)}
    r = await http.get("/v1/jobs?cursor=bm9wZQ", headers=auth(owner))
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "invalid cursor: pass next_cursor from the previous page"
    r = await http.get("/v1/jobs?status=done", headers=auth(owner))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "status"]
    r = await http.get("/v1/jobs?limit=0", headers=auth(owner))
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "Input should be greater than or equal to 1"


async def test_users_cannot_see_each_others_jobs(http, fake, user, db):
    other = await accounts.create_user(db, f"other-{uuid.uuid4().hex[:6]}")
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "Owls", "target_words": 20}, headers=auth(user))
    jid = r.json()["id"]
    await follow_to_end(http, jid, user)
    for method, path in [
        ("GET", ""),
        ("GET", "/output"),
        ("GET", "/output?partial=1"),
        ("GET", "/audit"),
        ("GET", "/audit?format=txt&download=1"),
        ("GET", "/audit?format=ndjson"),
        ("GET", "/audit/stream"),
        ("GET", "/audit/stream?after=3"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ]:
        r = await http.request(method, f"/v1/jobs/{jid}{path}", headers=auth(other))
        assert r.status_code == 404, (method, path)
        assert r.json() == {"detail": f"no job '{jid}'"}
    assert jid not in [h["id"] for h in (await http.get("/v1/jobs", headers=auth(other))).json()["items"]]
    # A malformed id is the same 404.
    r = await http.get("/v1/jobs/not-a-job", headers=auth(other))
    assert r.status_code == 404 and r.json() == {"detail": "no job 'not-a-job'"}
    # The owner still has everything.
    assert (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 200
    assert (await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))).status_code == 200


async def test_access_log_records_every_request_and_never_the_key(http, user, db):
    job_id = await make_job(db, user.user_id)
    ua = {"User-Agent": "quire-test/1.0"}
    await http.get(f"/v1/jobs/{job_id}", headers={**auth(user), **ua})
    await http.get(f"/v1/jobs/{uuid.uuid4()}", headers={**auth(user), **ua})
    await http.get("/v1/jobs?limit=1", headers={**auth(user), **ua})
    async with db.tx() as s:
        anonymous_before = (
            await s.execute(select(func.count()).select_from(AccountEvent).where(AccountEvent.user_id.is_(None)))
        ).scalar_one()
    await http.get("/v1/jobs", headers={"Authorization": "Bearer qk_wrong", **ua})
    async with db.tx() as s:
        mine = (
            (
                await s.execute(
                    select(AccountEvent)
                    .where(AccountEvent.user_id == user.user_id, AccountEvent.kind == "access")
                    .order_by(AccountEvent.id)
                )
            )
            .scalars()
            .all()
        )
        anonymous = (
            await s.execute(select(func.count()).select_from(AccountEvent).where(AccountEvent.user_id.is_(None)))
        ).scalar_one()
        rows = (await s.execute(text("SELECT row_to_json(a)::text FROM account_events a"))).scalars().all()
        rows += (await s.execute(text("SELECT row_to_json(e)::text FROM audit_events e"))).scalars().all()
    assert [(a.method, a.path, a.status) for a in mine[-3:]] == [
        ("GET", f"/v1/jobs/{job_id}", 200),
        ("GET", mine[-2].path, 404),
        ("GET", "/v1/jobs", 200),
    ]
    assert all(a.ip == "127.0.0.1" and a.user_agent == "quire-test/1.0" and a.ts is not None for a in mine[-3:])
    assert mine[-3].job_id == job_id
    assert anonymous == anonymous_before  # a request without a valid key is counted, not stored (issue 20)
    assert not [r for r in rows if user.api_key in r or user.api_key.split("_", 2)[2] in r]


async def test_health_readiness_and_docs(http):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    r = await http.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "reason": None, "database": "ok", "temporal": "ok", "listener": "ok"}
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await http.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert paths >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/output",
        "/v1/jobs/{job_id}/audit",
        "/v1/jobs/{job_id}/audit/stream",
        "/v1/jobs/{job_id}/cancel",
        "/healthz",
        "/readyz",
    }
    assert spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobView"
    }


async def test_the_api_keeps_its_openapi_contract(api_url: str, db, http, fake, tmp_path) -> None:
    """schemathesis as CI runs it, against the live app: every operation, every phase (coverage,
    fuzzing, stateful: real jobs made, read, cancelled, deleted), every check (no 5xx, status codes,
    content types, headers and bodies as documented, valid data accepted, invalid data rejected,
    auth enforced, Allow headers, use after delete). Settings: tests/schemathesis.toml; the key
    follows its own rotations: tests/schemathesis_hooks.py."""
    fake.reset(delay_s=0.5)  # the jobs fuzzing starts crawl: the API, not the worker, gets the CPU
    fuzz_user = await accounts.create_user(db, f"fuzz-{uuid.uuid4().hex[:6]}")
    spec = (await http.get("/openapi.json")).json()
    operations = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    har = tmp_path / "run.har"
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.create_subprocess_exec(
        *[str(st), "--no-color", "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run"],
        *[f"{api_url}/openapi.json", "--checks", "all", "--report", "har", "--report-har-path", str(har)],
        cwd=tmp_path,
        env={
            **os.environ,
            "QUIRE_FUZZ_KEY": fuzz_user.api_key,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(proc.communicate(), 300))[0].decode()
    # Valid fuzzed submissions started real jobs (up to 500,000 words): stop them. (The fuzzing
    # rotated the user's key: a fresh one does this.)
    key = {"Authorization": f"Bearer {await accounts.add_key(db, fuzz_user.user_id)}"}
    for j in (await http.get("/v1/jobs?limit=100", headers=key)).json()["items"]:
        if j["status"] in ("queued", "running"):
            await http.post(f"/v1/jobs/{j['id']}/cancel", headers=key)
    assert proc.returncode == 0, out
    assert f"Selected: {len(operations)}/{len(operations)}" in out and f"Tested: {len(operations)}" in out, out
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out
    # It reached past validation, into real jobs, and was turned away where it should be.
    entries = json.loads(har.read_text())["log"]["entries"]
    seen = {(e["request"]["method"], e["response"]["status"]) for e in entries}
    expected = {("POST", 202), ("GET", 200), ("GET", 404), ("GET", 422), ("POST", 422), ("DELETE", 204)}
    assert expected | {("POST", 201), ("POST", 415), ("GET", 400)} <= seen, seen


async def test_an_internal_error_is_a_plain_500_and_is_access_logged(http, user, db, monkeypatch):
    import api.jobs

    async def broken(*_: Any) -> None:
        raise RuntimeError("boom: not for the client's eyes")

    monkeypatch.setattr(api.jobs, "job_view", broken)
    job_id = await make_job(db, user.user_id)
    r = await http.get(f"/v1/jobs/{job_id}", headers=auth(user))
    assert r.status_code == 500 and r.json() == {"detail": "internal error: the server log has the details"}
    async with db.tx() as s:
        last = (
            await s.execute(
                select(AccountEvent)
                .where(AccountEvent.user_id == user.user_id, AccountEvent.kind == "access")
                .order_by(AccountEvent.id.desc())
                .limit(1)
            )
        ).scalar_one()
    assert (last.path, last.status) == (f"/v1/jobs/{job_id}", 500)
