"""The audit log's proofs: the job id in every event's hash, a Merkle tree per log with signed
checkpoints, inclusion and consistency proofs checked offline with the operator's public key alone,
and each kind of forgery (an event altered, dropped, a log transplanted, a chain re-signed with
another key) caught and named."""

from __future__ import annotations

import copy
import json
import os
import uuid
from typing import Any

import psycopg
import pytest

import testkit
from core import checkpoint, merkle
from core.chain import verify_events
from core.eventformat import GENESIS, event_hash
from core.logfile import parse_log
from services import logreader
from testkit import make_job
from tests import rfc9162
from tests.conftest import AUDIT_KEY
from tests.helpers import arun, auth, follow_to_end

pytestmark = pytest.mark.usefixtures("worker")
PUBLIC = [AUDIT_KEY.verifier]


def test_the_frontier_root_is_the_rfc_9162_root_at_every_size():
    entries = [os.urandom(32) for _ in range(70)]
    f = merkle.Frontier()
    for n, e in enumerate(entries, 1):
        f.append(e)
        assert f.root() == rfc9162.MTH(entries[:n])
        assert merkle.Frontier.from_text(n, f.to_text()).root() == f.root()
    assert merkle.Frontier().root() == merkle.EMPTY_ROOT == rfc9162.MTH([])


# RFC 6962's test data (certificate-transparency's merkle tests): 8 leaves, the roots of every
# prefix, and proofs quoted there. The independent implementation (tests/rfc9162.py) must give them.
LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
VECTORS = [  # (kind, m, n, proof)
    ("consistency", 1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                           "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                           "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    ("consistency", 6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                           "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                           "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    ("consistency", 2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                           "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ("inclusion", 5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                         "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def _stored(entries: list[bytes]) -> tuple[merkle.Frontier, dict[merkle.Node, bytes]]:
    """A tree as the database keeps it: its frontier, its leaf hashes and its interior nodes."""
    f, nodes = merkle.Frontier(), {}
    for i, e in enumerate(entries):
        nodes[(0, i)] = merkle.leaf_hash(e)
        nodes.update(f.append(e))
    return f, nodes


def test_rfc_9162_proofs_match_the_rfc_both_ways_and_its_test_vectors():
    f, nodes = _stored(LEAVES)
    for n in range(1, 9):
        assert rfc9162.MTH(LEAVES[:n]).hex() == ROOTS[n - 1]
        assert merkle.range_hash(0, n, nodes).hex() == ROOTS[n - 1]
    for kind, m, n, want in VECTORS:
        proof = [bytes.fromhex(h) for h in want]
        if kind == "inclusion":
            assert rfc9162.PATH(m, LEAVES[:n]) == merkle.inclusion_proof(m, n, nodes) == proof
            merkle.verify_inclusion(merkle.leaf_hash(LEAVES[m]), m, n, bytes.fromhex(ROOTS[n - 1]), proof)
        else:
            assert rfc9162.PROOF(m, LEAVES[:n]) == merkle.consistency_proof(m, n, nodes) == proof
            merkle.verify_consistency(m, bytes.fromhex(ROOTS[m - 1]), n, bytes.fromhex(ROOTS[n - 1]), proof)
    # The case: 4 -> 7 is one hash (the old tree is a complete left subtree), not pymerkle's four.
    assert len(merkle.consistency_proof(4, 7, nodes)) == 1 == len(rfc9162.PROOF(4, LEAVES[:7]))

    entries = [os.urandom(32) for _ in range(67)]
    f, nodes = _stored(entries)
    for n in range(1, len(entries) + 1):
        root = rfc9162.MTH(entries[:n])
        for m in range(n):  # every leaf: ours against the RFC's, each verified by the other's verifier
            ours, theirs = merkle.inclusion_proof(m, n, nodes), rfc9162.PATH(m, entries[:n])
            assert ours == theirs
            assert rfc9162.verify_inclusion(m, n, merkle.leaf_hash(entries[m]), root, ours)
            merkle.verify_inclusion(merkle.leaf_hash(entries[m]), m, n, root, theirs)
        for m in range(1, n):
            ours, theirs = merkle.consistency_proof(m, n, nodes), rfc9162.PROOF(m, entries[:n])
            assert ours == theirs
            assert rfc9162.verify_consistency(m, n, rfc9162.MTH(entries[:m]), root, ours)
            merkle.verify_consistency(m, rfc9162.MTH(entries[:m]), n, root, theirs)
    # Each can say no: a wrong hash, a wrong size, a proof one hash short or long, a rewritten old tree.
    root, old = rfc9162.MTH(entries), rfc9162.MTH(entries[:20])
    good = merkle.consistency_proof(20, 67, nodes)
    for bad in (good[:-1], [*good, good[0]], [good[0][::-1], *good[1:]]):
        assert not rfc9162.verify_consistency(20, 67, old, root, bad)
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(20, old, 67, root, bad)
    with pytest.raises(merkle.ProofError, match="does not lead to the old root"):
        merkle.verify_consistency(20, rfc9162.MTH([os.urandom(32), *entries[1:20]]), 67, root, good)
    path = merkle.inclusion_proof(9, 67, nodes)
    for index, size, p in ((10, 67, path), (9, 63, path), (9, 67, path[:-1]), (9, 67, [*path, path[0]])):
        assert not rfc9162.verify_inclusion(index, size, merkle.leaf_hash(entries[9]), root, p)
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(merkle.leaf_hash(entries[9]), index, size, root, p)


def test_a_proof_reads_o_log_n_stored_hashes():
    for n in (1_000, 80_000, 1_000_000):
        worst = max(len(merkle.needed(merkle.inclusion_ranges(m, n))) for m in (0, 1, n // 3, n // 2 + 7, n - 2, n - 1))
        assert worst <= 2 * n.bit_length(), (n, worst)
        worst = max(len(merkle.needed(merkle.consistency_ranges(m, n))) for m in (1, 7, n // 3, n - 5, n - 1))
        assert worst <= 2 * n.bit_length(), (n, worst)


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
        checkpoints=[c["note"] for c in doc["checkpoints"]], keys=keys, download=True,
    )  # fmt: skip


async def test_a_download_verifies_with_the_public_key_alone_and_each_forgery_is_named(http, fake, user, tmp_path):
    jid = await _finished_job(http, user)
    r = await http.get(f"/v1/jobs/{jid}/audit?download=1", headers=auth(user))
    doc = r.json()
    n = len(doc["events"])
    assert doc["checkpoints"] and all(e["chain"] == 2 and e["job_id"] == jid for e in doc["events"])
    v = _verify(doc)
    assert v.intact and v.signatures_checked and v.covered_seq == n and v.checkpoints == len(doc["checkpoints"])
    assert v.complete and v.download and v.end_seq is not None and v.signed_at is not None
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
        text = (await http.get(f"/v1/jobs/{jid}/audit?format={fmt}&download=1", headers=auth(user))).text
        log = parse_log(text)
        w = verify_events(log.events, job_id=jid, checkpoints=log.checkpoints, keys=PUBLIC, download=True)
        assert w.intact and w.complete and w.checkpoints == len(log.checkpoints) > 0, (fmt, w.reason)

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
        cp = checkpoint.parse(c["note"])
        root = rfc9162.MTH(entries[: c["tree_size"]])
        c["note"] = evil.sign(
            checkpoint.body(jid, cp.size, root, time=cp.time, prev=cp.prev, end=cp.end, download=cp.download)
        )
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


async def test_a_proof_of_80000_events_reads_o_log_n_rows_and_is_the_rfcs(db, user, pg_url):
    """Finding: an inclusion proof re-hashed every leaf of the log per request (~1 s at 80,000
    events). Now it reads the O(log n) stored hashes it folds, and is the RFC's own path."""
    from db import logtree

    n = 80_000
    job_id, leaves, f = testkit.stored_tree(pg_url, user.user_id, n)
    for index in (0, 4_095, 54_321, n - 1):
        before = logtree.NodeReads.rows
        async with db.tx() as s:
            path = await logtree.inclusion_proof(s, job_id, index, n)
        read = logtree.NodeReads.rows - before
        assert read <= 2 * n.bit_length(), read  # 34 at most for 80,000 leaves, whatever the index
        merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, n, f.root(), path)
        assert rfc9162.verify_inclusion(index, n, merkle.leaf_hash(leaves[index]), f.root(), path)
    assert path == rfc9162.PATH(n - 1, leaves)
    before = logtree.NodeReads.rows
    async with db.tx() as s:
        proof = await logtree.consistency_proof(s, job_id, 12_345, n)
        old = await logtree.root(s, job_id, 12_345)
    assert logtree.NodeReads.rows - before <= 4 * n.bit_length()
    assert old == rfc9162.MTH(leaves[:12_345]) and rfc9162.verify_consistency(12_345, n, old, f.root(), proof)
