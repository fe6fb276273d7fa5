"""What the audit hash chain costs: hashing at write time, verifying a job's log from the database
and offline from its JSON download, and chaining existing logs in migration 0002.

    .venv/bin/python -m bench.bench_chain --words 20000

Runs one generate job against the scripted fake model (own Postgres and Temporal), then times
each step on that job's real log.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import time

import rfc8785
from sqlalchemy import create_engine
from temporalio.client import Client

import testkit
from activities.llm import LlmClient
from core.audit import GENESIS, event_content, event_hash, normalize
from core.chain import parse_log, verify_events
from db.session import Database, async_url
from services import auditlog
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
    events = [e async for e in auditlog.iter_events(db, job.id, 0, None)]
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
    verdict = await auditlog.verify(db, job.id)
    took = time.perf_counter() - t
    assert verdict is not None and verdict.intact, verdict
    print(
        f"verify from the database: {took:.2f} s ({n / took:,.0f} events/s), "
        f"{verdict.references_checked} references rechecked, {verdict.anchors_checked} document heads found"
    )

    text = "".join([p async for p in auditlog.render(db, job.id, 0, None, "json")])
    t = time.perf_counter()
    evs, head, seq = parse_log(text)
    v = verify_events(evs, head, seq)
    took = time.perf_counter() - t
    assert v.intact, v
    print(f"verify offline, JSON download ({len(text) / 1e6:.1f} MB): {took:.2f} s ({n / took:,.0f} events/s)")

    spec = importlib.util.spec_from_file_location("m0002", MIGRATION)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    engine = create_engine(async_url(url))
    t = time.perf_counter()
    with engine.begin() as conn:
        m._chain_existing(conn)  # rewrites the same hashes: what an upgrade does to an old log
    took = time.perf_counter() - t
    engine.dispose()
    assert (await auditlog.verify(db, job.id)).intact
    print(f"migration 0002 chaining an existing log: {took:.2f} s ({n / took:,.0f} events/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=20000)
    asyncio.run(main(ap.parse_args().words))
