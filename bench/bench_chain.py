"""What the audit hash chain costs: hashing at write time, verifying a job's log from the database
and offline from its JSON download, and chaining existing logs in migration 0002; and what its
Merkle proofs cost on a 500,000-word job's log (~80,000 events): keeping the tree at write time,
signing a checkpoint, building an inclusion proof, and verifying one offline with the public key.

    .venv/bin/python -m bench.bench_chain --words 20000
    .venv/bin/python -m bench.bench_chain --proofs-only --events 80000

Runs one generate job against the scripted fake model (own Postgres and Temporal), then times
each step on that job's real log; the proofs run on a synthesised log of ``--events`` events
shaped like a real one (an sql, a row and an llm event in turn).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import time
import uuid

import rfc8785
import sqlalchemy as sa
from sqlalchemy import create_engine
from temporalio.client import Client

import testkit
from activities.llm import LlmClient
from core import checkpoint, merkle
from core.chain import verify_events
from core.eventformat import CHAIN_VERSION, GENESIS, event_content, event_hash, normalize
from core.logfile import parse_log
from db.session import Database, async_url
from services import logreader
from worker import build_worker

MIGRATION = os.path.join(os.path.dirname(__file__), "..", "db", "migrations", "versions", "0002_audit_chain.py")


async def main(words: int) -> None:
    with testkit.postgres() as pg, testkit.fake_model("--ratio", "0.3", "0.6") as fake_url:
        url = testkit.create_database(pg, "bench")
        db = Database(url)
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        llm = LlmClient(db, base_url=fake_url, api_key="bench", model="fake-model")
        try:
            await run(db, client, llm, url, words)
        finally:
            await llm.close()
            await db.dispose()
            await env.shutdown()


async def run(db: Database, client: Client, llm: LlmClient, url: str, words: int) -> None:
    async with build_worker(client, db, llm, "bench"):
        t0 = time.perf_counter()
        job = await testkit.submit(db, client, "bench", words)
        await client.get_workflow_handle(job.workflow_id).result()
        wall = time.perf_counter() - t0
    events = [e async for e in logreader.iter_events(db, job.id, 0, None)]
    n = len(events)
    print(f"job {job.id}: {words} words, {n} audit events, wall {wall:.1f} s (load avg {os.getloadavg()[0]:.1f})")

    t = time.perf_counter()
    prev = GENESIS
    for e in events:
        prev = event_hash(prev, e)
    fast = time.perf_counter() - t
    t = time.perf_counter()
    for e in events:
        rfc8785.dumps(normalize(event_content(e)))
    slow = time.perf_counter() - t
    print(
        f"hashing: {fast / n * 1e6:.1f} us/event ({fast:.2f} s for the log, {fast / wall * 100:.1f}% of the job's"
        f" wall); the rfc8785 library alone would take {slow / n * 1e6:.1f} us/event"
    )

    t = time.perf_counter()
    verdict = await logreader.verify(db, job.id)
    took = time.perf_counter() - t
    assert verdict is not None and verdict.intact, verdict
    print(
        f"verify from the database: {took:.2f} s ({n / took:,.0f} events/s), "
        f"{verdict.references_checked} references rechecked, {verdict.anchors_checked} document heads found"
    )

    text = "".join([p async for p in logreader.render(db, job.id, 0, None, "json")])
    t = time.perf_counter()
    log = parse_log(text)
    v = verify_events(log.events, log.head_hash, log.head_seq, job_id=log.job_id, checkpoints=log.checkpoints)
    took = time.perf_counter() - t
    assert v.intact, v
    print(f"verify offline, JSON download ({len(text) / 1e6:.1f} MB): {took:.2f} s ({n / took:,.0f} events/s)")

    spec = importlib.util.spec_from_file_location("m0002", MIGRATION)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    engine = create_engine(async_url(url))
    with engine.begin() as conn:  # the log as one written before chain version 2 would be
        conn.execute(sa.text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        conn.execute(sa.text("UPDATE audit_events SET chain = 1"))
        conn.execute(sa.text("UPDATE jobs SET audit_frontier = NULL"))
        conn.execute(sa.text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
    t = time.perf_counter()
    with engine.begin() as conn:
        m._chain_existing(conn)  # what an upgrade does to an old log
    took = time.perf_counter() - t
    engine.dispose()
    v = await logreader.verify(db, job.id)
    assert v is not None and v.checkpoints == 0 and v.legacy_events == n, (
        v
    )  # old hashes: old checkpoints no longer hold
    print(f"migration 0002 chaining an existing log: {took:.2f} s ({n / took:,.0f} events/s)")


def synthetic_log(n: int, job_id: str) -> list[dict[str, object]]:
    """``n`` chained events shaped like a job's: statements, rows and model calls in turn."""
    rng = random.Random(7)
    out: list[dict[str, object]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        kind = ("sql", "row", "llm")[seq % 3]
        data: dict[str, object] = {
            "sql": {"tables": ["chunks"], "params": {"id": seq, "text": "x" * 120}, "rowcount": 1, "duration_ms": 0.4},
            "row": {"changes": {"status": {"old": "writing", "new": "done"}}},
            "llm": {"purpose": "write", "tokens_in": rng.randint(500, 3000), "tokens_out": rng.randint(100, 900),
                    "response_summary": "words " * 40},
        }[kind]  # fmt: skip
        e: dict[str, object] = {
            "chain": CHAIN_VERSION, "job_id": job_id, "seq": seq, "ts": "2026-11-25T10:00:00.000000Z", "kind": kind,
            "action": "write", "table_name": "chunks", "row_id": str(seq), "sql_text": "UPDATE chunks SET status = %s"
            if kind == "sql" else None, "data": data, "prev_hash": prev,
        }  # fmt: skip
        prev = e["hash"] = event_hash(prev, e)
        out.append(e)
    return out


def proofs(n: int) -> None:
    job_id = str(uuid.uuid4())
    t = time.perf_counter()
    events = synthetic_log(n, job_id)
    print(f"synthesised log: {n:,} events in {time.perf_counter() - t:.1f} s")
    entries = [merkle.leaf_entry(str(e["hash"])) for e in events]
    t = time.perf_counter()
    tree = merkle.Frontier()
    tree.extend(entries)
    took = time.perf_counter() - t
    print(f"keeping the tree at write time: {took / n * 1e6:.1f} us/event ({took:.2f} s for the whole log)")
    key = checkpoint.SignerKey.generate("bench")
    t = time.perf_counter()
    for _ in range(200):
        note = key.sign(checkpoint.body(job_id, n, tree.root()))
    print(f"signing a checkpoint (root from the frontier + Ed25519): {(time.perf_counter() - t) / 200 * 1e6:.0f} us")
    seqs = random.Random(1).sample(range(1, n + 1), 50)
    t = time.perf_counter()
    built = {seq: merkle.inclusion_proof(entries, seq, n) for seq in seqs[:3]}
    print(f"building an inclusion proof from the {n:,} leaves (the API's work): {(time.perf_counter() - t) / 3:.2f} s")
    big = merkle.tree(entries)
    for seq in seqs:
        built[seq] = dict(big.prove_inclusion(seq, n).serialize())
    times = []
    pub = [key.verifier]
    for seq in seqs:
        e = events[seq - 1]
        doc = json.loads(json.dumps({"event": e, "checkpoint": note, "proof": built[seq]}))  # as read from a file
        t = time.perf_counter()
        cp = checkpoint.verify(doc["checkpoint"], pub)  # the signature, with the public key alone
        h = event_hash(doc["event"]["prev_hash"], doc["event"])  # the event's own hash
        assert h == doc["event"]["hash"]
        merkle.verify_inclusion(merkle.leaf_entry(h), seq, cp.size, cp.root, doc["proof"])
        times.append((time.perf_counter() - t) * 1000)
    print(
        f"verifying one event's inclusion proof offline (signature, event hash, {len(built[seqs[0]]['path'])}-hash"
        f" path): median {statistics.median(times):.2f} ms, max {max(times):.2f} ms over {len(seqs)} events"
        f" (load avg {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=20000)
    ap.add_argument("--proofs-only", action="store_true", help="only the Merkle proofs, on a synthesised log")
    ap.add_argument("--events", type=int, default=80000, help="events of the synthesised log (500,000 words: ~80,000)")
    a = ap.parse_args()
    if not a.proofs_only:
        asyncio.run(main(a.words))
    proofs(a.events)
