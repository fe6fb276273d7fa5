"""What operators' telemetry costs: a streamed model call, the time to first token it measures,
a /metrics scrape over many jobs, and a job traced versus not.

    .venv/bin/python -m bench.bench_telemetry --calls 200 --jobs 10000,100000 --words 5000

Own Postgres and Temporal; the scripted fake model as a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from openai import AsyncOpenAI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from sqlalchemy import text
from temporalio.client import Client

import metrics
import testkit
from activities.llm import LlmClient
from db.session import Database
from services import accounts, telemetry
from services.temporal import AuditInterceptor
from worker import build_worker

MSGS = [{"role": "user", "content": "Write about 200 words."}]


def ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {statistics.median(values):.2f} ms, p90 {q[89]:.2f} ms, max {max(values):.2f} ms"


async def raw_calls(url: str, n: int) -> None:
    """The HTTP round trip alone, streamed or not (no recording): what streaming itself costs."""
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    for stream in (False, True):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            if stream:
                s = await client.chat.completions.create(
                    model="fake-model",
                    messages=MSGS,  # type: ignore[arg-type]
                    max_tokens=400,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for _chunk in s:
                    pass
            else:
                await client.chat.completions.create(model="fake-model", messages=MSGS, max_tokens=400)  # type: ignore[arg-type]
            times.append((time.perf_counter() - t0) * 1000)
        print(f"raw openai call, {'streamed' if stream else 'one body'} ({n} calls, ~200 words): {ms(times)}")
    await client.close()


async def recorded_calls(db: Database, url: str, user_id: int, n: int) -> None:
    """LlmClient.complete: streamed, recorded (pending row, outcome, audit event), counted."""
    job_id = await testkit.make_job(db, user_id)
    llm = LlmClient(db, base_url=url, api_key="bench", model="fake-model")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        await llm.complete(job_id=job_id, purpose="write", request_key=f"b{i}", messages=MSGS, max_tokens=400)
        times.append((time.perf_counter() - t0) * 1000)
    await llm.close()
    print(f"LlmClient.complete, streamed and recorded ({n} calls): {ms(times)}")


async def ttft(db: Database, user_id: int) -> None:
    """Time to first token against a model streaming at 100 tokens/s."""
    with testkit.fake_model("--ratio", "1.0", "1.0", "--tokens-per-s", "100") as url:
        job_id = await testkit.make_job(db, user_id)
        llm = LlmClient(db, base_url=url, api_key="bench", model="fake-model")
        for i in range(5):
            await llm.complete(job_id=job_id, purpose="write", request_key=f"t{i}", messages=MSGS, max_tokens=400)
        await llm.close()
    async with db.tx() as s:
        sql = "SELECT ttft_ms, latency_ms, tokens_out FROM llm_calls WHERE job_id = :j ORDER BY id"
        rows = (await s.execute(text(sql), {"j": job_id})).all()
    for t, lat, out in rows:
        print(f"  100 tokens/s, {out} tokens: ttft {t:.1f} ms, latency {lat:.0f} ms (tokens/100 s = {out * 10} ms)")


async def scrape(db: Database, user_id: int, sizes: list[int]) -> None:
    """/metrics' work at scrape time (the jobs count and the text) with many jobs in the table."""
    have = 0
    for size in sizes:
        async with db.tx() as s:
            await s.execute(
                text(
                    "INSERT INTO jobs (id, user_id, kind, status, target_words, max_words, model, workflow_id,"
                    " completed_at, error_code, failure_reason)"
                    " SELECT gen_random_uuid(), :u, CASE WHEN g % 3 = 0 THEN 'rewrite' ELSE 'generate' END, st,"
                    " 100, 110, 'm', 'bench-' || gen_random_uuid(),"
                    " CASE WHEN st IN ('succeeded', 'failed', 'cancelled') THEN now() END,"
                    " CASE WHEN st = 'failed' THEN 'E_LENGTH_NOT_MET' END, CASE WHEN st = 'failed' THEN 'x' END"
                    " FROM generate_series(1, :n) g,"
                    " LATERAL (SELECT (ARRAY['queued','running','succeeded','failed','cancelled'])[1 + g % 5] st) s"
                ),
                {"u": user_id, "n": size - have},
            )
            await s.execute(text("ANALYZE jobs"))
        have = size
        count, render = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            await telemetry.job_counts(db)
            t1 = time.perf_counter()
            generate_latest()
            count.append((t1 - t0) * 1000)
            render.append((time.perf_counter() - t1) * 1000)
        print(f"/metrics with {size:,} jobs: count {ms(count)}; render {ms(render)}")


async def traced_job(db: Database, env: object, url: str, user: accounts.NewUser, words: int) -> None:
    """One job with tracing off, one with every span kept in memory (as an exporter would get them)."""
    for traced in (False, True):
        exporter = InMemorySpanExporter()
        tp = telemetry.in_memory("bench", exporter) if traced else None
        metrics.set_tracer(tp.get_tracer("quire") if tp else None)
        client = await Client.connect(
            testkit.target(env),  # type: ignore[arg-type]
            interceptors=[*telemetry.temporal_interceptors(tp), AuditInterceptor(db)],
        )
        llm = LlmClient(db, base_url=url, api_key="bench", model="fake-model")
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        async with build_worker(client, db, llm, queue):
            t0 = time.perf_counter()
            job = await testkit.submit(db, client, queue, words, prompt="Tides", user=user)
            await client.get_workflow_handle(f"job-{job.id}").result()
            wall = time.perf_counter() - t0
        await llm.close()
        metrics.set_tracer(None)
        spans = exporter.get_finished_spans()
        print(f"{words:,}-word job, tracing {'on ' if traced else 'off'}: wall {wall:.1f} s, spans {len(spans)}")


async def main(calls: int, sizes: list[int], words: int) -> None:
    with testkit.postgres() as pg, testkit.fake_model() as url:
        db = Database(testkit.create_database(pg, "bench"))
        env = await testkit.temporal()
        user = await accounts.create_user(db, f"bench-{uuid.uuid4().hex[:6]}")
        try:
            await raw_calls(url, calls)
            await recorded_calls(db, url, user.user_id, calls)
            await ttft(db, user.user_id)
            await traced_job(db, env, url, user, words)
            await scrape(db, user.user_id, sizes)
        finally:
            await db.dispose()
            await env.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--jobs", default="10000,100000", help="job counts for the scrape, comma-separated")
    ap.add_argument("--words", type=int, default=5000)
    a = ap.parse_args()
    asyncio.run(main(a.calls, [int(x) for x in a.jobs.split(",")], a.words))
