"""Audit logs through the API: JSON, NDJSON and TXT downloads, pages, the TXT line format, and the
live stream (resume without gap or duplicate, keep-alive, latency, the end event)."""

from __future__ import annotations

import ast
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import httpx
import pytest

import api.audit
from api import live
from api.live import AuditListener
from core.eventformat import EVENT_KINDS, TXT_HEADER, parse_txt_line, summary, txt_line
from core.logfile import parse_log
from db.models import Job
from services import accounts
from testkit import make_job
from tests.helpers import auth, follow_to_end, set_status, sse

pytestmark = pytest.mark.usefixtures("worker")


TRICKY = "tab\there, newline\nthere, cr\r, backslash \\n, é ✓, line sep \u2028 \x85 end"


async def audit_seq(db, job_id: uuid.UUID) -> int:
    async with db.tx() as s:
        job = await s.get(Job, job_id)
        assert job is not None
        return job.audit_seq


async def test_downloads_of_a_10000_event_log_are_complete_and_equal(http, user, db):
    job_id = await make_job(db, user.user_id)
    for batch in range(10):
        async with db.job_tx(job_id) as tx:
            for i in range(1000):
                tx.event("test", "bulk", {"batch": batch, "i": i, "text": TRICKY})
    total = await audit_seq(db, job_id)
    assert total >= 10_000
    base = f"/v1/jobs/{job_id}/audit?download=1"
    j = await http.get(base + "&format=json", headers=auth(user))
    nd = await http.get(base + "&format=ndjson", headers=auth(user))
    tx = await http.get(base + "&format=txt", headers=auth(user))
    for r, fmt, media in [
        (j, "json", "application/json"),
        (nd, "ndjson", "application/x-ndjson"),
        (tx, "txt", "text/plain; charset=utf-8"),
    ]:
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert r.headers["content-disposition"] == f'attachment; filename="quire-audit-{job_id}.{fmt}"'
    page = j.json()
    assert page["job_id"] == str(job_id) and page["next_after"] is None
    from_json = page["events"]
    nd_log, tx_log = parse_log(nd.text), parse_log(tx.text)
    from_nd = nd_log.events
    lines = tx.text.splitlines(keepends=True)  # splitlines: no line separator survives unescaped
    # Each download is recorded in the log before it is read: each holds its own record last,
    # then the log's signed checkpoints (one more each time: a download ends a step).
    assert lines[0] == TXT_HEADER and len(lines) == total + 3 + 1 + len(tx_log.checkpoints)
    from_txt = [parse_txt_line(line) for line in lines[1 : total + 4]]
    assert from_txt == tx_log.events
    notes = [c["note"] for c in page["checkpoints"]]
    assert (
        notes
        and nd_log.checkpoints[: len(notes)] == notes
        and tx_log.checkpoints[: len(nd_log.checkpoints)] == (nd_log.checkpoints)
    )
    assert [e["seq"] for e in from_json] == list(range(1, total + 2))
    assert from_json == from_nd[:-1] and from_nd == from_txt[:-1]
    assert [(e["kind"], e["action"], e["data"]["format"]) for e in from_txt[total:]] == [
        ("user", "download_audit", "json"),
        ("user", "download_audit", "ndjson"),
        ("user", "download_audit", "txt"),
    ]
    assert from_json[total - 1]["data"]["text"] == TRICKY
    assert (page["head_seq"], page["head_hash"]) == (total + 1, from_json[-1]["hash"])
    # Without download=1 the same log comes inline, and reading it is not recorded.
    inline = await http.get(f"/v1/jobs/{job_id}/audit?format=ndjson", headers=auth(user))
    assert "content-disposition" not in inline.headers
    assert parse_log(inline.text).events == from_txt
    assert await audit_seq(db, job_id) == total + 3


async def test_pages_in_every_format_join_up_to_the_whole_log(http, user, db):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        for i in range(23):
            tx.event("test", "page", {"i": i})
        tx.event("llm", "call", {"purpose": "write"})
    total = await audit_seq(db, job_id)
    whole = (await http.get(f"/v1/jobs/{job_id}/audit", headers=auth(user))).json()["events"]
    got, after = [], 0
    while True:
        page = (await http.get(f"/v1/jobs/{job_id}/audit?limit=10&after={after}", headers=auth(user))).json()
        got += page["events"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert got == whole and len(got) == total
    nd = (await http.get(f"/v1/jobs/{job_id}/audit?format=ndjson&after=5&limit=3", headers=auth(user))).text
    assert [json.loads(x)["seq"] for x in nd.splitlines()] == [6, 7, 8]
    txt = (await http.get(f"/v1/jobs/{job_id}/audit?format=txt&after=5&limit=3", headers=auth(user))).text
    assert [parse_txt_line(x) for x in txt.splitlines(keepends=True)[1:]] == whole[5:8]
    tests = (await http.get(f"/v1/jobs/{job_id}/audit?kind=sql&kind=llm", headers=auth(user))).json()["events"]
    assert tests and {e["kind"] for e in tests} == {"sql", "llm"}
    for query, loc in [
        ("format=xml", "format"),
        ("kind=gossip", "kind"),
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("after=abc", "after"),
    ]:
        r = await http.get(f"/v1/jobs/{job_id}/audit?{query}", headers=auth(user))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["query", loc], query


def kinds_written() -> dict[str, list[str]]:
    """Every event kind the code writes, read from its source (kind -> where): ``tx.event("k", ...)``,
    ``services.temporal.record(db, job, "k", ...)`` and an ``AuditBuffer``'s ``add("k", ...)`` in db/
    and services/ (core's ``add`` calls are the gate's cuts, not events)."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, list[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in (".venv", "tests", "bench", "build") or "migrations" in rel.parts:
            continue
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(n, ast.Call):
                continue
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
            at = {"event": 0, "record": 2, "add": 0 if rel.parts[0] in ("db", "services") else None}.get(name or "")
            if at is not None and len(n.args) > at:
                arg = n.args[at]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.setdefault(arg.value, []).append(f"{rel}:{n.lineno}")
    return out


def test_the_kinds_the_api_knows_are_the_kinds_the_code_writes():
    written = kinds_written()
    assert {"sql", "continuity", "memory", "seam", "unit", "edit", "webhook"} <= set(written)  # the scan sees
    unknown = {k: v for k, v in written.items() if k not in EVENT_KINDS}
    assert not unknown, f"kinds written but not in core.eventformat.EVENT_KINDS: {unknown}"
    assert not set(EVENT_KINDS) - set(written), "kinds in EVENT_KINDS that nothing writes"


async def test_every_kind_written_is_a_filter_the_api_accepts(http, user, db):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        for kind in kinds_written():
            tx.event(kind, "test", {"kind": kind})
    for kind in kinds_written():
        r = await http.get(f"/v1/jobs/{job_id}/audit?kind={kind}", headers=auth(user))
        assert r.status_code == 200, (kind, r.text)
        assert [e["data"].get("kind") for e in r.json()["events"] if e["action"] == "test"] == [kind]


def test_txt_lines_read_well_and_lose_nothing():
    sql = {
        "seq": 7,
        "ts": "2026-11-22T17:00:00.123456+00:00",
        "kind": "sql",
        "action": "write",
        "table_name": "chunks",
        "row_id": None,
        "sql_text": "UPDATE chunks SET text=%(text)s\nWHERE chunks.id = %(id)s",
        "data": {"params": {"text": TRICKY, "id": 3}, "rowcount": 1, "duration_ms": 0.4},
        "chain": 2,
        "job_id": "5f0c6a52-4a0e-4f39-9d55-2d3c1f0b9a11",
        "prev_hash": "0" * 64,
        "hash": "ab" * 32,
    }
    line = txt_line(sql)
    assert line == (
        "7\t2026-11-22T17:00:00.123456+00:00\tsql\twrite\tchunks\t-\t"
        "UPDATE chunks SET text=%(text)s\\nWHERE chunks.id = %(id)s\t"
        + line.split("\t")[7]  # the data, then the chain last, where a reader can hide it
        + "\t2\t5f0c6a52-4a0e-4f39-9d55-2d3c1f0b9a11\t"
        + "0" * 64
        + "\t"
        + "ab" * 32
        + "\n"
    )
    assert line.count("\n") == 1 and len(line.splitlines()) == 1 and parse_txt_line(line) == sql
    llm = {
        **sql,
        "kind": "llm",
        "action": "call",
        "table_name": None,
        "sql_text": None,
        "data": {"purpose": "write", "model": "m", "tokens_in": 120, "tokens_out": 80, "latency_ms": 950},
    }
    assert summary(llm) == "write · m · tokens 120 in / 80 out · 950 ms"
    assert txt_line(llm, with_data=False).split("\t")[6] == "write · m · tokens 120 in / 80 out · 950 ms\n"
    assert parse_txt_line(txt_line(llm)) == llm
    row = {**llm, "kind": "row", "action": "update", "table_name": "jobs", "row_id": "abc"}
    row["data"] = {"changes": {"status": {"old": "queued", "new": "running"}}}
    assert summary(row) == "jobs #abc status: queued → running"
    length = {
        **llm,
        "kind": "length",
        "action": "check",
        "data": {"chunk": 2, "words": 650, "min_words": 600, "passed": True},
    }
    assert summary(length) == "chunk 3 · 650 / 600 words · PASS"
    other = {**llm, "kind": "test", "data": {"text": TRICKY}}
    assert "\n" not in txt_line(other)[:-1] and parse_txt_line(txt_line(other)) == other


async def test_stream_resumes_with_last_event_id_without_gap_or_duplicate(http, fake, user):
    fake.reset(delay_s=0.02)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Dunes", "target_words": 1500}, headers=auth(user)
    )
    jid = r.json()["id"]
    got: list[int] = []
    status = "queued"
    async for _event, eid, _ in sse(http, f"/v1/jobs/{jid}/audit/stream", auth(user)):
        got.append(int(eid))
        if len(got) == 40:
            break  # the client drops mid-job
    status = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()["status"]
    assert status in ("queued", "running")  # it really was mid-job
    end = None
    while end is None:  # drop again after 80 more events, then follow to the end
        async for event, eid, data in sse(
            http, f"/v1/jobs/{jid}/audit/stream", {**auth(user), "Last-Event-ID": str(got[-1])}
        ):
            if event == "end":
                end = json.loads(data)
                break
            got.append(int(eid))
            if len(got) == 120:
                break
    assert end is not None and end["status"] == "succeeded"
    assert got == list(range(1, len(got) + 1))
    total = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()["audit_events"]
    assert len(got) == total == end["last_seq"]


async def test_stream_resume_with_after_and_the_later_of_the_two(http, user, db):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        for i in range(10):
            tx.event("test", "e", {"i": i})
    await set_status(db, job_id, "succeeded")
    total = await audit_seq(db, job_id)
    seqs, end = await follow_to_end(http, str(job_id), user, after=4)
    assert seqs == list(range(5, total + 1)) and end == {"status": "succeeded", "last_seq": total}
    got = []
    async for event, eid, _ in sse(
        http, f"/v1/jobs/{job_id}/audit/stream?after=2", {**auth(user), "Last-Event-ID": "9"}
    ):
        if event == "end":
            break
        got.append(int(eid))
    assert got == list(range(10, total + 1))
    # A malformed Last-Event-ID is the client's error (400), not a silent restart at seq 1.
    for bad in (b"abc", b"-1", b"1e3", b"99999999999999999999999", "²".encode("latin-1"), b"null"):
        r = await http.get(f"/v1/jobs/{job_id}/audit/stream", headers={**auth(user), "Last-Event-ID": bad})
        shown = repr(bad.decode("latin-1"))
        assert r.status_code == 400 and r.json() == {
            "detail": f"Last-Event-ID must be an audit seq, a whole number (got {shown})"
        }


async def test_live_events_arrive_within_100_ms_of_commit_with_keepalive(http, user, db, monkeypatch):
    monkeypatch.setattr(api.audit, "SSE_PING_S", 0.3)
    job_id = await make_job(db, user.user_id)
    backlog = await audit_seq(db, job_id)
    arrived: dict[int, float] = {}
    comments: list[str] = []
    pinged = asyncio.Event()

    def on_comment(line: str) -> None:
        comments.append(line)
        pinged.set()

    caught_up = asyncio.Event()
    done = asyncio.Event()

    async def reader() -> None:
        async for _event, eid, _ in sse(http, f"/v1/jobs/{job_id}/audit/stream", auth(user), on_comment):
            arrived[int(eid)] = time.perf_counter()
            if int(eid) == backlog:
                caught_up.set()
            if len(arrived) == backlog + 30:
                done.set()
                return

    task = asyncio.create_task(reader())
    await asyncio.wait_for(caught_up.wait(), 10)  # subscribed: it has read its backlog
    # An idle stream sends keep-alive comments.
    await asyncio.wait_for(pinged.wait(), 5)
    assert comments[0].startswith(": ping")
    committed: dict[int, float] = {}
    for i in range(30):
        async with db.job_tx(job_id) as tx:
            tx.event("test", "tick", {"i": i})
        committed[backlog + i + 1] = time.perf_counter()
        await asyncio.sleep(0.005)
    await asyncio.wait_for(done.wait(), 10)
    await task
    lat = [(arrived[s] - committed[s]) * 1000 for s in committed]
    # Woken by NOTIFY at commit, not by the 5 s fallback poll.
    assert statistics.median(lat) < 100 and max(lat) < 1000, lat


async def test_a_finished_jobs_stream_sends_its_log_then_ends(http, user, db):
    job_id = await make_job(db, user.user_id)
    await set_status(db, job_id, "failed")
    total = await audit_seq(db, job_id)
    t0 = time.perf_counter()
    seqs, end = await follow_to_end(http, str(job_id), user)
    assert seqs == list(range(1, total + 1)) and end == {"status": "failed", "last_seq": total}
    assert time.perf_counter() - t0 < 2
    # Resuming after the end: nothing more, just the end.
    assert await follow_to_end(http, str(job_id), user, after=total) == ([], end)


async def test_streams_are_per_user(http, user, db):
    other = await accounts.create_user(db, f"other-{uuid.uuid4().hex[:6]}")
    job_id = await make_job(db, user.user_id)
    r = await http.get(f"/v1/jobs/{job_id}/audit/stream", headers={**auth(other), "Last-Event-ID": "1"})
    assert r.status_code == 404 and r.json() == {"detail": f"no job '{job_id}'"}
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=10) as c:
        r = await c.get(f"/v1/jobs/{job_id}/audit/stream")
    assert r.status_code == 401


async def test_many_clients_and_bursts_larger_than_the_feed_get_every_seq_once(http, user, db):
    """Five clients on one job while writers commit bursts of 1,500 events (more than a feed keeps,
    so slow streams fall back to the table) and single events: each client gets 1..N in order."""
    job_id = await make_job(db, user.user_id)
    backlog = await audit_seq(db, job_id)
    clients = 5
    got: list[list[int]] = [[] for _ in range(clients)]
    subscribed = [asyncio.Event() for _ in range(clients)]

    async def reader(i: int) -> None:
        async for event, eid, _ in sse(http, f"/v1/jobs/{job_id}/audit/stream", auth(user)):
            if event == "end":
                return
            got[i].append(int(eid))
            if int(eid) == backlog:
                subscribed[i].set()

    tasks = [asyncio.create_task(reader(i)) for i in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in subscribed)), 10)

    async def burst(n: int) -> None:
        async with db.job_tx(job_id) as tx:
            for i in range(n):
                tx.event("test", "burst", {"i": i})

    await asyncio.gather(burst(1500), burst(1), burst(1500), burst(1), burst(1))
    for _ in range(20):
        await burst(1)
    await set_status(db, job_id, "succeeded")
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    total = await audit_seq(db, job_id)
    assert total > 3000
    for seqs in got:
        assert seqs == list(range(1, total + 1))


async def test_a_stream_that_falls_behind_its_feed_reads_the_table(db, user):
    """In-process: a stream paused (a slow client) while more than the feed keeps commits, then
    resumed, finds the feed has moved past it, reads the table, and still sends every seq once."""
    listener = AuditListener(db)
    listener.start()
    try:
        await asyncio.wait_for(listener.ready.wait(), 10)
        job_id = await make_job(db, user.user_id)
        backlog = await audit_seq(db, job_id)
        gen = live.stream(db, listener, job_id, 0)
        seqs = [int((await anext(gen))["id"]) for _ in range(backlog)]
        feed = listener.feeds[job_id]
        async with db.job_tx(job_id) as tx:
            tx.event("test", "one", {})
        seqs.append(int((await anext(gen))["id"]))  # sent from the feed; the stream pauses here
        assert feed.ready and seqs[-1] == feed.last
        moved = asyncio.Event()
        feed.wakes.add(moved)
        for _ in range(3):
            async with db.job_tx(job_id) as tx:
                for i in range(1000):
                    tx.event("test", "burst", {"i": i})
        target = await audit_seq(db, job_id)
        while feed.last < target:
            moved.clear()
            await asyncio.wait_for(moved.wait(), 10)
        assert feed.base > seqs[-1]  # the feed no longer holds what the paused stream needs next
        assert feed.take(seqs[-1]) is None
        feed.wakes.discard(moved)
        await set_status(db, job_id, "cancelled")
        async for ev in gen:
            if ev.get("event") == "end":
                assert json.loads(ev["data"]) == {"status": "cancelled", "last_seq": await audit_seq(db, job_id)}
                break
            seqs.append(int(ev["id"]))
        assert seqs == list(range(1, await audit_seq(db, job_id) + 1))
        await gen.aclose()
        assert job_id not in listener.feeds  # the last stream gone, its feed goes too
    finally:
        await listener.stop()
