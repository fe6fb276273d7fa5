"""A log no one rewrites unseen: the witness (C2SP tlog-witness, storage of its own) cosigns only
trees that extend its own; checkpoints are append-only and name the one before; a database
holder's rewrite is refused where it happens and raises the alarm; the verifier fails closed on a
stripped, truncated or malformed log."""

from __future__ import annotations

import base64
import os
import uuid

import httpx
import psycopg
import pytest
from standardwebhooks import Webhook

from core import checkpoint, merkle
from core.eventformat import event_hash, ts_text
from core.spec import JobSpec
from db.witness import WitnessClient, request_body
from metrics import AUDIT_ALARMS
from services import jobs, logreader, witness
from testkit import make_job
from tests.conftest import AUDIT_KEY
from tests.helpers import TASK_QUEUE, Receiver, arun, auth, follow_to_end

pytestmark = pytest.mark.usefixtures("worker")
PUBLIC = [AUDIT_KEY.verifier]
ORIGIN = checkpoint.origin("5e1f4c1e-0000-4000-8000-000000000001")


def _tree(entries: list[bytes]) -> tuple[bytes, dict[merkle.Node, bytes]]:
    f, nodes = merkle.Frontier(), {}
    for i, e in enumerate(entries):
        nodes[(0, i)] = merkle.leaf_hash(e)
        nodes.update(f.append(e))
    return f.root(), nodes


def _note(entries: list[bytes], key: checkpoint.SignerKey = AUDIT_KEY, origin: str = ORIGIN) -> str:
    root, _ = _tree(entries)
    return key.sign(f"{origin}\n{len(entries)}\n{base64.b64encode(root).decode()}\ntime 1\n")


def _body(old: int, entries: list[bytes], note: str | None = None) -> bytes:
    _, nodes = _tree(entries)
    proof = merkle.consistency_proof(old, len(entries), nodes) if 0 < old < len(entries) else []
    return request_body(old, proof, note or _note(entries))


async def test_the_witness_cosigns_only_trees_that_extend_the_one_it_holds(tmp_path):
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    w = witness.Witness(tmp_path / "w", tmp_path / "audit.pub")
    leaves = [os.urandom(32) for _ in range(12)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(witness.app(w)), base_url="http://w") as http:

        async def post(body: bytes) -> httpx.Response:
            return await http.post("/add-checkpoint", content=body)

        r = await post(_body(0, leaves[:5]))
        assert r.status_code == 200, r.text
        cp = checkpoint.parse(checkpoint.with_cosignatures(_note(leaves[:5]), [r.text]))
        ts = checkpoint.cosigned_by(cp, [w.key.verifier])[w.key.verifier.label]
        # tlog-cosignature/v1: the signed message is the header, the time line, then the note's text.
        blob = base64.b64decode(r.text.split()[-1])
        assert blob[:4] == w.key.verifier.key_id.to_bytes(4, "big") and int.from_bytes(blob[4:12], "big") == ts
        assert w.key.verifier.verify(f"cosignature/v1\ntime {ts}\n{cp.body}".encode(), blob[12:])
        # A client that does not know the size it holds learns it from the 409.
        r = await post(_body(0, leaves[:9]))
        assert (r.status_code, r.headers["content-type"], r.text) == (409, "text/x.tlog.size", "5\n")
        assert (await post(_body(5, leaves[:9]))).status_code == 200
        forked = [leaves[0], os.urandom(32), *leaves[2:12]]  # leaf 1 rewritten, the rest recomputed
        r = await post(_body(9, forked))
        assert r.status_code == 422 and "does not extend" in r.text
        r = await post(_body(9, forked[:9]))  # another root at the size it holds
        assert r.status_code == 409 and "forked" in r.text
        assert (
            await post(_body(9, leaves[:12], _note(leaves[:12], checkpoint.SignerKey.generate())))
        ).status_code == 403
        other = _note(leaves[:12], origin="example.com/log")
        assert (await post(_body(9, leaves[:12], other))).status_code == 404
        assert (await post(request_body(13, [], _note(leaves[:12])))).status_code == 400
        assert (await post(b"old 01\n\n" + _note(leaves[:12]).encode())).status_code == 400
        assert (await post(b"not a request")).status_code == 400
    assert w.held(ORIGIN) == (9, _tree(leaves[:9])[0])  # nothing refused moved it
    refused = w.db.execute("SELECT status FROM refused ORDER BY id").fetchall()
    assert [s for (s,) in refused] == [422, 409]  # the fork's signed requests, kept as evidence
    w.close()
    again = witness.Witness(tmp_path / "w", tmp_path / "audit.pub")  # restarted: the same key, the same state
    assert again.key == w.key and again.held(ORIGIN) == (9, _tree(leaves[:9])[0])
    again.close()


async def test_checkpoints_are_witnessed_append_only_and_name_the_one_before(db, user, pg_url, witness):
    job = await make_job(db, user.user_id)
    for i in range(3):
        async with db.job_tx(job) as tx:
            tx.event("user", "note", {"i": i})
    notes = await logreader.checkpoints(db, job)
    assert [n["prev_size"] for n in notes] == [None, notes[0]["tree_size"], notes[1]["tree_size"]]
    for n in notes:
        cp = checkpoint.verify(n["note"], PUBLIC)
        assert cp.time is not None and cp.prev == (n["prev_size"] or 0) and cp.end is None
        assert list(checkpoint.cosigned_by(cp, [witness.key])) == [witness.key.label]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for sql in (
            "DELETE FROM audit_checkpoints WHERE job_id = %s",
            "UPDATE audit_checkpoints SET note = note WHERE job_id = %s",
            "DELETE FROM audit_cosignatures WHERE job_id = %s",
            "DELETE FROM audit_nodes WHERE job_id = %s",
        ):
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="append-only|go only with their job|immutable"
            ):
                conn.execute(sql, (job,))
        conn.execute("DELETE FROM jobs WHERE id = %s", (job,))  # they go with their job
        left = conn.execute("SELECT count(*) FROM audit_checkpoints WHERE job_id = %s", (job,)).fetchone()
    assert left == (0,)


def rewrite(pg_url: str, job_id: uuid.UUID, *, nodes: bool = True) -> None:
    """What whoever holds the database does to rewrite a log unseen: triggers off, event 1 changed
    (the job's target_words), every hash after it recomputed, the job row's frontier and head too
    (and, with ``nodes``, the tree's stored nodes), and the job's checkpoints deleted."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute(
            "SELECT id, seq, ts, kind, action, table_name, row_id, sql_text, data, chain, job_id FROM audit_events"
            " WHERE job_id = %s ORDER BY seq",
            (job_id,),
        ).fetchall()
        first = rows[0]["data"]
        params = first.get("params") if isinstance(first.get("params"), dict) else None
        (params if params is not None and "target_words" in params else first)["target_words"] = 99_999
        prev, tree, made = "0" * 64, merkle.Frontier(), []
        for r in rows:
            e = {**r, "ts": ts_text(r["ts"]), "job_id": str(r["job_id"])}
            h = event_hash(prev, e)
            cur.execute(
                "UPDATE audit_events SET data = %s, prev_hash = %s, hash = %s WHERE id = %s",
                (psycopg.types.json.Jsonb(r["data"]), prev, h, r["id"]),
            )
            made += tree.append(merkle.leaf_entry(h))
            prev = h
        if nodes:
            conn.execute("DELETE FROM audit_nodes WHERE job_id = %s", (job_id,))
            with cur.copy("COPY audit_nodes (job_id, level, idx, hash) FROM STDIN") as copy:
                for (level, idx), h in made:
                    copy.write_row((job_id, level, idx, h))
        conn.execute(
            "UPDATE jobs SET audit_head = %s, audit_frontier = %s, audit_signed = 0 WHERE id = %s",
            (prev, tree.to_text(), job_id),
        )
        conn.execute("DELETE FROM audit_cosignatures WHERE job_id = %s", (job_id,))
        conn.execute("DELETE FROM audit_checkpoints WHERE job_id = %s", (job_id,))


def _alarms(by: str) -> float:
    return AUDIT_ALARMS.labels(by)._value.get()


async def test_a_database_holders_rewrite_is_refused_by_the_witness_and_raises_the_alarm(
    http, api_url, db, user, fake, pg_url, witness, tmp_path
):
    secret = (await http.post("/v1/webhook/secret", headers=auth(user))).json()["secret"]
    with Receiver([]) as receiver:
        body = {"kind": "generate", "prompt": "Harbours", "target_words": 80, "webhook_url": receiver.url}
        jid = (await http.post("/v1/jobs", json=body, headers=auth(user))).json()["id"]
        _, end = await follow_to_end(http, jid, user)
        assert end["status"] == "succeeded"
        await receiver.wait_for(1)  # the job's end
        v = (await http.get(f"/v1/jobs/{jid}/audit/verify", headers=auth(user))).json()
        assert v["intact"], v["reason"]
        rewrite(pg_url, uuid.UUID(jid))
        before = _alarms("witness")
        assert (await http.post(f"/v1/jobs/{jid}/views", headers=auth(user))).status_code == 204  # signs
        got = await receiver.wait_for(2)
    # The witness refused the rewritten tree: it was not signed as the log's, and the alarm is up.
    assert _alarms("witness") == before + 1
    log = [e async for e in logreader.iter_events(db, uuid.UUID(jid), 0, None)]
    alarm = next(e for e in log if e["action"] == "audit_alarm")
    assert (alarm["kind"], alarm["action"], alarm["data"]["by"]) == ("error", "audit_alarm", witness.key.label)
    assert "refused" in alarm["data"]["reason"] and "does not extend" in alarm["data"]["reason"]
    assert await logreader.checkpoints(db, uuid.UUID(jid)) == []
    payload = Webhook(secret).verify(got[1]["body"], {k.lower(): v for k, v in got[1]["headers"].items()})
    assert payload["type"] == "audit.alarm" and payload["data"]["job_id"] == jid
    assert payload["data"]["by"] == witness.key.label and "does not extend" in payload["data"]["reason"]
    # The job says so: its view (its page shows it), and `quire status`.
    view = (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()
    assert "does not extend" in view["audit_alarm"]
    env = {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": user.api_key, "QUIRE_HOME": "/nonexistent"}
    code, out, err = await arun("status", jid, env=env)
    assert code == 0 and "AUDIT ALARM: a checkpoint of the log was refused" in out, out + err
    # Every verifier says so: the API, the CLI from the database, the CLI offline from a download.
    v = (await http.get(f"/v1/jobs/{jid}/audit/verify", headers=auth(user))).json()
    assert not v["intact"] and "no signed checkpoint" in v["reason"] and "does not extend" in v["alarm"]
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    env = {"QUIRE_HOME": str(tmp_path)}
    code, out, err = await arun("audit", "verify", jid, "--url", pg_url, env=env)
    assert code == 1 and "BROKEN" in out and "ALARM: a checkpoint of this log was refused" in out, out + err
    (tmp_path / "log.json").write_bytes(
        (await http.get(f"/v1/jobs/{jid}/audit?download=1", headers=auth(user))).content
    )
    code, out, err = await arun(
        "audit", "verify", "--file", str(tmp_path / "log.json"), "--key", str(tmp_path / "audit.pub"), env={}
    )
    assert code == 1 and "no signed checkpoint" in out, out + err


async def test_a_rewrite_that_leaves_the_stored_tree_is_refused_by_the_signer_itself(db, user, pg_url):
    job = await make_job(db, user.user_id)
    for i in range(5):
        async with db.job_tx(job) as tx:
            tx.event("user", "note", {"i": i})
    rewrite(pg_url, job, nodes=False)
    before = _alarms("signer")
    async with db.job_tx(job) as tx:
        tx.event("user", "view", {})
    assert _alarms("signer") == before + 1
    log = [e async for e in logreader.iter_events(db, job, 0, None)]
    assert log[-1]["action"] == "audit_alarm" and log[-1]["data"]["by"] == "signer"
    assert "its stored tree has root" in log[-1]["data"]["reason"]
    async with db.job_tx(job) as tx:  # no checkpoint is signed for it any more
        tx.event("user", "view", {})
    assert await logreader.checkpoints(db, job) == []
    v = await logreader.verify(db, job, PUBLIC)
    assert not v.intact and "no signed checkpoint" in v.reason and "the log was altered" in v.alarm


async def test_a_witness_that_does_not_answer_is_caught_up_by_the_next_checkpoint(db, user, witness, monkeypatch):
    job = await make_job(db, user.user_id)
    dead = WitnessClient("http://127.0.0.1:9", witness.key, timeout_s=1.0)  # nothing listens there
    for who in (witness, dead, dead, witness):
        monkeypatch.setattr(db.signer, "witnesses", [who])
        async with db.job_tx(job) as tx:
            tx.event("user", "note", {})
    notes = await logreader.checkpoints(db, job)
    cosigned = [bool(checkpoint.cosigned_by(checkpoint.parse(n["note"]), [witness.key])) for n in notes]
    assert cosigned == [True, False, False, True]  # one a write
    # Signed all the same (the operator's key), proved to the witness from the size it held.
    assert all(checkpoint.verify(n["note"], PUBLIC) for n in notes)
    v = await logreader.verify(db, job, PUBLIC, [witness.key])
    assert v.intact and v.witness_answers == {witness.key.label: "cosigned"} and v.witnessed_by == [witness.key.label]


async def test_a_finished_jobs_end_is_left_witnessed_by_its_webhook_workflow(db, client, fake, user, witness):
    job, _ = await jobs.submit(
        db, client, user_id=user.user_id, user_name=user.name, task_queue=TASK_QUEUE, default_model="fake-model",
        spec=JobSpec(kind="generate", prompt="Reeds", target_words=60), witness=True,
    )  # fmt: skip
    assert await client.get_workflow_handle(job.workflow_id).result() == "succeeded"  # its end starts the child
    assert await client.get_workflow_handle(f"{job.workflow_id}-webhook").result() == 1  # one witness cosigned
    log = [e async for e in logreader.iter_events(db, job.id, 0, None)]
    assert [e["action"] for e in log if e["kind"] == "webhook"] == ["witness"]
    last = (await logreader.checkpoints(db, job.id))[-1]
    cp = checkpoint.verify(last["note"], PUBLIC)
    assert cp.end is not None and list(checkpoint.cosigned_by(cp, [witness.key])) == [witness.key.label]
    assert next(e for e in log if e["seq"] == cp.end)["data"]["terminal"] is True
