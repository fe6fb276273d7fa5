"""Live-stream latency and download memory of the API, measured on a real API process.

    .venv/bin/python -u -m bench.bench_api [--events 500] [--log 100000] [--clients 1,20]

Starts embedded Postgres and a Temporal dev server, runs the API with uvicorn in a subprocess,
then measures (1) commit-to-client latency of the SSE stream: a writer commits one audit event
every 10 ms and each of N clients on the job's stream records when it arrives (writer and clients
in this process: one monotonic clock; the API in its own process);
(2) the API process's peak RSS while it streams a whole 100,000-event log as JSON, NDJSON and TXT.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

import testkit
from db.models import Job
from db.session import Database
from services import accounts


async def latency(db: Database, api: str, key: str, user_id: int, n: int, clients: int) -> list[float]:
    """Milliseconds from a writer's commit returning to each client's receipt of that event."""
    jid = await testkit.make_job(db, user_id)
    base = await _seq(db, jid)
    committed: dict[int, float] = {}
    received: list[dict[int, float]] = [{} for _ in range(clients)]
    subscribed = [asyncio.Event() for _ in range(clients)]

    async def reader(i: int) -> None:
        async with (
            httpx.AsyncClient(timeout=None) as c,
            c.stream("GET", f"{api}/v1/jobs/{jid}/audit/stream", headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    seq = int(line[3:])
                    received[i][seq] = time.perf_counter()
                    if seq == base:  # the backlog is read: this stream is subscribed
                        subscribed[i].set()
                    if seq == base + n:
                        return

    tasks = [asyncio.create_task(reader(i)) for i in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in subscribed)), 30)
    for i in range(n):
        async with db.job_tx(jid) as tx:
            tx.event("bench", "tick", {"i": i})
        committed[base + i + 1] = time.perf_counter()  # commit() has returned
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return [(got[s] - t) * 1000 for got in received for s, t in committed.items()]


async def _seq(db: Database, jid: uuid.UUID) -> int:
    async with db.tx() as s:
        return (await s.get(Job, jid)).audit_seq  # type: ignore[union-attr]


def _hwm_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), exact, from the kernel."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class PeakRss(threading.Thread):
    """Samples a process's RSS every 2 ms until finish(); returns the highest seen."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = proc, proc.memory_info().rss, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.002)

    def finish(self) -> int:
        self.stop.set()
        self.join()
        return self.peak


async def memory(db: Database, api: str, key: str, user_id: int, n: int, pid: int) -> list[str]:
    jid = await testkit.make_job(db, user_id)
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
        hwm_before = _hwm_kib(pid)
        sampler = PeakRss(proc)
        sampler.start()
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
        dt = time.perf_counter() - t0
        peak = sampler.finish()
        out.append(
            f"{fmt:>6}: {written:,} events, {size / 1e6:.1f} MB in {dt:.1f} s ({written / dt:,.0f} events/s); "
            f"API RSS before {base / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB (+{(peak - base) / 2**20:.1f} MiB, "
            f"sampled every 2 ms); kernel VmHWM {hwm_before / 1024:.1f} -> {_hwm_kib(pid) / 1024:.1f} MiB"
        )
    return out


async def main(events: int, log_size: int, client_counts: list[int]) -> None:
    with testkit.postgres() as pg:
        url = testkit.create_database(pg, "bench")
        db = Database(url)
        env = await testkit.temporal()
        port = testkit.free_port()
        api = f"http://127.0.0.1:{port}"
        proc = testkit.api_process(port, {"DATABASE_URL": url, "TEMPORAL_ADDRESS": testkit.target(env)})
        try:
            await measure(db, api, proc, events, log_size, client_counts)
        finally:
            proc.terminate()
            proc.wait()
            await db.dispose()
            await env.shutdown()


async def measure(
    db: Database, api: str, proc: subprocess.Popen[bytes], events: int, log_size: int, client_counts: list[int]
) -> None:
    for _ in range(300):
        try:
            if (await httpx.AsyncClient().get(f"{api}/readyz")).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    user = await accounts.create_user(db, f"bench-{uuid.uuid4().hex[:6]}")
    print(f"API process pid {proc.pid}: RSS after start {psutil.Process(proc.pid).memory_info().rss / 2**20:.1f} MiB")
    for clients in client_counts:
        lat = sorted(await latency(db, api, user.api_key, user.user_id, events, clients))
        p = statistics.quantiles(lat, n=100)
        print(
            f"SSE commit-to-client latency, {clients} client(s) on one job, {events} events (one commit every "
            f"10 ms; {len(lat)} deliveries): p50 {p[49]:.1f} ms, p90 {p[89]:.1f} ms, p99 {p[98]:.1f} ms, "
            f"max {lat[-1]:.1f} ms"
        )
    for line in await memory(db, api, user.api_key, user.user_id, log_size, proc.pid):
        print(line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--log", type=int, default=100_000)
    ap.add_argument("--clients", default="1,20", help="comma-separated numbers of concurrent stream clients")
    a = ap.parse_args()
    asyncio.run(main(a.events, a.log, [int(x) for x in a.clients.split(",")]))
