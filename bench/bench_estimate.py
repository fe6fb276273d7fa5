"""Estimates against what the jobs then used: how often does the actual land inside the range?

    .venv/bin/python -m bench.bench_estimate --save /tmp/estimates.json            # the scripted model
    .venv/bin/python -m bench.bench_estimate --local 2 --save /tmp/estimates.json  # and 2 local-model jobs
    .venv/bin/python -m bench.bench_estimate --replay /tmp/estimates.json          # re-score, no job run

Runs a real stack in-process (embedded Postgres, the Temporal dev server, a worker) and, model by
model, a series of jobs of different shapes (lengths, passage sizes, a rewrite, chapters written two
at a time). Each job is estimated as ``POST /v1/jobs/estimate`` would have estimated it when it was
submitted (``services.estimate.for_job``: from that model's jobs finished before it; the first job of
a model from the defaults), then run to its end, then compared, figure by figure (calls, tokens in,
tokens out, cost, wall time): inside low..high or not. Each job is also estimated *cold*, from the
defaults alone, as a new deployment would: the defaults' ranges are checked on every job, not only
on each model's first.

The scripted model plays two hosted models: ``fake-short`` writes 30-60% of what it is asked
(extended again and again, as small models need) at 120 tokens/s after 0.3 s; ``fake-steady``
writes 95-125% at 50 tokens/s after 0.8 s. ``--local N`` then runs N small jobs of the local model (Gemma 3 270M
on llama.cpp, one call at a time on 2 cores: minutes each). ``--save`` keeps every job's shape,
calls, tokens and wall time, so that ``--replay`` re-scores them with the estimator as it now is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from contextlib import ExitStack
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import testkit
from core.cost import Price
from core.estimate import CHAT, FIGURES, LOCAL, Measured, Shape, estimate
from core.spec import JobSpec
from db.models import Job
from db.session import Database
from services import accounts, jobs
from services import estimate as estimates
from services.config import Settings, load_settings
from worker import build_worker, llm_from_settings

ROOT = Path(__file__).parent.parent
QUEUE = "bench-estimate"
PERSONAS = {  # at the speeds of hosted models: a small fast one, a large slow one
    "fake-short": ("--ratio", "0.3", "0.6", "--tokens-per-s", "120", "--delay", "0.3"),
    "fake-steady": ("--ratio", "0.95", "1.25", "--tokens-per-s", "50", "--delay", "0.8"),
}
PRICES = {"fake-short": Price(input=Decimal("0.5"), output=Decimal("1.5")),
          "fake-steady": Price(input=Decimal(3), output=Decimal(15))}  # fmt: skip
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "bench" / "prompts.jsonl").read_text().splitlines()]
SOURCE = (ROOT / "tests" / "fixtures" / "prose" / "darwin.txt").read_text()
# (kind, words, options): small to a few chapters; passages of 300 to 1,500 words.
JOBS: list[tuple[str, int, dict[str, Any]]] = [
    ("generate", 1000, {"chunk_words": 500}),
    ("generate", 2500, {}),
    ("rewrite", 1800, {"chunk_words": 600}),
    ("generate", 4000, {"chunk_words": 1000}),
    ("generate", 12000, {"chunk_words": 1500, "parallelism": 2}),
    ("generate", 1500, {"chunk_words": 300}),
    ("generate", 6000, {"chunk_words": 800}),
    ("generate", 2000, {}),
]
LOCAL_JOBS: list[tuple[str, int, dict[str, Any]]] = [
    ("generate", 300, {"chunk_words": 300}),
    ("generate", 500, {}),
    ("generate", 800, {}),
    ("generate", 600, {"chunk_words": 300}),
]
FIGS = (*FIGURES[:3], "cost", FIGURES[3])


def spec_of(kind: str, words: int, options: dict[str, Any], i: int, model: str) -> JobSpec:
    if kind == "rewrite":
        source = " ".join(SOURCE.split()[: int(words * 0.8)])
        return JobSpec(kind="rewrite", input_text=source, target_words=words, model=model, options=options)
    return JobSpec(kind="generate", prompt=PROMPTS[i % len(PROMPTS)], target_words=words, model=model, options=options)


def measured_dict(m: Measured) -> dict[str, Any]:
    return {"shape": asdict(m.shape), "calls": m.calls, "tokens_in": m.tokens_in, "tokens_out": m.tokens_out,
            "wall_s": m.wall_s}  # fmt: skip


def measured_of(d: dict[str, Any], rewrite: bool) -> Measured:
    shape = Shape(**{**d["shape"], "rewrite": rewrite})
    return Measured(shape, d["calls"], d["tokens_in"], d["tokens_out"], d["wall_s"])


async def run_model(
    db: Database, client: Any, settings: Settings, model: str, todo: list, user: accounts.NewUser
) -> list[dict[str, Any]]:
    """The jobs of one model in turn, each estimated as at its submit, run, then measured."""
    llm = llm_from_settings(db, settings)
    out = []
    try:
        async with build_worker(client, db, llm, QUEUE, llm_concurrency=settings.llm_concurrency):
            for i, (kind, words, options) in enumerate(todo):
                spec = spec_of(kind, words, options, i, model)
                job, _ = await jobs.submit(
                    db, client, user_id=user.user_id, user_name=user.name, spec=spec, task_queue=QUEUE,
                    default_model=model,
                )  # fmt: skip
                t0 = time.perf_counter()
                await client.get_workflow_handle(job.workflow_id).result()
                async with db.tx() as s:
                    job = await s.get(Job, job.id)
                    m = await estimates.measured(s, job)
                seen = await estimates.for_job(db, settings, job)
                rec = {
                    "model": model, "local": settings.uses_local_model, "kind": kind, "words": words,
                    "options": options, "status": job.status,
                    "measured": measured_dict(m), "cost": seen["actual"]["cost_micro_usd"],
                    "estimate": seen["estimate"], "run_s": round(time.perf_counter() - t0, 1),
                    "concurrency": settings.llm_concurrency, "spec_shape": asdict(estimates.spec_shape(spec)),
                }  # fmt: skip
                out.append(rec)
                print(line(rec, rec["estimate"], cold(rec)), flush=True)
    finally:
        await llm.close()
    return out


def cold(rec: dict[str, Any]) -> dict[str, Any]:
    """The estimate from the defaults alone (as the model's first job would have it)."""
    return predict(rec, [])


def predict(rec: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The estimate of ``rec``'s job from ``history`` (records, newest first), by the estimator as it now is."""
    return estimate(
        Shape(**{**rec["spec_shape"], "rewrite": rec["kind"] == "rewrite"}),
        [measured_of(h["measured"], h["kind"] == "rewrite") for h in history],
        PRICES.get(rec["model"]),
        profile=LOCAL if rec["local"] else CHAT,
        concurrency=rec["concurrency"],
    )


def actual(rec: dict[str, Any]) -> dict[str, float | None]:
    m = rec["measured"]
    return {
        "calls": sum(m["calls"].values()),
        "tokens_in": sum(m["tokens_in"].values()),
        "tokens_out": sum(m["tokens_out"].values()),
        "cost": rec["cost"] if rec["model"] in PRICES else None,
        "wall_seconds": m["wall_s"],
    }


def hits(rec: dict[str, Any], est: dict[str, Any]) -> dict[str, bool | None]:
    """Per figure: the actual inside the estimate's range (None: not priced)."""
    a, out = actual(rec), {}
    for f in FIGS:
        r = est["cost"]["micro_usd"] if f == "cost" else est[f]
        out[f] = None if a[f] is None or r is None else r["low"] <= a[f] <= r["high"]
    return out


def line(rec: dict[str, Any], est: dict[str, Any], cold_est: dict[str, Any]) -> str:
    a, h, hc = actual(rec), hits(rec, est), hits(rec, cold_est)

    def fig(f: str) -> str:
        r = est["cost"]["micro_usd"] if f == "cost" else est[f]
        if r is None or a[f] is None:
            return f"{f} -"
        mark = ("in" if h[f] else "OUT") + ("/cold in" if hc[f] else "/cold OUT")
        return f"{f} {a[f]:,.0f} ({r['low']:,}..{r['high']:,}) {mark}"

    head = f"{rec['model']:<12} {rec['kind']:<8} {rec['words']:>6} {rec['status']:<9} {est['basis']:<8}"
    return head + "  " + "; ".join(fig(f) for f in FIGS)


def coverage(records: list[dict[str, Any]], replay: bool) -> list[str]:
    """Per figure, the share of jobs whose actual is inside the range: as made, and cold."""
    made: dict[str, dict[str, list[bool]]] = {"history": {}, "defaults": {}, "cold": {}}
    for i, rec in enumerate(records):
        if rec["status"] != "succeeded":
            continue
        earlier = [r for r in records[:i] if r["model"] == rec["model"] and r["status"] == "succeeded"]
        est = predict(rec, list(reversed(earlier))[: estimates.HISTORY_JOBS]) if replay else rec["estimate"]
        for f, ok in hits(rec, est).items():
            if ok is not None:
                made[est["basis"]].setdefault(f, []).append(ok)
        for f, ok in hits(rec, cold(rec)).items():
            if ok is not None:
                made["cold"].setdefault(f, []).append(ok)
    out = [f"{'estimates':<28}" + "".join(f"{f:>16}" for f in FIGS)]
    labels = {
        "history": "from history (as made)",
        "defaults": "from defaults (as made)",
        "cold": "cold: defaults, every job",
    }
    for k, label in labels.items():
        cells = [made[k].get(f, []) for f in FIGS]
        out.append(
            f"{label:<28}"
            + "".join(f"{f'{sum(c)}/{len(c)} {100 * sum(c) / len(c):.0f}%' if c else '-':>16}" for c in cells)
        )
    both = {f: made["history"].get(f, []) + made["defaults"].get(f, []) for f in FIGS}
    out.append(
        f"{'all, as made':<28}"
        + "".join(f"{f'{sum(c)}/{len(c)} {100 * sum(c) / len(c):.0f}%' if c else '-':>16}" for c in both.values())
    )
    return out


async def bench(local: slice, skip_fake: bool, models: Path, timeout_s: float) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with ExitStack() as stack:
        pg = stack.enter_context(testkit.postgres())
        db = Database(testkit.create_database(pg, "bench"))
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        user = await accounts.create_user(db, "bench")
        try:
            for model, args in [] if skip_fake else PERSONAS.items():
                with testkit.fake_model(*args) as url:
                    settings = load_settings(
                        openai_base_url=url, openai_api_key="bench", quire_model=model, quire_prices=PRICES
                    )
                    records += await run_model(db, client, settings, model, JOBS, user)
            if LOCAL_JOBS[local]:
                from bench.bench_demo import local_model
                from quire import localmodel

                with local_model(models) as port:
                    settings = load_settings(
                        quire_home=models,
                        openai_base_url=None,
                        openai_api_key=None,
                        llm_port=port,
                        quire_llm_timeout_s=timeout_s,  # a busy machine writes slower: its time is measured
                    )
                    records += await run_model(db, client, settings, localmodel.MODEL_ALIAS, LOCAL_JOBS[local], user)
        finally:
            await db.dispose()
            await env.shutdown()
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local", type=int, default=0, help="then N jobs of the local model (minutes each)")
    ap.add_argument("--local-skip", type=int, default=0, help="start at the local jobs' Kth (a run in parts)")
    ap.add_argument("--no-fake", action="store_true", help="skip the scripted model's jobs")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a local model call may take")
    ap.add_argument("--save", help="keep every job's figures in this JSON file (appended to what is there)")
    ap.add_argument("--replay", help="re-score the jobs of a saved file with the estimator as it now is")
    a = ap.parse_args()
    if a.replay:
        records = json.loads(Path(a.replay).read_text())
    else:
        models = Path(os.environ.get("QUIRE_BENCH_MODELS", "/tmp/quire-bench-models"))  # the GGUF, kept
        models.mkdir(parents=True, exist_ok=True)
        records = asyncio.run(bench(slice(a.local_skip, a.local_skip + a.local), a.no_fake, models, a.timeout))
        if a.save:
            path = Path(a.save)
            old = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps(old + records, indent=1, default=str))
    if a.replay:
        for i, rec in enumerate(records):
            earlier = [r for r in records[:i] if r["model"] == rec["model"] and r["status"] == "succeeded"]
            print(line(rec, predict(rec, list(reversed(earlier))[: estimates.HISTORY_JOBS]), cold(rec)))
    failed = sum(r["status"] != "succeeded" for r in records)
    print(f"\n{len(records)} jobs ({failed} not succeeded: left out); the actual inside the estimate's range:")
    print("\n".join(coverage(records, bool(a.replay))))


if __name__ == "__main__":
    main()
