"""What the audit log's proofs cost: hashing at write time, verifying a job's log from the database
and offline from its JSON download, and chaining existing logs in migration 0002, on a real job
run as production runs it (signed, each checkpoint witnessed), with its events per chunk and the
witness's share of it; then one witness's cost a checkpoint, and RFC 9162 inclusion and
consistency proofs read from the database for logs of 1,000, 80,000 (a 500,000-word job's) and
1,000,000 events: the time to build one, the rows it reads (O(log n)) and the time to verify it.

    .venv/bin/python -m bench.bench_chain --words 20000
    .venv/bin/python -m bench.bench_chain --proofs-only --sizes 1000,80000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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
from core.eventformat import GENESIS, event_content, event_hash, normalize
from core.logfile import parse_log
from db import logtree
from db.session import Database, async_url, plain_url
from metrics import AUDIT_WITNESS
from services import accounts, logreader
from worker import build_worker


def _witness_sums() -> list:  # type: ignore[type-arg]
    """The seconds the signer spent with the witness, by outcome (its histograms' sums)."""
    return [m._sum for m in AUDIT_WITNESS._metrics.values()]  # noqa: SLF001


MIGRATION = os.path.join(os.path.dirname(__file__), "..", "db", "migrations", "versions", "0002_audit_chain.py")


async def main(words: int) -> None:
    import tempfile
    from pathlib import Path

    key = checkpoint.SignerKey.generate("bench")
    with (
        testkit.postgres() as pg,
        testkit.fake_model("--ratio", "0.3", "0.6") as fake_url,
        tempfile.TemporaryDirectory() as d,
        testkit.witness(Path(d), [key.verifier.text()]) as witness,
    ):
        url = testkit.create_database(pg, "bench")
        db = Database(url, signer=key, witnesses=[witness])
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
    assert db.signer is not None
    witnesses, db.signer.witnesses = list(db.signer.witnesses), []
    async with build_worker(client, db, llm, "bench"):
        t0 = time.perf_counter()  # the same job, signed but with no witness: what the witness adds
        plain = await testkit.submit(db, client, "bench", words)
        await client.get_workflow_handle(plain.workflow_id).result()
        plain_wall = time.perf_counter() - t0
        db.signer.witnesses = witnesses
        t0 = time.perf_counter()
        job = await testkit.submit(db, client, "bench", words)
        await client.get_workflow_handle(job.workflow_id).result()
        wall = time.perf_counter() - t0
    print(f"the same job signed without a witness: wall {plain_wall:.1f} s (load avg {os.getloadavg()[0]:.1f})")
    events = [e async for e in logreader.iter_events(db, job.id, 0, None)]
    n = len(events)
    print(f"job {job.id}: {words} words, {n} audit events, wall {wall:.1f} s (load avg {os.getloadavg()[0]:.1f})")
    async with db.tx() as s:
        chunks = (await s.execute(sa.text("SELECT chunks_total FROM jobs WHERE id = :j"), {"j": job.id})).scalar_one()
        cps, cos = (
            await s.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM audit_checkpoints WHERE job_id = :j),"
                    " (SELECT count(*) FROM audit_cosignatures WHERE job_id = :j)"
                ),
                {"j": job.id},
            )
        ).one()
    spent = sum(m.get() for m in _witness_sums())
    print(
        f"events per chunk: {n / chunks:.1f} ({chunks} chunks); {cps} checkpoints, {cos} cosigned by the witness,"
        f" {spent:.2f} s in the witness ({spent / max(cps, 1) * 1000:.1f} ms a checkpoint, {spent / wall * 100:.1f}%"
        " of the wall)"
    )

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
    verdict = await logreader.verify(db, job.id, [db.signer.key.verifier] if db.signer else None)
    took = time.perf_counter() - t
    assert verdict is not None and verdict.intact and verdict.complete, verdict
    print(
        f"verify from the database: {took:.2f} s ({n / took:,.0f} events/s), "
        f"{verdict.references_checked} references rechecked, {verdict.anchors_checked} document heads found"
    )

    text = "".join([p async for p in logreader.render(db, job.id, 0, None, "json")])
    t = time.perf_counter()
    log = parse_log(text)
    v = verify_events(
        log.events, log.head_hash, log.head_seq, job_id=log.job_id, checkpoints=log.checkpoints,
        keys=[db.signer.key.verifier] if db.signer else None,
    )  # fmt: skip
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
    v = await logreader.verify(db, job.id, ask=[])
    assert v is not None and v.checkpoints == 0 and v.legacy_events == n, (
        v
    )  # old hashes: old checkpoints no longer hold
    print(f"migration 0002 chaining an existing log: {took:.2f} s ({n / took:,.0f} events/s)")


async def witness_cost(n: int) -> None:
    """One witness's cost a checkpoint: add-checkpoint calls on a growing log (50 events between two,
    the consistency proof from the size it holds), each checked and persisted by the witness
    (SQLite, synchronous=FULL) before it cosigns, as the signer makes them."""
    import tempfile
    from pathlib import Path

    key = checkpoint.SignerKey.generate("bench")
    with tempfile.TemporaryDirectory() as d, testkit.witness(Path(d), [key.verifier.text()]) as w:
        f, nodes, size, times = merkle.Frontier(), {}, 0, []
        job = uuid.uuid4()
        for _ in range(n):
            for _ in range(50):
                e = os.urandom(32)
                nodes[(0, size)] = merkle.leaf_hash(e)
                nodes.update(f.append(e))
                size += 1
            note = key.sign(checkpoint.body(job, size, f.root(), time=int(time.time())))
            held = size - 50

            async def prove(old: int, size: int = size) -> list[bytes]:
                return merkle.consistency_proof(old, size, nodes) if 0 < old < size else []

            t = time.perf_counter()
            answer = await w.add_checkpoint(note, held, prove, size)
            times.append((time.perf_counter() - t) * 1000)
            assert answer.kind == "cosigned", answer
        await w.close()
    times.sort()
    print(
        f"the witness's cost a checkpoint ({n} checkpoints, HTTP on loopback, proof checked, state fsynced, "
        f"cosigned): median {statistics.median(times):.1f} ms, p95 {times[int(len(times) * 0.95)]:.1f} ms"
        f" (load avg {os.getloadavg()[0]:.1f})"
    )


async def db_proofs(sizes: list[int]) -> None:
    """Inclusion and consistency proofs read from the database (``db.logtree``) for logs of each
    size: the time to build one, the rows it reads, and the time to verify it offline."""
    with testkit.postgres() as pg:
        url = testkit.create_database(pg, "bench_proofs")
        db = Database(url)
        try:
            user = await accounts.create_user(db, "bench")
            for n in sizes:
                await _db_proofs(db, url, user.user_id, n)
        finally:
            await db.dispose()


async def _db_proofs(db: Database, url: str, user_id: int, n: int) -> None:
    t = time.perf_counter()
    job_id, leaves, f = testkit.stored_tree(plain_url(url), user_id, n)
    print(f"log of {n:,} events stored (and {n - n.bit_count():,} interior nodes) in {time.perf_counter() - t:.1f} s")
    root, rng = f.root(), random.Random(n)
    for kind in ("inclusion", "consistency"):
        build, check, rows = [], [], []
        for _ in range(30):
            m = rng.randrange(n) if kind == "inclusion" else rng.randrange(1, n)
            async with db.tx() as s:
                old_root = await logtree.root(s, job_id, m) if kind == "consistency" else b""  # the old checkpoint's
            before = logtree.NodeReads.rows
            t = time.perf_counter()
            async with db.tx() as s:
                if kind == "inclusion":
                    path = await logtree.inclusion_proof(s, job_id, m, n)
                else:
                    path = await logtree.consistency_proof(s, job_id, m, n)
            build.append((time.perf_counter() - t) * 1000)
            rows.append(logtree.NodeReads.rows - before)
            t = time.perf_counter()
            if kind == "inclusion":
                merkle.verify_inclusion(merkle.leaf_hash(leaves[m]), m, n, root, path)
            else:
                merkle.verify_consistency(m, old_root, n, root, path)
            check.append((time.perf_counter() - t) * 1000)
        print(
            f"  {kind} proof at {n:,} events: built in median {statistics.median(build):.1f} ms (max {max(build):.1f}),"
            f" {statistics.median(rows):.0f} rows read (max {max(rows)}), {len(path)} hashes; verified offline in"
            f" median {statistics.median(check) * 1000:.0f} us"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=20000)
    ap.add_argument("--proofs-only", action="store_true", help="only the proofs and the witness, no job")
    ap.add_argument("--sizes", default="1000,80000,1000000", help="log sizes (events) the proofs are read from")
    ap.add_argument("--checkpoints", type=int, default=200, help="checkpoints put to the witness")
    a = ap.parse_args()
    if not a.proofs_only:
        asyncio.run(main(a.words))
    asyncio.run(witness_cost(a.checkpoints))
    asyncio.run(db_proofs([int(x) for x in a.sizes.split(",")]))
