"""The audit log as proof: its hash chain verifies from the database and from a downloaded file,
any change to any event is caught and named, logs written before the chain are chained by the
upgrade, long values are references that verify, and the canonical form and TXT lines carry the
chain. What the log records (rolled-back work, retried steps, user actions): test_audit_records.py."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import psycopg
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from core.chain import verify_events
from core.eventformat import GENESIS, canonical, event_hash, is_ref, normalize, parse_txt_line, txt_line
from core.logfile import parse_log
from db import schema
from db.manuscript import PlanNode
from db.models import Document, Job
from db.session import Database
from services import logreader
from testkit import make_job
from tests.conftest import AUDIT_KEY
from tests.helpers import arun, auth, follow_to_end, log_events

pytestmark = pytest.mark.usefixtures("worker")


async def downloaded(db: Database, job_id: uuid.UUID, fmt: str = "json") -> str:
    """The log exactly as the download route renders it."""
    return "".join([part async for part in logreader.render(db, job_id, 0, None, fmt)])


def offline(log: str, head: str | None = None) -> tuple[int | None, bool]:
    parsed = parse_log(log)
    v = verify_events(
        parsed.events, head or parsed.head_hash, parsed.head_seq, job_id=parsed.job_id, checkpoints=parsed.checkpoints
    )
    return v.first_bad_seq, v.intact


async def test_a_finished_job_verifies_from_the_database_and_from_its_downloads(http, fake, user, db, pg_url, tmp_path):
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Salt", "target_words": 900}, headers=auth(user)
    )
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    out = await http.get(f"/v1/jobs/{jid}/output", headers=auth(user))
    v = (await http.get(f"/v1/jobs/{jid}/audit/verify", headers=auth(user))).json()
    async with db.tx() as s:
        job = await s.get(Job, uuid.UUID(jid))
        doc = (
            await s.execute(select(Document).where(Document.job_id == job.id, Document.role == "output"))
        ).scalar_one()
    assert v["intact"] and v["first_bad_seq"] is None and v["reason"] is None
    assert (v["events"], v["head_seq"], v["head_hash"]) == (job.audit_seq, job.audit_seq, job.audit_head)
    # The output records the head it was finalized at, and that head is in the chain.
    assert doc.audit_head is not None and 0 < doc.audit_seq < job.audit_seq and v["anchors_checked"] >= 1
    assert out.headers["x-quire-audit-head"] == doc.audit_head and out.headers["x-quire-audit-seq"] == str(
        doc.audit_seq
    )
    log = await log_events(db, uuid.UUID(jid))
    assert log[doc.audit_seq - 1]["hash"] == doc.audit_head
    # Chunk texts are references to the immutable attempt rows, rechecked by verify.
    refs = [p for e in log for p in (e["data"].get("params") or {}).values() if is_ref(p)]
    assert any(p["$ref"].startswith("chunk_attempts.text_after#") for p in refs) and v["references_checked"] > 0

    # The CLI reaches the same verdict from the database...
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")  # the operator's public key
    env = {"QUIRE_HOME": str(tmp_path / "home")}
    code, stdout, stderr = await arun("audit", "verify", jid, "--url", pg_url, env=env)
    assert code == 0, stderr
    assert "intact, whole to its job's end" in stdout and f"\n  {job.audit_seq} events" in stdout
    assert f"the head {job.audit_head}" in stdout
    assert "(checked with the public keys given)" in stdout
    # ...and offline from the JSON and TXT downloads, which carry the head.
    for fmt in ("json", "txt"):
        r = await http.get(f"/v1/jobs/{jid}/audit?format={fmt}&download=1", headers=auth(user))
        path = tmp_path / f"log.{fmt}"
        path.write_bytes(r.content)
        code, stdout, stderr = await arun("audit", "verify", "--file", str(path), env={})
        assert code == 0, stdout + stderr
        parsed = parse_log(r.text)
        events_, head = parsed.events, parsed.head_hash
        assert "hash chain intact, but NOT verified: no --key" in stdout and f"\n  {len(events_)} events" in stdout
        assert f"the head {events_[-1]['hash']}" in stdout
        if fmt == "json":
            assert head == events_[-1]["hash"] and r.json()["head_seq"] == events_[-1]["seq"]
        assert events_[-1]["kind"] == "user" and events_[-1]["action"] == "download_audit"
    code, _, stderr = await arun("audit", "verify", "--file", str(tmp_path / "log.json"), "--head", "ab" * 32, env={})
    assert code == 1


FIELDS = {
    "seq": "seq = seq + 100000",
    "ts": "ts = ts + interval '1 microsecond'",
    "kind": "kind = 'forged'",
    "action": "action = 'forged'",
    "table_name": "table_name = 'forged'",
    "row_id": "row_id = 'forged'",
    "sql_text": "sql_text = coalesce(sql_text, '') || ' '",
    "data": "data = jsonb_set(data, '{forged}', 'true')",
    "prev_hash": "prev_hash = repeat('f', 64)",
    "hash": "hash = repeat('f', 64)",
}


def tamper(pg_url: str, job_id: uuid.UUID, seq: int, change: str) -> dict[str, Any]:
    """As a superuser with the append-only trigger off (this session only): change one event;
    returns the row as it was."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        before = cur.execute("SELECT * FROM audit_events WHERE job_id = %s AND seq = %s", (job_id, seq)).fetchone()
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"UPDATE audit_events SET {change} WHERE id = %s", (before["id"],))  # noqa: S608
    return before


def restore(pg_url: str, row: dict[str, Any]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        cols = [c for c in row if c != "id"]
        sets = ", ".join(f"{c} = %s" for c in cols)
        vals = [psycopg.types.json.Jsonb(row[c]) if c == "data" else row[c] for c in cols]
        conn.execute(f"UPDATE audit_events SET {sets} WHERE id = %s", (*vals, row["id"]))  # noqa: S608


async def test_a_change_to_any_field_of_any_event_is_caught_and_named(db, pg_url, user, tmp_path):
    job_id = await make_job(db, user.user_id)
    for i in range(3):
        async with db.job_tx(job_id) as tx:
            (await tx.session.get(Job, job_id)).title = f"title {i}"
            tx.event("test", "note", {"i": i, "x": 1.5})
    n = len(await log_events(db, job_id))
    assert (await logreader.verify(db, job_id)).intact and offline(await downloaded(db, job_id)) == (None, True)
    for field, change in FIELDS.items():
        for seq in (1, n // 2, n):
            row = tamper(pg_url, job_id, seq, change)
            try:
                v = await logreader.verify(db, job_id)
                assert (v.intact, v.first_bad_seq) == (False, seq), (field, seq, v)
                for fmt in ("json", "txt", "ndjson"):
                    if fmt == "txt" and field == "sql_text" and row["kind"] != "sql":
                        continue  # TXT shows no sql_text but an sql event's: the copy is the untampered event
                    assert offline(await downloaded(db, job_id, fmt)) == (seq, False), (field, seq, fmt)
            finally:
                restore(pg_url, row)
    assert (await logreader.verify(db, job_id)).intact
    # The CLI names the first bad seq, from the database and from a file, and exits 1.
    row = tamper(pg_url, job_id, 2, FIELDS["data"])
    try:
        code, stdout, _ = await arun("audit", "verify", str(job_id), "--url", pg_url, env={})
        assert code == 1 and f"job {job_id}: BROKEN at seq 2: content does not match its hash" in stdout
        path = tmp_path / "tampered.json"
        path.write_text(await downloaded(db, job_id))
        code, stdout, _ = await arun("audit", "verify", "--file", str(path), env={})
        assert code == 1 and f"{path}: BROKEN at seq 2: " in stdout
    finally:
        restore(pg_url, row)
    (tmp_path / "junk.json").write_text("not a log")
    for args in (
        ["--file", str(tmp_path / "junk.json")],
        ["--file", str(tmp_path / "none.json")],
        [],
        ["x", "--file", "y"],
    ):
        code, _, stderr = await arun("audit", "verify", *args, env={})
        assert code == 2 and stderr, args
    code, _, stderr = await arun("audit", "verify", str(uuid.uuid4()), "--url", pg_url, env={})
    assert code == 2 and "no job" in stderr
    # A consistent rewrite (event 3 changed, every later hash recomputed) still differs from the
    # head kept on the job, and from the head a reader kept; a lone file cannot know better.
    log = await log_events(db, job_id)
    log[2]["data"]["forged"] = True
    prev = log[1]["hash"]
    for e in log[2:]:
        e["prev_hash"], e["hash"] = prev, event_hash(prev, e)
        prev = e["hash"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for e in log[2:]:
            conn.execute(
                "UPDATE audit_events SET data = %s, prev_hash = %s, hash = %s WHERE job_id = %s AND seq = %s",
                (psycopg.types.json.Jsonb(e["data"]), e["prev_hash"], e["hash"], job_id, e["seq"]),
            )
    v = await logreader.verify(db, job_id)
    assert not v.intact and v.first_bad_seq == n and "head hash" in (v.reason or "")
    forged = json.dumps({"job_id": str(job_id), "events": log})
    assert offline(forged) == (None, True)
    async with db.tx() as s:
        real_head = (await s.get(Job, job_id)).audit_head
    assert offline(forged, head=real_head) == (n, False)
    # The last event deleted: the head on the job says what is missing.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_events WHERE job_id = %s AND seq = %s", (job_id, n))
    v = await logreader.verify(db, job_id)
    assert (v.intact, v.first_bad_seq) == (False, n) and "ends at seq" in (v.reason or "")


async def test_logs_written_before_the_chain_are_chained_by_the_upgrade(fresh_db_url):
    url = fresh_db_url()
    schema.upgrade(url, "0001")
    job_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        uid = conn.execute("INSERT INTO users (name) VALUES ('old') RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO jobs (id, user_id, kind, target_words, max_words, model, workflow_id, audit_seq)"
            " VALUES (%s, %s, 'generate', 10, 11, 'm', %s, 3)",
            (job_id, uid, f"job-{job_id}"),
        )
        for seq, data in enumerate(['{"n": 1.0}', '{"big": 10000000000000000}', '{"t": "é\\u2028"}'], 1):
            conn.execute(
                "INSERT INTO audit_events (job_id, seq, ts, kind, action, data) VALUES (%s, %s, now(), 'job', 'x', %s)",
                (job_id, seq, data),
            )
    schema.upgrade(url)
    old = Database(url)
    try:
        v = await logreader.verify(old, job_id)
        assert v is not None and v.intact and v.events == 3
        async with old.job_tx(job_id) as tx:  # new events follow on from the chained ones
            tx.event("job", "y", {})
        v = await logreader.verify(old, job_id)
        assert v.intact and v.events == 4
        assert offline(await downloaded(old, job_id)) == (None, True)
    finally:
        await old.dispose()


async def test_long_values_are_references_that_verify_and_a_change_is_caught(db, pg_url, user):
    job_id = await make_job(db, user.user_id)
    body = "The full text of a long document, stored once. " * 40
    note = "A long note that only the log holds. " * 200
    async with db.job_tx(job_id) as tx:
        tx.session.add(Document(job_id=job_id, role="partial", version=1, text=body, sha256="-", word_count=1))
        tx.session.add(
            section := PlanNode(job_id=job_id, ordinal=0, position=0, title="s", purpose="first " * 100, budget_words=9)
        )
        tx.event("test", "note", {"note": note})
    async with db.job_tx(job_id) as tx:
        (await tx.session.get(PlanNode, section.id)).purpose = "second " * 100
    log = await log_events(db, job_id)
    sql = next(e for e in log if e["kind"] == "sql" and e["sql_text"].startswith("INSERT INTO documents"))
    doc_id = sql["row_id"]
    assert sql["data"]["rows"][0]["values"]["text"]["$ref"] == f"documents.text#{doc_id}"
    ref = sql["data"]["params"]["text"]
    assert ref == {
        "$ref": f"documents.text#{doc_id}",
        "length": len(body),
        "sha256": hashlib.sha256(body.encode()).hexdigest(),
        "head": body[:200],
    }
    assert next(e for e in log if e["kind"] == "test")["data"]["note"] == note  # no row stores it: kept whole
    update = next(e for e in log if e["kind"] == "sql" and e["sql_text"].startswith("UPDATE plan_nodes"))
    change = update["data"]["rows"][0]["changes"]["purpose"]
    assert change["old"]["$ref"] == change["new"]["$ref"] == f"plan_nodes.purpose#{section.id}"
    assert change["old"]["before"] is True and "before" not in change["new"]
    v = await logreader.verify(db, job_id)
    assert v.intact and v.references_checked == 2  # the document, and the section's summary now

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET text = text || '!' WHERE id = %s", (int(doc_id),))
    v = await logreader.verify(db, job_id)
    assert (v.intact, v.first_bad_seq) == (False, sql["seq"]) and f"documents.text#{doc_id}" in v.reason
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET text = %s WHERE id = %s", (body, int(doc_id)))
        conn.execute("UPDATE plan_nodes SET purpose = 'third' WHERE id = %s", (section.id,))
    v = await logreader.verify(db, job_id)  # the section's last logged summary is the update's
    assert (v.intact, v.first_bad_seq) == (False, update["seq"]) and "plan_nodes.purpose" in v.reason


def test_txt_lines_carry_the_chain():
    e = {
        "seq": 1,
        "ts": "2026-11-23T14:05:30.271690Z",
        "kind": "test",
        "action": "x",
        "table_name": None,
        "row_id": None,
        "sql_text": None,
        "data": {"n": 1.0, "big": 2**60},
        "chain": 2,
        "job_id": str(uuid.uuid4()),
    }
    e["prev_hash"], e["hash"] = GENESIS, event_hash(GENESIS, e)
    assert parse_txt_line(txt_line(e)) == e
    # Numbers JSON cannot carry exactly hash as they read back (1.0 is 1; 2**60 as its text).
    same = {**e, "data": {"n": 1, "big": str(2**60)}}
    assert event_hash(GENESIS, same) == e["hash"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)


@given(JSON)
@settings(max_examples=400, deadline=None)
def test_the_canonical_form_is_rfc_8785_and_survives_a_json_round_trip(v):
    assert canonical(v) == rfc8785.dumps(normalize(v))
    stored = json.loads(json.dumps(normalize(v)))  # what a JSON store and any JSON reader give back
    assert canonical(stored) == canonical(v) and normalize(stored) == stored
