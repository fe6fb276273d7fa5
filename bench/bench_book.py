"""Book-scale benchmarks: parallel chapters, a 500,000-word book, and Quire's own overhead.

    .venv/bin/python -m bench.bench_book parallel [--words 60000] [--tokens-per-s 300] [--parallelism 6]
    .venv/bin/python -m bench.bench_book scale [--words 500000] [--baseline REF] [--rounds 2]
    .venv/bin/python -m bench.bench_book moonshot [--words 500000] [--tokens-per-s 60] [--parallelism 100]
    .venv/bin/python -m bench.bench_book overhead [--words 20000]
    .venv/bin/python -m bench.bench_book lock [--words 100000] [--parallelism 32]
    .venv/bin/python -m bench.bench_book fairness [--words 500000] [--slots 4] [--no-fairness]

Each starts its own embedded Postgres, Temporal dev server, the scripted model (tests/fake_llm.py,
run as a server process) and a worker process (``python -m worker``, as ``quire up`` runs it), then
submits one generate job and prints what it took:

- parallel: model time (the sum of every call's latency) / wall, and the peak number of model
  calls in flight (counted by the scripted model), with the model answering at a fixed tokens/s;
- scale: wall time, the worker's peak RSS, the largest workflow history, headings (all distinct?),
  audit events and transactions per chunk, at 0 ms model time; with ``--baseline REF``, the same
  job on ``REF``'s code first (a temporary git worktree, removed afterwards) and the two side by
  side, with new / old wall;
- moonshot: the book at a real provider's pace (every call streamed at ``--tokens-per-s``),
  ``--parallelism`` chapters at once and as many model calls at once on the worker: wall, model
  time / wall, peak calls in flight, Quire's CPU (worker and Postgres), the largest history and the
  database sessions in use;
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
import json
import os
import re
import shutil
import statistics
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


def _line(f: dict[str, Any], words: int) -> str:
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


async def scale(words: int, baseline: str | None, out: str | None, rounds: int = 1) -> None:
    """The book against the scripted model answering at once (Quire's own cost); with ``baseline``,
    the same job on that ref's code too, and both side by side: ``rounds`` pairs, the order of
    the two swapped each round (a machine that slows as it warms favours neither), and the
    median of each."""
    olds: list[dict[str, Any]] = []
    news: list[dict[str, Any]] = []
    for r in range(rounds if baseline else 1):
        for which in ("new",) if baseline is None else ("old", "new") if r % 2 == 0 else ("new", "old"):
            if which == "old":
                assert baseline is not None
                olds.append(_baseline_scale(baseline, words))
                continue
            f = await run_job(words, ["--ratio", "0.3", "0.6"], {})
            news.append(_scale_figures(f))
            if out is not None:  # the run for another tree's benchmark (``--baseline``)
                await asyncio.to_thread(Path(out).write_text, json.dumps(news[-1]))
            print(_line(f, words))
            print(f"headings {f['headings']}, distinct {f['distinct_headings']}")
            if baseline is None:
                return
    old, new = _median(olds), _median(news)
    rows = [
        ("wall (s)", "wall", "{:.1f}"),
        ("chunks", "chunks", "{:.0f}"),
        ("audit events per chunk", "events_per_chunk", "{:.1f}"),
        ("transactions per chunk (distinct xmin of its audit events)", "write_tx_per_chunk", "{:.2f}"),
        ("commits per chunk (pg_stat_database.xact_commit)", "commits_per_chunk", "{:.2f}"),
        ("worker peak RSS (MiB)", "worker_rss_mib", "{:.0f}"),
        ("worker CPU (s)", "worker_cpu_s", "{:.1f}"),
        ("its gate process: peak RSS (MiB)", "helpers_rss_mib", "{:.0f}"),
        ("its gate process: CPU (s)", "helpers_cpu_s", "{:.1f}"),
        ("Postgres CPU (s)", "postgres_cpu_s", "{:.1f}"),
        ("largest workflow history (events)", "max_history", "{:.0f}"),
    ]
    name = f"{baseline} ({old['commit']})"
    print(f"\n{words} words, the model answering at once: {name} | this tree")
    for label, key, fmt in rows:
        shown = [fmt.format(v[key]) if v.get(key) is not None else "n/a" for v in (old, new)]
        print(f"  {label:<60} {shown[0]:>10} {shown[1]:>10}")
    if old.get("how"):
        print(f"  ({baseline}: {old['how']})")
    if rounds > 1:
        pairs = ", ".join(f"{o['wall']:.1f} | {n['wall']:.1f}" for o, n in zip(olds, news, strict=True))
        print(f"  (medians of {rounds} rounds; wall by round, old | new: {pairs})")
    print(f"new / old wall = {new['wall'] / old['wall']:.2f}")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over ``runs`` (the first run's, where a figure is not a number)."""
    out = dict(runs[0])
    for key, value in out.items():
        values = [r.get(key) for r in runs]
        if isinstance(value, int | float) and all(isinstance(v, int | float) for v in values):
            out[key] = statistics.median(values)
    return out


def _scale_figures(f: dict[str, Any]) -> dict[str, Any]:
    chunks = max(1, f["chunks"])
    return {
        "result": f["result"],
        "wall": f["wall"],
        "chunks": f["chunks"],
        "events_per_chunk": f["events"] / chunks,
        "write_tx_per_chunk": f["write_tx"] / chunks,
        "commits_per_chunk": f["commits"] / chunks,
        "worker_rss_mib": f["worker_rss_mib"],
        "worker_cpu_s": f["worker_cpu_s"],
        "helpers_rss_mib": f.get("helpers_rss_mib"),
        "helpers_cpu_s": f.get("helpers_cpu_s"),
        "postgres_cpu_s": f["postgres_cpu_s"],
        "max_history": f["max_history"],
    }


@contextmanager
def _worktree(ref: str) -> Iterator[tuple[Path, str]]:
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


def _baseline_scale(ref: str, words: int) -> dict[str, Any]:
    """``scale`` on ``ref``'s code: this benchmark (this file) driving that tree's stack, worker and
    scripted model; if this file cannot drive that tree, that tree's own benchmark, and what its
    line says (no transaction counts)."""
    with _worktree(ref) as (where, commit), tempfile.TemporaryDirectory() as tmp:
        # The worktree's packages first on the path (the editable install is this checkout's).
        env = {**os.environ, "PYTHONPATH": str(where)}
        out = Path(tmp) / "figures.json"
        this = [sys.executable, str(Path(__file__).resolve()), "scale", "--words", str(words), "--json", str(out)]
        run = subprocess.run(this, cwd=where, env=env, capture_output=True, text=True)
        if run.returncode == 0:
            print(f"baseline run ({ref}, {commit}): {_result_line(run.stdout)}")
            return {**json.loads(out.read_text()), "commit": commit, "how": ""}
        print(f"this benchmark cannot drive {ref}'s code ({run.stderr.strip().splitlines()[-1]}); its own then")
        own = [sys.executable, "-m", "bench.bench_book", "scale", "--words", str(words)]
        line = subprocess.run(own, cwd=where, env=env, capture_output=True, text=True, check=True).stdout
    line = _result_line(line)
    print(f"baseline run ({ref}, {commit}): {line}")

    def num(pattern: str) -> float | None:
        m = re.search(pattern, line)
        return float(m.group(1)) if m else None

    chunks = num(r"(\d+) chunks")
    events = num(r"audit events (\d+)")
    return {
        "commit": commit,
        "how": "its own benchmark's figures; it counts no transactions",
        "wall": num(r"wall ([\d.]+) s"),
        "chunks": int(chunks) if chunks else None,
        "events_per_chunk": events / chunks if events and chunks else None,
        "worker_rss_mib": num(r"worker peak RSS (\d+) MiB"),
        "max_history": num(r"largest history (\d+) events"),
    }


def _result_line(out: str) -> str:
    """A benchmark's result line (``_line``) among what else its run printed (Temporal's banner)."""
    return next(ln for ln in out.splitlines() if re.match(r"\d+ words: ", ln))


async def moonshot(words: int, tokens_per_s: float, parallelism: int) -> None:
    """A book at a real provider's pace: every call streamed at ``tokens_per_s``, ``parallelism``
    chapters at once and as many model calls at once on the worker."""
    model = ["--ratio", "1.0", "1.1", "--tokens-per-s", str(tokens_per_s)]
    f = await run_job(words, model, {"parallelism": parallelism}, slots=parallelism)
    print(_line(f, words))
    t = f["timeline"]
    print(
        f"timeline: first chunk call at {t['first_write']:.1f} s, last chunk call done at {t['last_write_end']:.1f} s, "
        f"job done at {t['end']:.1f} s"
    )
    quire = f["worker_cpu_s"] + f["postgres_cpu_s"]
    c = f["peak_connections"]
    print(
        f"model at {tokens_per_s:.0f} tokens/s per call, parallelism {parallelism}, {parallelism} model calls at once "
        f"on the worker: wall {f['wall']:.1f} s; model time {f['model_s']:.1f} s / wall = "
        f"{f['model_s'] / f['wall']:.2f}; peak model calls in flight {f['fake']['peak_in_flight']}"
    )
    print(
        f"Quire's CPU during the job: worker {f['worker_cpu_s']:.1f} s + Postgres {f['postgres_cpu_s']:.1f} s "
        f"= {quire:.1f} s ({1000 * quire / max(1, f['chunks']):.0f} ms per chunk; the job is submitted "
        f"directly, so no API); Temporal's dev server {f['temporal_cpu_s']:.1f} s besides"
    )
    print(
        f"largest workflow history {f['max_history']} events ({f['runs']} runs); database sessions: at most "
        f"{c['open']} open, {c['busy']} in a transaction at once (sampled every 50 ms); "
        f"{f['commits'] / max(1, f['chunks']):.1f} commits per chunk"
    )


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


async def lock(words: int, parallelism: int, tokens_per_s: float | None = None) -> None:
    """Is the job row a queue? Every transaction of a job takes its row lock to number and chain its
    audit events; with ``parallelism`` chapters committing at once, sample Postgres every 10 ms for
    sessions waiting on a lock of ``jobs``."""

    async def sample(db_url: str) -> dict[str, Any]:
        samples, waiting, writing = 0, [], 0
        conn = await psycopg.AsyncConnection.connect(plain_url(db_url), autocommit=True)
        try:
            while True:
                rows = await (
                    await conn.execute(
                        "SELECT a.wait_event_type, a.query FROM pg_stat_activity a "
                        "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.state = 'active'"
                    )
                ).fetchall()
                samples += 1
                waiting.append(sum(1 for w, q in rows if w == "Lock" and "jobs" in (q or "")))
                writing += sum(1 for _, q in rows if "audit_seq" in (q or ""))
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            return {"samples": samples, "waiting": waiting, "writing": writing}
        finally:
            await conn.close()

    pace = [] if tokens_per_s is None else ["--tokens-per-s", str(tokens_per_s)]
    f = await run_job(words, ["--ratio", "1.0", "1.1", *pace], {"parallelism": parallelism}, during=sample)
    print(_line(f, words))
    if tokens_per_s is not None:
        print(f"the model streaming at {tokens_per_s:.0f} tokens/s per call")
    w = f["watched"]
    busy = [n for n in w["waiting"] if n]
    print(
        f"parallelism {parallelism}: {w['samples']} samples of Postgres every 10 ms; a session waited on the job "
        f"row's lock in {len(busy)} ({100 * len(busy) / max(1, w['samples']):.1f}%), at most "
        f"{max(w['waiting'] or [0])} at once, {sum(busy) / max(1, len(busy)):.1f} on average when any"
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
                answer = await _call(client, messages, params)
                if chunk is not None and chunk != last:
                    async with lock:
                        await aconn.execute("INSERT INTO bench_chunks (chunk, text) VALUES (%s, %s)", (chunk, answer))
                    last = chunk

    t0 = time.perf_counter()
    await asyncio.gather(*(stream(c) for c in streams.values()))
    took = time.perf_counter() - t0
    await client.close()
    await aconn.close()
    return took


async def _call(client: AsyncOpenAI, messages: Any, params: dict[str, Any]) -> str:
    """One call as Quire made it (its stored params: streamed when Quire streamed), its text."""
    if not params.get("stream"):
        r = await client.chat.completions.create(model="fake-model", messages=messages, **params)
        return r.choices[0].message.content or ""
    parts = []
    async for piece in await client.chat.completions.create(model="fake-model", messages=messages, **params):
        if piece.choices and piece.choices[0].delta.content:
            parts.append(piece.choices[0].delta.content)
    return "".join(parts)


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
    s.add_argument("--baseline", help="a git ref to run the same job on first, for its figures beside these")
    s.add_argument("--json", help=argparse.SUPPRESS)  # where a baseline run leaves its figures
    s.add_argument("--rounds", type=int, default=1, help="pairs of runs with --baseline, the order swapped each round")
    ms = sub.add_parser("moonshot")
    ms.add_argument("--words", type=int, default=500_000)
    ms.add_argument("--tokens-per-s", type=float, default=60.0)
    ms.add_argument("--parallelism", type=int, default=100)
    o = sub.add_parser("overhead")
    o.add_argument("--words", type=int, default=20_000)
    o.add_argument("--parallelism", type=int, default=6)
    lk = sub.add_parser("lock")
    lk.add_argument("--words", type=int, default=100_000)
    lk.add_argument("--parallelism", type=int, default=32)
    lk.add_argument("--tokens-per-s", type=float, help="the model's pace (default: it answers at once)")
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
    elif a.what == "lock":
        asyncio.run(lock(a.words, a.parallelism, a.tokens_per_s))
    elif a.what == "parallel":
        asyncio.run(parallel(a.words, a.tokens_per_s, a.parallelism))
    elif a.what == "scale":
        asyncio.run(scale(a.words, a.baseline, a.json, a.rounds))
    elif a.what == "moonshot":
        asyncio.run(moonshot(a.words, a.tokens_per_s, a.parallelism))
    else:
        asyncio.run(overhead(a.words, a.parallelism))
