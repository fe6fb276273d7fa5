"""What the book benchmarks share: a worker process as ``quire up`` runs it, one job run and
measured (wall, CPU and peak RSS of the worker and its helpers, Postgres's CPU and commits, the
largest workflow history, audit events and transactions per chunk, model calls in flight), its
line of figures, and another commit's code in a temporary worktree for side-by-side runs.

Used by ``bench.bench_book`` (scale, moonshot, overhead, lock, fairness) and ``bench.bench_memory``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import text
from temporalio.client import Client

import testkit
from core.text import count_words
from db.session import Database

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (what it cost, whatever else the machine did)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    during: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
    slots: int = 64,
) -> dict[str, Any]:
    """One job on a fresh stack; the facts every benchmark prints from (``then`` runs on them
    while the stack is still up, the worker stopped; ``during(db_url)`` runs while the job does,
    until it ends, and what it returns joins the facts). ``slots``: the worker's model calls at
    once (QUIRE_LLM_CONCURRENCY)."""
    with testkit.postgres() as pg, testkit.fake_model(*fake_args) as fake_url:
        url = testkit.create_database(pg, "bench")
        db = Database(url)
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        worker = start_worker(url, testkit.target(env), fake_url, slots)
        # Postgres is watched from its own "postgres" database: these reads are not the job's commits.
        admin = await psycopg.AsyncConnection.connect(pg.get_uri(), autocommit=True)
        stopped = False
        try:
            postmaster = await _postmaster(admin)
            temporal_pid = _child_named("temporal")
            commits0, pg_cpu0 = await _commits(admin), _tree_cpu(postmaster)
            temporal_cpu0 = cpu_seconds(temporal_pid) if temporal_pid else float("nan")
            worker_cpu0 = cpu_seconds(worker.pid)
            t0 = time.perf_counter()
            t0_wall = time.time()
            job = await testkit.submit(db, client, QUEUE, words, options=options)
            watching = asyncio.create_task(during(url)) if during is not None else None
            connections = asyncio.create_task(_connections(admin))
            result = await client.get_workflow_handle(job.workflow_id).result()
            wall = time.perf_counter() - t0
            worker_cpu = cpu_seconds(worker.pid) - worker_cpu0
            temporal_cpu = cpu_seconds(temporal_pid) - temporal_cpu0 if temporal_pid else float("nan")
            rss = peak_rss_mib(worker.pid)
            helpers = _children(worker.pid)  # its gate process
            helpers_cpu = sum(cpu_seconds(p) for p in helpers)
            helpers_rss = sum(peak_rss_mib(p) for p in helpers)
            watched: dict[str, Any] = {}
            if watching is not None:
                watching.cancel()
                watched = (await asyncio.gather(watching, return_exceptions=True))[0]
            connections.cancel()
            conns = (await asyncio.gather(connections, return_exceptions=True))[0]
            facts = await _facts(db, client, job.id, job.workflow_id)
            facts["timeline"] = await _timeline(db, job.id, t0_wall)
            fake = await _stats(fake_url)
            # Stop the worker and wait for its sessions to end: a backend's counters reach
            # pg_stat_database when it goes idle or exits, and its CPU its postmaster's once reaped.
            _stop(worker)
            stopped = True
            await db.dispose()
            await testkit.until("the job's sessions closed", lambda: _sessions_gone(admin), within=30)
            facts.update(
                watched=watched,
                result=result,
                wall=wall,
                worker_rss_mib=rss,
                worker_cpu_s=worker_cpu,
                helpers_cpu_s=helpers_cpu if helpers else None,
                helpers_rss_mib=helpers_rss if helpers else None,
                postgres_cpu_s=_tree_cpu(postmaster) - pg_cpu0,
                temporal_cpu_s=temporal_cpu,
                commits=await _commits(admin) - commits0,
                peak_connections=conns,
                fake=fake,
                db_url=url,
                fake_url=fake_url,
            )
            if then is not None:
                await then(facts)
            return facts
        finally:
            if not stopped:
                _stop(worker)
                await db.dispose()
            await admin.close()
            await env.shutdown()


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    worker.wait(timeout=60)


async def _commits(admin: psycopg.AsyncConnection[Any]) -> int:
    """Transactions committed in the bench database so far (pg_stat_database.xact_commit)."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await (await admin.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")).fetchone()
    assert row is not None
    return int(row[0])


async def _sessions_gone(admin: psycopg.AsyncConnection[Any]) -> bool:
    row = await (
        await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench' AND pid <> pg_backend_pid()")
    ).fetchone()
    return row is not None and row[0] == 0


async def _connections(admin: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """Every 50 ms until cancelled: sessions open on the bench database, and how many of them
    were in a transaction (checked out of a pool); the peaks, and what the busiest sample ran."""
    peak: dict[str, Any] = {"open": 0, "busy": 0, "samples": 0, "busiest": []}
    try:
        while True:
            rows = await (
                await admin.execute(
                    "SELECT state, left(query, 60) FROM pg_stat_activity "
                    "WHERE datname = 'bench' AND backend_type = 'client backend'"
                )
            ).fetchall()
            busy = [(st, q) for st, q in rows if st in ("active", "idle in transaction")]
            if len(busy) > peak["busy"]:
                peak["busy"], peak["busiest"] = len(busy), busy
            peak["open"] = max(peak["open"], len(rows))
            peak["samples"] += 1
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        return peak


async def _postmaster(admin: psycopg.AsyncConnection[Any]) -> int:
    row = await (await admin.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'")).fetchone()
    assert row is not None
    return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree_cpu(postmaster: int) -> float:
    """CPU seconds of a Postgres server so far: the postmaster's own, its reaped backends' (its
    children's times) and its live processes'."""
    f = _stat(postmaster)
    ticks = sum(int(x) for x in f[11:15])
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                c = _stat(int(proc.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(c[1]) == postmaster:
                ticks += int(c[11]) + int(c[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int(_stat(int(proc.name))[1]) == pid:
                    out.append(int(proc.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def _child_named(part: str) -> int | None:
    """The pid of this process's child whose command names ``part`` (the Temporal dev server)."""
    for pid in _children(os.getpid()):
        try:
            if part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return pid
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


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
            # Every audited transaction writes its events at its end, so they share its xid (xmin).
            "write_tx": await one("SELECT count(DISTINCT xmin::text) FROM audit_events WHERE job_id=:j"),
            "row_events": await one("SELECT count(*) FROM audit_events WHERE job_id=:j AND kind = 'row'"),
            "event_bytes": await one(
                "SELECT coalesce(sum(octet_length(data::text) + coalesce(octet_length(sql_text), 0)), 0)"
                " FROM audit_events WHERE job_id=:j"
            ),
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


def result_line_of(f: dict[str, Any], words: int) -> str:
    return (
        f"{words} words: {f['result']}, output {f['words']} words; wall {f['wall']:.1f} s; {f['units']} units, "
        f"{f['chunks']} chunks, {f['calls']} model calls, {f['seams']} seams ({f['repairs']} repaired); "
        f"audit events {f['events']} ({f['events'] / max(1, f['chunks']):.1f} per chunk, {f['row_events']} row "
        f"events, {f['event_bytes'] / max(1, f['chunks']) / 1024:.1f} KiB of data and SQL per chunk) in "
        f"{f['write_tx']} transactions ({f['write_tx'] / max(1, f['chunks']):.1f} per chunk); workflow runs "
        f"{f['runs']}, largest history {f['max_history']} events; worker peak RSS {f['worker_rss_mib']:.0f} MiB, "
        f"CPU {f['worker_cpu_s']:.1f} s"
        + (
            f"; its gate process: peak RSS {f['helpers_rss_mib']:.0f} MiB, CPU {f['helpers_cpu_s']:.1f} s"
            if f.get("helpers_cpu_s") is not None
            else ""
        )
    )


@contextmanager
def worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """``ref``'s code in a temporary git worktree (and its short commit), removed afterwards."""
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    where = Path(tempfile.mkdtemp(prefix="quire-baseline-")) / commit
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=repo, check=True, capture_output=True)
    try:
        yield where, commit
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=repo, check=True, capture_output=True)
        shutil.rmtree(where.parent, ignore_errors=True)


def last_result_line(out: str) -> str:
    """A benchmark's result line (``result_line_of``) among what else its run printed (Temporal's banner)."""
    return next(ln for ln in out.splitlines() if re.match(r"\d+ words: ", ln))
