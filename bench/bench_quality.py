"""Quality of what Quire writes, against any OpenAI-compatible endpoint: the shipped prompts
(bench/prompts.jsonl, written for Quire, CC0) each run as a job on a stack of its own, and per job
the LongBench-Write length score S_l, continuity findings per 10,000 words by category (the
coherence report), the share of memory states the fallback made, junk cut per 1,000 words, tokens
and wall time.

    .venv/bin/python -m bench.bench_quality --url https://api.example/v1 --model M [--judge-model J]
        [--key-env OPENAI_API_KEY] [--only ID ...] [--scale 1.0] [--parallelism 6]
    .venv/bin/python -m bench.bench_quality --local [--only ID ...] [--scale 0.5]

``--local`` serves the offline demo model (Gemma 3 270M on llama.cpp, one call at a time): it runs
on this machine and shows the numbers of a weak model; with a real endpoint this is how quality is
measured. ``--scale`` multiplies every prompt's target (0.5: half as long). S_l is LongBench-Write's
(arXiv 2408.07055): 100 when the output is exactly as long as asked, falling as it strays either
way; Quire's outputs are never shorter than asked, so S_l only measures the overshoot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

import testkit
from core.continuity import summary_line
from db.counts import coherence_counts
from db.session import Database

PROMPTS = Path(__file__).with_name("prompts.jsonl")
QUEUE = "quality"


def length_score(asked: int, got: int) -> float:
    """LongBench-Write's S_l (Bai et al., 2024): 100 * (1 - (y/x - 1)/3) above, 100 * (1 - (x/y - 1)/2) below."""
    if got <= 0:
        return 0.0
    if got > asked:
        return 100 * max(0.0, 1 - (got / asked - 1) / 3)
    return 100 * max(0.0, 1 - (asked / got - 1) / 2)


@contextmanager
def local_model() -> Any:
    """The demo model behind llama.cpp's OpenAI server, as ``quire up`` serves it; yields (url, model)."""
    from quire import localmodel

    models = Path(os.environ.get("QUIRE_BENCH_MODELS", "/tmp/quire-bench-models"))
    path = localmodel.ensure_model(models)
    port = testkit.free_port()
    proc = subprocess.Popen(localmodel.server_args(path, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local model did not start")
            time.sleep(0.2)  # polling another process's readiness, with a deadline
        yield url, localmodel.MODEL_ALIAS
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_worker(db_url: str, temporal: str, url: str, model: str, key: str, extra: dict[str, str]) -> Any:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TEMPORAL_ADDRESS": temporal,
        "TEMPORAL_TASK_QUEUE": QUEUE,
        "OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": key,
        "QUIRE_MODEL": model,
        "QUIRE_LOG_LEVEL": "warning",
        "QUIRE_TEMPORAL_KEY": testkit.TEMPORAL_KEY,
        **extra,
    }
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=subprocess.DEVNULL)


async def run(
    url: str, model: str, key: str, prompts: list[dict[str, Any]], scale: float, parallelism: int, extra: dict[str, str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with testkit.postgres() as pg:
        db_url = testkit.create_database(pg, "quality")
        db = Database(db_url)
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        worker = start_worker(db_url, testkit.target(env), url, model, key, extra)
        try:
            for p in prompts:
                words = max(1, round(p["words"] * scale))
                t0 = time.perf_counter()
                job = await testkit.submit(
                    db, client, QUEUE, words, prompt=p["prompt"], options={"parallelism": parallelism}
                )
                try:
                    result = await client.get_workflow_handle(job.workflow_id).result()
                except Exception as exc:  # noqa: BLE001 - a failed job is a row of the table too
                    result = f"failed: {exc}"
                rows.append({"id": p["id"], "asked": words, "wall": time.perf_counter() - t0, "result": result})
                rows[-1].update(await _measure(db, job.id))
                print(_row(rows[-1]), flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            await db.dispose()
            await env.shutdown()
    return rows


async def _measure(db: Database, job_id: Any) -> dict[str, Any]:
    async with db.tx() as s:

        async def one(sql: str) -> Any:
            return (await s.execute(text(sql), {"j": job_id})).scalar_one()

        words = await one(
            "SELECT coalesce((SELECT word_count FROM documents WHERE job_id=:j AND role='output' LIMIT 1), "
            "(SELECT words_written FROM jobs WHERE id=:j))"
        )
        rep = await coherence_counts(s, job_id, words)
        tokens_in = await one("SELECT coalesce(sum(tokens_in), 0) FROM llm_calls WHERE job_id=:j")
        tokens_out = await one("SELECT coalesce(sum(tokens_out), 0) FROM llm_calls WHERE job_id=:j")
        # What the cleanup and the gate cut before counting: the chunk events' removed words.
        cut = await one(
            "SELECT coalesce(sum(coalesce((data->>'words_cut')::int, 0)), 0) FROM audit_events "
            "WHERE job_id=:j AND kind='chunk' AND action IN ('write', 'extend')"
        )
    return {
        "words": int(words or 0),
        "report": rep,
        "tokens_in": int(tokens_in),
        "tokens_out": int(tokens_out),
        "cut_per_1k": 1000 * int(cut) / max(1, int(words or 0)),
    }


def _row(r: dict[str, Any]) -> str:
    rep = r["report"]
    cats = " ".join(f"{c[:4]} {v['per_10k_words']:.2f}" for c, v in rep["by_category"].items())
    return (
        f"{r['id']:<18} {r['asked']:>6} -> {r['words']:>6} words  S_l {length_score(r['asked'], r['words']):5.1f}  "
        f"findings/10k {rep['per_10k_words']:5.2f} ({cats}) open {rep['open']}  fallback "
        f"{100 * rep['states']['fallback_share']:3.0f}%  cut/1k {r['cut_per_1k']:5.1f}  tokens "
        f"{r['tokens_in']:,}/{r['tokens_out']:,}  {r['wall']:6.1f} s  {str(r['result'])[:40]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an OpenAI-compatible endpoint (…/v1)")
    ap.add_argument("--model", help="the model the jobs are written with")
    ap.add_argument("--judge-model", help="the model of the memory and its judge (default: --model)")
    ap.add_argument("--key-env", default="OPENAI_API_KEY", help="the environment variable holding the key")
    ap.add_argument("--local", action="store_true", help="the offline demo model on this machine")
    ap.add_argument("--only", nargs="*", help="prompt ids to run (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every prompt's target words")
    ap.add_argument("--parallelism", type=int, default=6)
    a = ap.parse_args()
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    if a.only:
        prompts = [p for p in prompts if p["id"] in a.only]
    extra = {"QUIRE_JUDGE_MODEL": a.judge_model} if a.judge_model else {}
    if a.local:
        with local_model() as (url, model):
            extra["QUIRE_LLM_CONCURRENCY"] = "1"  # the local server serves one call at a time well
            rows = asyncio.run(run(url, model, "local", prompts, a.scale, a.parallelism, extra))
    else:
        if not (a.url and a.model):
            ap.error("--url and --model (or --local)")
        rows = asyncio.run(run(a.url, a.model, os.environ.get(a.key_env, ""), prompts, a.scale, a.parallelism, extra))
    done = [r for r in rows if r["words"]]
    if done:
        mean_sl = sum(length_score(r["asked"], r["words"]) for r in done) / len(done)
        words = sum(r["words"] for r in done)
        found = sum(r["report"]["found"] for r in done)
        ratio = sum(r["tokens_in"] for r in done) / max(1, sum(r["tokens_out"] for r in done))
        per10k = 10_000 * found / max(1, words)
        print(f"{len(done)} jobs: mean S_l {mean_sl:.1f}; findings {found} ({per10k:.2f} per 10,000 words); ", end="")
        print(f"tokens in/out {ratio:.2f}")
        print("last job's coherence:", summary_line(done[-1]["report"]))


if __name__ == "__main__":
    main()
