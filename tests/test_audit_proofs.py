"""The audit log's proofs: the job id in every event's hash, a Merkle tree per log with signed
checkpoints, inclusion and consistency proofs checked offline with the operator's public key alone,
and each kind of forgery (an event altered, dropped, a log transplanted, a chain re-signed with
another key) caught and named."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import uuid
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook

from core import checkpoint, merkle
from core.chain import parse_log, verify_events
from core.eventformat import GENESIS, event_hash
from core.spec import JobSpec
from core.webhooks import new_secret
from services import jobs, logreader
from testkit import make_job
from tests.conftest import AUDIT_KEY, make_llm, webhook_config
from tests.test_api import auth, follow_to_end
from tests.test_cli import arun
from tests.test_webhooks import Receiver
from worker import build_worker

pytestmark = pytest.mark.usefixtures("worker")
PUBLIC = [AUDIT_KEY.verifier]


def test_the_frontier_root_is_the_rfc_9162_root_at_every_size():
    entries = [os.urandom(32) for _ in range(70)]
    tree = merkle.tree(entries)
    f = merkle.Frontier()
    for n, e in enumerate(entries, 1):
        f.append(e)
        assert f.root() == tree.get_root(n)
        assert merkle.Frontier.from_text(n, f.to_text()).root() == f.root()
    assert merkle.Frontier().root() == merkle.EMPTY_ROOT


def test_a_checkpoint_holds_only_under_its_own_key_and_unaltered():
    root = os.urandom(32)
    note = AUDIT_KEY.sign(checkpoint.body("j-1", 7, root))
    cp = checkpoint.verify(note, PUBLIC)
    assert (cp.size, cp.root, cp.job_id) == (7, root, "j-1")
    assert checkpoint.VerifierKey.parse(AUDIT_KEY.verifier.text()) == AUDIT_KEY.verifier
    assert checkpoint.SignerKey.parse(AUDIT_KEY.text()) == AUDIT_KEY
    with pytest.raises(checkpoint.CheckpointError, match="re-signed by someone else's key"):
        checkpoint.verify(checkpoint.SignerKey.generate("quire-test").sign(checkpoint.body("j-1", 7, root)), PUBLIC)
    with pytest.raises(checkpoint.CheckpointError, match="does not verify: the checkpoint was altered"):
        checkpoint.verify(note.replace("\n7\n", "\n8\n"), PUBLIC)


async def _finished_job(http, user) -> str:  # type: ignore[no-untyped-def]
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Tides", "target_words": 80}, headers=auth(user)
    )
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    return str(jid)


def _rechain(events: list[dict[str, Any]], start: int) -> None:
    """What a forger with the database does after changing an event: recompute every hash after it."""
    prev = events[start - 1]["hash"] if start else GENESIS
    for e in events[start:]:
        e["prev_hash"] = prev
        prev = e["hash"] = event_hash(prev, e)


def _verify(doc: dict[str, Any], keys: list[checkpoint.VerifierKey] = PUBLIC, job: str | None = None):  # type: ignore[no-untyped-def]
    return verify_events(
        doc["events"], doc["head_hash"], doc["head_seq"], job_id=job or doc["job_id"],
        checkpoints=[c["note"] for c in doc["checkpoints"]], keys=keys,
    )  # fmt: skip


async def test_a_download_verifies_with_the_public_key_alone_and_each_forgery_is_named(http, fake, user, tmp_path):
    jid = await _finished_job(http, user)
    r = await http.get(f"/v1/jobs/{jid}/audit?download=1", headers=auth(user))
    doc = r.json()
    n = len(doc["events"])
    assert doc["checkpoints"] and all(e["chain"] == 2 and e["job_id"] == jid for e in doc["events"])
    v = _verify(doc)
    assert v.intact and v.signatures_checked and v.covered_seq == n and v.checkpoints == len(doc["checkpoints"])
    assert v.signed_by == [f"quire-test+{AUDIT_KEY.verifier.id_hex}"]
    # The CLI, offline, with the public key alone (as `quire keys export` prints it).
    (tmp_path / "log.json").write_text(r.text)
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    files = ["--file", str(tmp_path / "log.json"), "--key", str(tmp_path / "audit.pub")]
    code, out, err = await arun("audit", "verify", *files, env={})
    assert code == 0, out + err
    assert f"signed by quire-test+{AUDIT_KEY.verifier.id_hex} (checked with the public keys given)" in out
    # TXT and NDJSON downloads carry the checkpoints too.
    for fmt in ("txt", "ndjson"):
        text = (await http.get(f"/v1/jobs/{jid}/audit?format={fmt}", headers=auth(user))).text
        log = parse_log(text)
        w = verify_events(log.events, job_id=jid, checkpoints=log.checkpoints, keys=PUBLIC)
        assert w.intact and w.checkpoints == len(log.checkpoints) > 0, (fmt, w.reason)

    mid = n // 2
    tampered = copy.deepcopy(doc)
    tampered["events"][mid]["data"]["forged"] = True
    v = _verify(tampered)
    assert (v.intact, v.first_bad_seq) == (False, mid + 1) and "the event was altered" in v.reason

    dropped = copy.deepcopy(doc)
    del dropped["events"][mid]
    v = _verify(dropped)
    assert (v.intact, v.first_bad_seq) == (False, mid + 1) and "an event was dropped" in v.reason

    other = str(uuid.uuid4())  # job A's log handed over as job B's
    v = _verify(doc, job=other)
    assert not v.intact and "transplanted" in v.reason and v.first_bad_seq == 1
    relabelled = copy.deepcopy(doc)  # ... with every event relabelled B, its hashes still A's
    for e in relabelled["events"]:
        e["job_id"] = other
    v = _verify(relabelled, job=other)
    assert not v.intact and "the log was hashed for another job (a transplanted log)" in v.reason

    forged = copy.deepcopy(doc)  # rewritten whole: every hash, every root, re-signed with the forger's key
    forged["events"][mid]["data"]["forged"] = True
    _rechain(forged["events"], mid)
    evil = checkpoint.SignerKey.generate("quire-test")
    entries = [merkle.leaf_entry(e["hash"]) for e in forged["events"]]
    for c in forged["checkpoints"]:
        root = merkle.tree(entries).get_root(c["tree_size"])
        c["note"] = evil.sign(checkpoint.body(jid, c["tree_size"], root))
    forged["head_hash"] = forged["events"][-1]["hash"]
    assert _verify(forged, keys=[evil.verifier]).intact  # self-consistent: only the key tells
    v = _verify(forged)
    assert not v.intact and "re-signed by someone else's key" in v.reason
    v = _verify({**forged, "checkpoints": doc["checkpoints"]})  # or the operator's checkpoints kept
    assert not v.intact and "the log was rewritten after it was signed" in v.reason


async def test_one_event_is_proved_without_the_log_and_checkpoints_extend_each_other(http, fake, user, tmp_path):
    jid = await _finished_job(http, user)
    doc = (await http.get(f"/v1/jobs/{jid}/audit", headers=auth(user))).json()
    llm = next(e for e in doc["events"] if e["kind"] == "llm")
    r = await http.get(f"/v1/jobs/{jid}/audit/proof?seq={llm['seq']}", headers=auth(user))
    assert r.status_code == 200, r.text
    proof = r.json()
    assert proof["event"] == llm and proof["tree_size"] >= llm["seq"]
    pub = tmp_path / "audit.pub"
    pub.write_text(AUDIT_KEY.verifier.text())
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof))
    code, out, err = await arun("audit", "verify", "--proof", str(path), "--key", str(pub), env={})
    assert code == 0 and f"proved: event {llm['seq']} (llm call) is in job {jid}'s log" in out, out + err
    bad = {**proof, "event": {**llm, "data": {**llm["data"], "tokens_out": 1}}}
    path.write_text(json.dumps(bad))
    code, out, err = await arun("audit", "verify", "--proof", str(path), "--key", str(pub), env={})
    assert code == 1 and "NOT PROVED" in err and "does not match its hash" in err
    # A later checkpoint extends an earlier one.
    sizes = [
        c["tree_size"] for c in (await http.get(f"/v1/jobs/{jid}/audit", headers=auth(user))).json()["checkpoints"]
    ]
    old, new = sizes[0], sizes[-1]
    r = await http.get(f"/v1/jobs/{jid}/audit/consistency?old={old}&new={new}", headers=auth(user))
    ordered = r.json()
    path.write_text(r.text)
    code, out, err = await arun("audit", "verify", "--proof", str(path), "--key", str(pub), env={})
    assert code == 0 and f"at {new} events extends its log at {old} events" in out, out + err
    assert (await http.get(f"/v1/jobs/{jid}/audit/proof?seq=999999", headers=auth(user))).status_code == 404
    r = await http.get(f"/v1/jobs/{jid}/audit/consistency?old={new}&new={old}", headers=auth(user))
    assert r.status_code == 200 and r.json() == ordered  # named either way round
    missing = await http.get(f"/v1/jobs/{jid}/audit/consistency?old=1&new={new}", headers=auth(user))
    assert missing.status_code == 404 and "no signed checkpoint at tree size 1" in missing.text


async def test_a_log_copied_under_another_job_in_the_database_is_caught_as_transplanted(db, user, pg_url):
    """Finding 10: the job id was outside the hashed form, so a log copied to another job verified."""
    a, b = await make_job(db, user.user_id), await make_job(db, user.user_id)
    for i in range(3):
        async with db.job_tx(a) as tx:
            tx.event("job", "note", {"i": i})
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_events WHERE job_id = %s", (b,))
        conn.execute(
            "INSERT INTO audit_events (job_id, seq, ts, kind, action, table_name, row_id, sql_text, data, prev_hash,"
            " hash, chain) SELECT %s, seq, ts, kind, action, table_name, row_id, sql_text, data, prev_hash, hash, chain"
            " FROM audit_events WHERE job_id = %s",
            (b, a),
        )
        conn.execute(
            "UPDATE jobs SET (audit_seq, audit_head) = (SELECT audit_seq, audit_head FROM jobs WHERE id = %s)"
            " WHERE id = %s",
            (a, b),
        )
    assert (await logreader.verify(db, a, PUBLIC)).intact
    v = await logreader.verify(db, b, PUBLIC)
    assert not v.intact and v.first_bad_seq == 1 and "transplanted" in v.reason


async def test_each_jobs_last_checkpoint_is_posted_to_the_operators_witness_signed(db, client, fake, user):
    secret = new_secret()
    queue = f"witness-{uuid.uuid4().hex[:6]}"
    llm = make_llm(db, fake)
    with Receiver([503]) as receiver:  # down at first: retried like a webhook
        config = dataclasses.replace(webhook_config(), witness_url=receiver.url, witness_secret=secret)
        try:
            async with build_worker(client, db, llm, queue, webhooks=config):
                job, _ = await jobs.submit(
                    db, client, user_id=user.user_id, user_name=user.name, task_queue=queue,
                    spec=JobSpec(kind="generate", prompt="Reeds", target_words=60), default_model="fake-model",
                    witness=True,
                )  # fmt: skip
                got = await receiver.wait_for(2, within=60)
                await client.get_workflow_handle(f"{job.workflow_id}-webhook").result()  # its last record written
        finally:
            await llm.close()
    sent = got[-1]
    payload = Webhook(secret).verify(sent["body"], {k.lower(): v for k, v in sent["headers"].items()})
    assert payload["type"] == "audit.checkpoint" and payload["data"]["job_id"] == str(job.id)
    cp = checkpoint.verify(payload["data"]["note"], PUBLIC)
    assert cp.job_id == str(job.id)
    log = [e async for e in logreader.iter_events(db, job.id, 0, None)]
    entries = [merkle.leaf_entry(e["hash"]) for e in log]
    assert merkle.tree(entries).get_root(cp.size) == cp.root  # what the witness holds matches the log
    actions = [e["action"] for e in log if e["kind"] == "webhook"]
    assert actions == ["witness_failed", "witnessed"]


async def test_quire_keys_makes_rotates_and_exports_the_public_keys(tmp_path):
    env = {"QUIRE_HOME": str(tmp_path)}
    code, out, err = await arun("keys", "export", env=env)
    assert code == 2 and "no audit key yet" in err
    code, first, err = await arun("keys", "make", env=env)
    assert code == 0 and first.count("\n") == 1 and "made quire+" in err
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    old = checkpoint.SignerKey.parse((tmp_path / "audit.key").read_text())
    assert checkpoint.parse_keys(first.splitlines()) == [old.verifier]
    code, _, err = await arun("keys", "make", env=env)
    assert code == 2 and "`quire keys rotate` replaces it" in err
    code, out, err = await arun("keys", "rotate", env=env)
    new = checkpoint.SignerKey.parse((tmp_path / "audit.key").read_text())
    assert code == 0 and checkpoint.parse_keys(out.splitlines()) == [new.verifier, old.verifier]
    # A checkpoint signed before the rotation still verifies with the exported keys.
    note = old.sign(checkpoint.body("j", 3, os.urandom(32)))
    assert checkpoint.verify(note, checkpoint.parse_keys(out.splitlines())).size == 3
