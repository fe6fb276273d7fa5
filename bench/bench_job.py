"""Run one generate job against the scripted fake model and print what it took.

    .venv/bin/python -m bench.bench_job --words 20000

Starts its own embedded Postgres and Temporal dev server (nothing else needs to run), prints
chunks, attempts, LLM calls, audit events, wall time, and the history length of every
workflow run (parent, section children, continued-as-new runs).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sqlalchemy import text
from temporalio.client import Client

import testkit
from activities.llm import LlmClient
from core.text import count_words
from db.session import Database
from worker import build_worker


async def main(words: int, ratio: tuple[float, float], chunk_words: int) -> None:
    with testkit.postgres() as pg, testkit.fake_model("--ratio", str(ratio[0]), str(ratio[1])) as fake_url:
        db = Database(testkit.create_database(pg, "bench"))
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        llm = LlmClient(db, base_url=fake_url, api_key="bench", model="fake-model")
        try:
            await run(db, client, llm, words, ratio, chunk_words)
        finally:
            await llm.close()
            await db.dispose()
            await env.shutdown()


async def run(
    db: Database, client: Client, llm: LlmClient, words: int, ratio: tuple[float, float], chunk_words: int
) -> None:
    async with build_worker(client, db, llm, "bench"):
        t0 = time.perf_counter()
        job = await testkit.submit(db, client, "bench", words, options={"chunk_words": chunk_words})
        result = await client.get_workflow_handle(job.workflow_id).result()
        wall = time.perf_counter() - t0
    async with db.tx() as s:

        def q(sql: str) -> int:
            return s.execute(text(sql), {"j": job.id})

        out = (await q("SELECT text FROM documents WHERE job_id=:j AND role='output'")).scalar_one()
        chunks = (await q("SELECT count(*) FROM chunks WHERE job_id=:j")).scalar_one()
        attempts = (await q("SELECT count(*) FROM chunk_attempts WHERE job_id=:j")).scalar_one()
        calls = (await q("SELECT count(*) FROM llm_calls WHERE job_id=:j")).scalar_one()
        events = (await q("SELECT count(*) FROM audit_events WHERE job_id=:j")).scalar_one()
        by_kind = (await q("SELECT kind, count(*) FROM audit_events WHERE job_id=:j GROUP BY 1 ORDER BY 2 DESC")).all()
        rounds = (await q("SELECT count(*) FROM length_checks WHERE job_id=:j AND scope='final'")).scalar_one()
    runs = []
    async for wf in client.list_workflows(f"WorkflowId STARTS_WITH '{job.workflow_id}'"):
        hist = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        runs.append(
            (wf.id.removeprefix(job.workflow_id) or "(job)", wf.status.name if wf.status else "?", len(hist.events))
        )
    print(
        f"job {job.id}: {result}; target {words} words, output {count_words(out)} words "
        f"(ratio {count_words(out) / words:.3f}); fake answers {ratio[0]:.0%}-{ratio[1]:.0%} of what is asked"
    )
    print(
        f"wall {wall:.1f} s; chunks {chunks}; chunk attempts {attempts}; LLM calls {calls}; "
        f"final length checks {rounds}; audit events {events}"
    )
    print("audit events by kind: " + ", ".join(f"{k} {n}" for k, n in by_kind))
    print(
        f"workflow runs {len(runs)}; history events: max {max(r[2] for r in runs)}, "
        f"parent {[r[2] for r in runs if r[0] == '(job)']}"
    )
    for name, status, n in sorted(runs):
        print(f"  {name:>8} {status:<12} {n}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=20_000)
    ap.add_argument("--ratio", type=float, nargs=2, default=(0.3, 0.6))
    ap.add_argument("--chunk-words", type=int, default=700)
    a = ap.parse_args()
    asyncio.run(main(a.words, tuple(a.ratio), a.chunk_words))  # type: ignore[arg-type]
