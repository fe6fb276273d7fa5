"""Book-scale benchmarks: parallel chapters, a 500,000-word book, and Quire's own overhead.

    .venv/bin/python -m bench.bench_book parallel [--words 60000] [--tokens-per-s 300] [--parallelism 6]
    .venv/bin/python -m bench.bench_book scale [--words 500000]
    .venv/bin/python -m bench.bench_book overhead [--words 20000]
    .venv/bin/python -m bench.bench_book fairness [--words 500000] [--slots 4] [--no-fairness]

Each starts its own embedded Postgres, Temporal dev server, the scripted model (tests/fake_llm.py,
run as a server process) and a worker process (``python -m worker``, as ``quire up`` runs it), then
submits one generate job and prints what it took:

- parallel: model time (the sum of every call's latency) / wall, and the peak number of model
  calls in flight (counted by the scripted model), with the model answering at a fixed tokens/s;
- scale: wall time, the worker's peak RSS, the largest workflow history, headings (all distinct?),
  audit events per chunk, at 0 ms model time;
- overhead: Quire's wall / a plain asyncio loop making the same calls (the job's own prompts, from
  llm_calls) with the same parallelism and one INSERT per chunk, at 0 ms model time;
- fairness: one user's book fills every model slot of the worker (32 chapters at once, ``--slots``
  calls at a time, the model at a provider's pace); once it is under way another user asks for
  2,000 words: how long until that job's first chunk call, how many of the book's calls started
  meanwhile, and when it ends (then the book is cancelled, unless ``--finish``). ``--no-fairness``
  runs the same on a Temporal server with fairness off, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from openai import AsyncOpenAI
from sqlalchemy import text
from temporalio.client import Client

import testkit
from core.text import count_words
from db.session import Database, plain_url

QUEUE = "bench"


def start_worker(db_url: str, temporal: str, fake_url: str, slots: int = 64) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TEMPORAL_ADDRESS": temporal,
        "TEMPORAL_TASK_QUEUE": QUEUE,
        "OPENAI_BASE_URL": fake_url,
        "OPENAI_API_KEY": "bench",
        "QUIRE_MODEL": "fake-model",
        "QUIRE_LOG_LEVEL": "warning",
        "QUIRE_LLM_CONCURRENCY": str(slots),
        "QUIRE_TEMPORAL_KEY": testkit.TEMPORAL_KEY,
    }
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=subprocess.DEVNULL)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_job(
    words: int,
    fake_args: list[str],
    options: dict[str, Any],
    then: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """One job on a fresh stack; the facts every benchmark prints from (``then`` runs on them
    while the stack is still up)."""
    with testkit.postgres() as pg, testkit.fake_model(*fake_args) as fake_url:
        url = testkit.create_database(pg, "bench")
        db = Database(url)
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        worker = start_worker(url, testkit.target(env), fake_url)
        try:
            t0 = time.perf_counter()
            t0_wall = time.time()
            job = await testkit.submit(db, client, QUEUE, words, options=options)
            result = await client.get_workflow_handle(job.workflow_id).result()
            wall = time.perf_counter() - t0
            facts = await _facts(db, client, job.id, job.workflow_id)
            facts["timeline"] = await _timeline(db, job.id, t0_wall)
            facts.update(
                result=result,
                wall=wall,
                worker_rss_mib=peak_rss_mib(worker.pid),
                fake=await _stats(fake_url),
                db_url=url,
                fake_url=fake_url,
            )
            if then is not None:
                await then(facts)
            return facts
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            await db.dispose()
            await env.shutdown()


async def _timeline(db: Database, job_id: uuid.UUID, t0: float) -> dict[str, float]:
    """Where the wall time went: the skeleton, the span of chapter writing, what came after; and
    how long fewer calls than the parallelism were in flight."""
    async with db.tx() as s:
        calls = (
            await s.execute(
                text(
                    "SELECT extract(epoch FROM started_at), extract(epoch FROM completed_at), purpose, request_key "
                    "FROM llm_calls WHERE job_id = :j ORDER BY started_at"
                ),
                {"j": job_id},
            )
        ).all()
        end = (
            await s.execute(text("SELECT extract(epoch FROM completed_at) FROM jobs WHERE id = :j"), {"j": job_id})
        ).scalar_one()
    plan = next(c for c in calls if c[3].startswith("plan:"))
    writes = [c for c in calls if c[2] in ("write", "extend")]
    return {
        "to_first_call": float(plan[0]) - t0,
        "skeleton": float(plan[1] - plan[0]),
        "first_write": float(writes[0][0]) - t0,
        "last_write_end": float(max(c[1] for c in writes)) - t0,
        "end": float(end) - t0,
    }


async def _stats(fake_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as h:
        return dict((await h.get(f"{fake_url}/stats")).json())


async def _facts(db: Database, client: Client, job_id: uuid.UUID, wid: str) -> dict[str, Any]:
    async with db.tx() as s:

        async def one(sql: str) -> Any:
            return (await s.execute(text(sql), {"j": job_id})).scalar_one()

        doc = await one("SELECT text FROM documents WHERE job_id=:j AND role='output'")
        facts = {
            "chunks": await one("SELECT count(*) FROM chunks WHERE job_id=:j"),
            "units": await one(
                "SELECT count(*) FROM plan_nodes WHERE job_id=:j AND id IN (SELECT unit_id FROM chunks)"
            ),
            "calls": await one("SELECT count(*) FROM llm_calls WHERE job_id=:j"),
            "model_s": (await one("SELECT coalesce(sum(latency_ms), 0) FROM llm_calls WHERE job_id=:j")) / 1000,
            "events": await one("SELECT count(*) FROM audit_events WHERE job_id=:j"),
            "seams": await one("SELECT count(*) FROM seam_checks WHERE job_id=:j"),
            "repairs": await one("SELECT count(*) FROM seam_checks WHERE job_id=:j AND repaired"),
            "words": count_words(doc),
        }
    headings = [ln.lstrip("#").strip().lower() for ln in doc.splitlines() if ln.startswith("#")]
    facts["headings"], facts["distinct_headings"] = len(headings), len(set(headings))
    runs = []
    async for wf in client.list_workflows(f"WorkflowId STARTS_WITH '{wid}'"):
        hist = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        runs.append(len(hist.events))
    facts["runs"], facts["max_history"] = len(runs), max(runs)
    return facts


def _line(f: dict[str, Any], words: int) -> str:
    return (
        f"{words} words: {f['result']}, output {f['words']} words; wall {f['wall']:.1f} s; {f['units']} units, "
        f"{f['chunks']} chunks, {f['calls']} model calls, {f['seams']} seams ({f['repairs']} repaired); "
        f"audit events {f['events']} ({f['events'] / max(1, f['chunks']):.0f} per chunk); workflow runs "
        f"{f['runs']}, largest history {f['max_history']} events; worker peak RSS {f['worker_rss_mib']:.0f} MiB"
    )


async def parallel(words: int, tokens_per_s: float, parallelism: int) -> None:
    f = await run_job(
        words, ["--ratio", "1.0", "1.1", "--tokens-per-s", str(tokens_per_s)], {"parallelism": parallelism}
    )
    print(_line(f, words))
    t = f["timeline"]
    print(
        f"timeline: first model call at {t['to_first_call']:.1f} s, skeleton {t['skeleton']:.1f} s, first chunk "
        f"call at {t['first_write']:.1f} s, last chunk call done at {t['last_write_end']:.1f} s, job done at "
        f"{t['end']:.1f} s"
    )
    print(
        f"model at {tokens_per_s:.0f} tokens/s per call, parallelism {parallelism}: model time {f['model_s']:.1f} s "
        f"/ wall {f['wall']:.1f} s = {f['model_s'] / f['wall']:.2f}; peak model calls in flight "
        f"{f['fake']['peak_in_flight']}"
    )


async def scale(words: int) -> None:
    f = await run_job(words, ["--ratio", "0.3", "0.6"], {})
    print(_line(f, words))
    print(f"headings {f['headings']}, distinct {f['distinct_headings']}")


async def overhead(words: int, parallelism: int) -> None:
    loops: list[float] = []

    async def plain(facts: dict[str, Any]) -> None:
        loops.append(await _plain_loop(facts, parallelism))

    f = await run_job(words, ["--ratio", "1.0", "1.1"], {"parallelism": parallelism}, plain)
    print(_line(f, words))
    loop = loops[0]
    print(
        f"plain loop, same {f['calls']} calls at parallelism {parallelism} and one INSERT per chunk: {loop:.1f} s; "
        f"Quire / plain loop = {f['wall'] / loop:.2f}"
    )


async def _plain_loop(f: dict[str, Any], parallelism: int) -> float:
    """The job's own model calls (its prompts, in order, per unit) made by a bare asyncio loop with
    the same parallelism, and one INSERT per chunk: what the work costs without Quire."""
    with psycopg.connect(plain_url(f["db_url"])) as conn:
        rows = conn.execute(
            "SELECT c.unit_id, l.messages, l.params, c.id FROM llm_calls l LEFT JOIN chunks c ON c.id = l.chunk_id "
            "ORDER BY l.id"
        ).fetchall()
        conn.execute("CREATE TABLE IF NOT EXISTS bench_chunks (id bigserial PRIMARY KEY, chunk bigint, text text)")
        conn.commit()
    streams: dict[Any, list[tuple[Any, Any, Any]]] = {}
    for unit, messages, params, chunk in rows:
        streams.setdefault(unit, []).append((messages, params, chunk))
    client = AsyncOpenAI(base_url=f["fake_url"], api_key="bench", max_retries=0)
    aconn = await psycopg.AsyncConnection.connect(plain_url(f["db_url"]), autocommit=True)
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(parallelism)

    async def stream(calls: list[tuple[Any, Any, Any]]) -> None:
        async with sem:
            last = None
            for messages, params, chunk in calls:
                r = await client.chat.completions.create(model="fake-model", messages=messages, **params)
                if chunk is not None and chunk != last:
                    async with lock:
                        await aconn.execute(
                            "INSERT INTO bench_chunks (chunk, text) VALUES (%s, %s)",
                            (chunk, r.choices[0].message.content),
                        )
                    last = chunk

    t0 = time.perf_counter()
    await asyncio.gather(*(stream(c) for c in streams.values()))
    took = time.perf_counter() - t0
    await client.close()
    await aconn.close()
    return took


async def fairness(words: int, small: int, slots: int, tokens_per_s: float, fair: bool, finish: bool) -> None:
    server = [] if fair else ["--dynamic-config-value", "matching.enableFairness=false"]
    model = ["--ratio", "1.0", "1.1", "--tokens-per-s", str(tokens_per_s)]
    with testkit.postgres() as pg, testkit.fake_model(*model) as fake:
        url = testkit.create_database(pg, "bench")
        db = Database(url)
        env = await testkit.temporal(server)
        client = await testkit.client(env, db)
        worker = start_worker(url, testkit.target(env), fake, slots)

        async def one(sql: str, **params: Any) -> Any:
            async with db.tx() as s:
                return (await s.execute(text(sql), params)).scalar_one()

        try:
            t0 = time.perf_counter()
            book = await testkit.submit(db, client, QUEUE, words, options={"parallelism": 32})
            calls = "SELECT count(*) FROM llm_calls WHERE job_id = :j"

            async def under_way() -> bool:  # its chapters are being written: every slot busy, a backlog behind
                return int(await one(calls, j=book.id)) >= 3 * slots

            await testkit.until("the book under way", under_way, within=600)
            t1 = time.perf_counter()
            job = await testkit.submit(db, client, QUEUE, small, prompt="Orchards")
            first_write = "SELECT min(started_at) FROM llm_calls WHERE job_id = :j AND purpose = 'write'"

            async def writing() -> bool:
                return await one(first_write, j=job.id) is not None

            await testkit.until("the small job's first chunk call", writing, within=3600)
            first = time.perf_counter() - t1
            meanwhile = await one(
                f"{calls} AND started_at > (SELECT created_at FROM jobs WHERE id = :s) "
                f"AND started_at < ({first_write.replace(':j', ':s')})",
                j=book.id,
                s=job.id,
            )
            assert await client.get_workflow_handle(job.workflow_id).result() == "succeeded"
            done = time.perf_counter() - t1
            print(f"fairness {'on' if fair else 'off'}; {slots} model slots; the model at {tokens_per_s:.0f} tokens/s")
            print(
                f"book of {words} words (user A), 32 chapters at once: {await one(calls, j=book.id)} model calls "
                f"when the small job ended; the small job submitted {t1 - t0:.1f} s after the book"
            )
            print(
                f"{small}-word job (user B): first chunk call after {first:.1f} s, {meanwhile} of the book's calls "
                f"started before it; done after {done:.1f} s"
            )
            if finish:
                await client.get_workflow_handle(book.workflow_id).result()
                print(f"book done after {time.perf_counter() - t0:.1f} s")
            else:
                await client.get_workflow_handle(book.workflow_id).cancel()
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            await db.dispose()
            await env.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("parallel")
    p.add_argument("--words", type=int, default=60_000)
    p.add_argument("--tokens-per-s", type=float, default=300.0)
    p.add_argument("--parallelism", type=int, default=6)
    s = sub.add_parser("scale")
    s.add_argument("--words", type=int, default=500_000)
    o = sub.add_parser("overhead")
    o.add_argument("--words", type=int, default=20_000)
    o.add_argument("--parallelism", type=int, default=6)
    f = sub.add_parser("fairness")
    f.add_argument("--words", type=int, default=500_000)
    f.add_argument("--small", type=int, default=2_000)
    f.add_argument("--slots", type=int, default=4, help="model calls at once on the worker")
    f.add_argument("--tokens-per-s", type=float, default=1000.0)
    f.add_argument("--no-fairness", action="store_true", help="a Temporal server with fairness off")
    f.add_argument("--finish", action="store_true", help="let the book finish (else it is cancelled)")
    a = ap.parse_args()
    if a.what == "fairness":
        asyncio.run(fairness(a.words, a.small, a.slots, a.tokens_per_s, not a.no_fairness, a.finish))
    elif a.what == "parallel":
        asyncio.run(parallel(a.words, a.tokens_per_s, a.parallelism))
    elif a.what == "scale":
        asyncio.run(scale(a.words))
    else:
        asyncio.run(overhead(a.words, a.parallelism))
