"""The API: every endpoint's main path, precise errors, isolation, downloads, the live stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.audit import TXT_HEADER, parse_txt_line
from db.models import AccountEvent, Job
from quire import accounts
from tests.test_audit import make_job

pytestmark = pytest.mark.usefixtures("worker")


def auth(user: accounts.NewUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"}


async def sse(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) of a server-sent event stream."""
    async with http.stream("GET", path, headers=headers, timeout=60) as r:
        assert r.status_code == 200, await r.aread()
        event, eid, data = "message", "", []
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "" and data:
                yield event, eid, "\n".join(data)
                event, eid, data = "message", "", []


async def follow_to_end(http: httpx.AsyncClient, job_id: str, user: accounts.NewUser, after: int = 0) -> list[int]:
    seqs = []
    async for event, eid, _ in sse(http, f"/v1/jobs/{job_id}/audit/stream?after={after}", auth(user)):
        if event == "end":
            break
        seqs.append(int(eid))
    return seqs


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as c:
        yield c


async def test_job_lifecycle_through_the_api(http, fake, user, db):
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Lanterns", "target_words": 300}, headers=auth(user)
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["workflow_id"] == f"job-{body['id']}" and body["created"]
    assert set(body["links"]) >= {"self", "output", "audit", "stream"}
    jid = body["id"]
    seqs = await follow_to_end(http, jid, user)
    assert seqs == list(range(1, len(seqs) + 1))
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["status"] == "succeeded" and job["target_met"] and job["output_words"] >= 300
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] > 0
    assert job["tokens"]["in"] > 0 and job["tokens"]["llm_calls"] > 0 and job["audit_events"] >= len(seqs)
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 200 and int(out.headers["x-quire-word-count"]) >= 300
    assert out.headers["x-quire-target-words"] == "300" and out.headers["content-type"].startswith("text/markdown")
    page = (await http.get(f"/v1/jobs/{jid}/audit?limit=5&after=2", headers=auth(user))).json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5, 6, 7] and page["next_after"] == 7
    llm = (await http.get(f"/v1/jobs/{jid}/audit?kind=llm", headers=auth(user))).json()["events"]
    assert llm and all(e["kind"] == "llm" for e in llm) and llm[0]["data"]["tokens_out"] > 0
    hist = (await http.get("/v1/jobs", headers=auth(user))).json()
    assert hist["items"][0]["id"] == jid and hist["items"][0]["target_met"] is True
    assert (await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))).status_code == 409
    assert (await http.delete(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 204
    assert (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 404
    async with db.tx() as s:
        assert await s.get(Job, uuid.UUID(jid)) is None
        deleted = (
            await s.execute(
                select(AccountEvent).where(AccountEvent.kind == "job.deleted", AccountEvent.job_id == uuid.UUID(jid))
            )
        ).scalar_one()
        assert deleted.data["audit_events"] >= len(seqs)
        access = (
            (
                await s.execute(
                    select(AccountEvent).where(AccountEvent.user_id == user.user_id, AccountEvent.kind == "access")
                )
            )
            .scalars()
            .all()
        )
    assert {a.method for a in access} >= {"GET", "POST", "DELETE"} and all(a.ip for a in access)
    assert all(user.api_key not in json.dumps(a.data) + (a.path or "") for a in access)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"kind": "generate", "prompt": "x", "target_words": "many"},
            422,
            'target_words must be an integer from 1 to 500,000 (got "many")',
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 0},
            422,
            "target_words must be an integer from 1 to 500,000 (got 0)",
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 500_001},
            422,
            "target_words must be an integer from 1 to 500,000 (got 500001)",
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 12.5},
            422,
            "target_words must be an integer from 1 to 500,000 (got 12.5)",
        ),
        ({"kind": "generate", "target_words": 10}, 422, "kind 'generate' needs a non-empty 'prompt'"),
        (
            {"kind": "rewrite", "target_words": 10},
            422,
            "kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)",
        ),
        ({"kind": "generate", "prompt": "x", "target_words": 10, "colour": "red"}, 422, "unknown field 'colour'"),
        ({"kind": "essay", "prompt": "x", "target_words": 10}, 422, "Input should be 'generate' or 'rewrite'"),
        (
            {"kind": "rewrite", "input_text": "word " * 60_000, "target_words": 10},
            422,
            "request is larger than the 200,000-byte limit (QUIRE_MAX_INPUT_BYTES)",
        ),
    ],
)
async def test_bad_json_input_is_rejected_precisely(http, user, body, status, message):
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    assert r.status_code == status
    assert message in [e["msg"] for e in r.json()["detail"]]


async def test_bad_uploads_and_bodies(http, user):
    r = await http.post(
        "/v1/jobs",
        files={"file": ("in.txt", b"caf\xe9 au lait", "text/plain")},
        data={"target_words": "50"},
        headers=auth(user),
    )
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "input is not UTF-8 text (invalid byte at offset 3)"
    r = await http.post(
        "/v1/jobs",
        files={"file": ("in.pdf", b"%PDF", "application/pdf")},
        data={"target_words": "50"},
        headers=auth(user),
    )
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "file must be a .txt or .md document"
    r = await http.post("/v1/jobs", content=b"{not json", headers={**auth(user), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("body is not valid JSON")
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "x", "target_words": 5})
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    r = await http.post("/v1/jobs", json={}, headers={"Authorization": "Bearer qk_nope"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"


async def test_multipart_rewrite_and_idempotency_key(http, fake, user):
    text = "\n\n".join(f"Paragraph {i} about the sea and the shore and the ships that pass." for i in range(40))
    key = f"k-{uuid.uuid4()}"
    r1 = await http.post(
        "/v1/jobs",
        files={"file": ("sea.md", text.encode(), "text/markdown")},
        data={"target_words": "200", "kind": "rewrite"},
        headers={**auth(user), "Idempotency-Key": key},
    )
    r2 = await http.post(
        "/v1/jobs",
        files={"file": ("sea.md", text.encode(), "text/markdown")},
        data={"target_words": "200", "kind": "rewrite"},
        headers={**auth(user), "Idempotency-Key": key},
    )
    assert r1.status_code == 202 and r2.status_code == 200
    assert r1.json()["id"] == r2.json()["id"] and r2.json()["created"] is False
    jid = r1.json()["id"]
    await follow_to_end(http, jid, user)
    out = await http.get(f"/v1/jobs/{jid}/output?format=text", headers=auth(user))
    assert out.status_code == 200 and int(out.headers["x-quire-word-count"]) >= 200
    hist = (await http.get("/v1/jobs?kind=rewrite&status=succeeded", headers=auth(user))).json()["items"]
    assert [h["id"] for h in hist].count(jid) == 1


async def test_output_is_409_while_running_and_cancel_works(http, fake, user):
    fake.reset(delay_s=0.05)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Ice", "target_words": 5000}, headers=auth(user)
    )
    jid = r.json()["id"]
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    assert out.status_code == 409 and "the output is not ready" in out.json()["detail"]
    seen = 0
    async for _event, eid, data in sse(http, f"/v1/jobs/{jid}/audit/stream", auth(user)):
        seen = int(eid)
        if json.loads(data).get("kind") == "chunk":
            break
    assert (await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))).status_code == 202
    await follow_to_end(http, jid, user, after=seen)
    job = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert job["status"] == "cancelled" and job["error_code"] == "E_CANCELLED"
    partial = await http.get(f"/v1/jobs/{jid}/output?partial=1", headers=auth(user))
    assert partial.status_code == 200


async def test_stream_resumes_with_last_event_id_without_gap_or_duplicate(http, fake, user):
    fake.reset(delay_s=0.02)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Dunes", "target_words": 1500}, headers=auth(user)
    )
    jid = r.json()["id"]
    got: list[int] = []
    async for _event, eid, _ in sse(http, f"/v1/jobs/{jid}/audit/stream", auth(user)):
        got.append(int(eid))
        if len(got) == 40:
            break  # the client drops mid-job
    async for event, eid, _ in sse(http, f"/v1/jobs/{jid}/audit/stream", {**auth(user), "Last-Event-ID": str(got[-1])}):
        if event == "end":
            break
        got.append(int(eid))
    assert got == list(range(1, len(got) + 1))
    total = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()["audit_events"]
    assert len(got) == total


async def test_users_cannot_see_each_others_jobs(http, fake, user, db):
    other = await accounts.create_user(db, f"other-{uuid.uuid4().hex[:6]}")
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "Owls", "target_words": 20}, headers=auth(user))
    jid = r.json()["id"]
    await follow_to_end(http, jid, user)
    for method, path in [
        ("GET", ""),
        ("GET", "/output"),
        ("GET", "/audit"),
        ("GET", "/audit?format=txt"),
        ("GET", "/audit/stream"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ]:
        r = await http.request(method, f"/v1/jobs/{jid}{path}", headers=auth(other))
        assert r.status_code == 404, (method, path)
        assert r.json()["detail"] == f"no job '{jid}'"
    assert jid not in [h["id"] for h in (await http.get("/v1/jobs", headers=auth(other))).json()["items"]]
    assert (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).status_code == 200


async def test_downloads_of_a_10000_event_log_are_complete_and_equal(http, user, db):
    job_id = await make_job(db, user.user_id)
    for batch in range(10):
        async with db.job_tx(job_id) as tx:
            for i in range(1000):
                tx.event("test", "bulk", {"batch": batch, "i": i, "text": "tab\there, newline\nthere, é ✓"})
    total = await db_seq(db, job_id)
    assert total >= 10_000
    base = f"/v1/jobs/{job_id}/audit?download=1"
    j = await http.get(base + "&format=json", headers=auth(user))
    nd = await http.get(base + "&format=ndjson", headers=auth(user))
    tx = await http.get(base + "&format=txt", headers=auth(user))
    assert j.headers["content-disposition"] == f'attachment; filename="quire-audit-{job_id}.json"'
    from_json = j.json()["events"]
    from_nd = [json.loads(line) for line in nd.text.splitlines()]
    lines = tx.text.splitlines(keepends=True)
    assert lines[0] == TXT_HEADER
    from_txt = [parse_txt_line(line) for line in lines[1:]]
    assert len(from_json) == total and [e["seq"] for e in from_json] == list(range(1, total + 1))
    assert from_json == from_nd == from_txt


async def db_seq(db, job_id) -> int:
    async with db.tx() as s:
        return (await s.get(Job, job_id)).audit_seq


async def test_health_and_readiness(http):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    r = await http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "database": "ok", "temporal": "ok"}


async def test_openapi_has_no_5xx_under_schemathesis(api_url: str, db, http) -> None:
    fuzz_user = await accounts.create_user(db, f"fuzz-{uuid.uuid4().hex[:6]}")
    # schemathesis is synchronous; the server runs on this test's event loop, so call it from a thread.
    failures = await asyncio.to_thread(run_schemathesis, api_url, auth(fuzz_user))
    # Valid fuzzed submissions started real jobs (up to 500,000 words): stop them.
    for j in (await http.get("/v1/jobs?limit=100", headers=auth(fuzz_user))).json()["items"]:
        if j["status"] in ("queued", "running"):
            await http.post(f"/v1/jobs/{j['id']}/cancel", headers=auth(fuzz_user))
    assert failures == []


def run_schemathesis(api_url: str, headers: dict[str, str]) -> list[str]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/audit/stream"):
            continue  # unending for a running job; the SSE tests above cover it

        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

        check()
    return failures
