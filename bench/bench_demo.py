"""The local demo model, end to end: does what it writes read clean? Junk before and after the gate.

    .venv/bin/python -m bench.bench_demo --words 800            # the demo brief and 5 other topics
    .venv/bin/python -m bench.bench_demo --words 800 --topics 2 --out /tmp/demo-docs

Runs a real Quire stack in-process (embedded Postgres, the Temporal dev server, the worker as
``quire up`` builds it from its settings) against the real offline model: Gemma 3 270M served by
llama.cpp, started the way ``quire up`` starts it (``quire.localmodel``). One job per topic, one at
a time (the model serves one call at a time on 2 cores). Per topic it prints the words asked for
and written, the words the model wrote and what the gate cut of them (by rule), wall time, and junk
per 1,000 words: *before*, the pieces the gate cut from the model's raw answers (each a line or a
fragment of one); *after*, what the gate still finds in the finished document read as one text
(headings aside): repeats across chunks, anything the stitch and seam steps brought back. With
``--out``, each document is saved with what the gate cut from its answers (``N.cuts.txt``): junk
left is counted by reading them, as a reader would (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import text
from temporalio.client import WorkflowFailureError

import testkit
from core.gate import gate
from core.spec import JobSpec
from core.text import count_words
from db.session import Database
from quire import localmodel
from quire.admin import DEMO_BRIEF
from services import accounts, jobs
from services.config import load_settings
from worker import build_worker, llm_from_settings

TOPICS = [
    DEMO_BRIEF,
    "The history of lighthouses and the keepers who lived in them.",
    "How to bake sourdough bread at home, from starter to loaf.",
    "A short history of the bicycle.",
    "Why the sky is blue and sunsets are red: light and the atmosphere, explained simply.",
    "A walking tour of an old harbour town, its streets, its market and its people.",
]
QUEUE = "bench-demo"


@contextmanager
def local_model(models: Path) -> Iterator[int]:
    """The local model served as ``quire up`` serves it; yields its port."""
    model = localmodel.ensure_model(models)
    port = testkit.free_port()
    with open(models / "llm.log", "wb") as log:
        server = subprocess.Popen(localmodel.server_args(model, port), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not _answers(f"http://127.0.0.1:{port}/v1/models"):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the llama.cpp server did not start: see {models / 'llm.log'}")
                time.sleep(0.2)  # another process starting up: polled, with a deadline
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def bench(
    port: int, words: int, topics: int, home: Path, out: Path | None, plain: bool, timeout_s: float
) -> list[dict]:
    with testkit.postgres() as pg:
        db = Database(testkit.create_database(pg, "bench"))
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        settings = load_settings(
            quire_home=home,
            openai_base_url=None,
            openai_api_key=None,
            llm_port=port,
            quire_llm_timeout_s=timeout_s,  # a loaded machine writes slower: time, not junk, is measured here
        )
        llm = llm_from_settings(db, settings)  # as the embedded stack's worker: document prompts
        if plain:  # llama.cpp's own sampling defaults, to compare
            llm.sampling = {}
        rows = []
        try:
            async with build_worker(client, db, llm, QUEUE, llm_concurrency=1):
                user = await accounts.create_user(db, "bench")
                for i, topic in enumerate(TOPICS[:topics], 1):
                    rows.append(await run(db, client, user, topic, words))
                    print(line(rows[-1]), flush=True)  # as it goes: a long run still tells
                    if out is not None:  # the document, and what the gate cut from its answers (to read)
                        await asyncio.to_thread(_save, out / f"{i}.md", rows[-1]["doc"])
                        await asyncio.to_thread(_save, out / f"{i}.cuts.txt", "\n".join(rows[-1]["cuts"]) + "\n")
            return rows
        finally:
            await llm.close()
            await db.dispose()
            await env.shutdown()


async def run(db: Database, client: object, user: accounts.NewUser, topic: str, words: int) -> dict:
    t0 = time.perf_counter()
    job, _ = await jobs.submit(
        db,
        client,  # type: ignore[arg-type]
        user_id=user.user_id,
        user_name=user.name,
        spec=JobSpec(kind="generate", prompt=topic, target_words=words),
        task_queue=QUEUE,
        default_model=localmodel.MODEL_ALIAS,
    )
    try:
        status = await client.get_workflow_handle(job.workflow_id).result()  # type: ignore[attr-defined]
    except WorkflowFailureError as exc:  # a job that fails says why: measured and reported, not fatal
        status = "failed"
        print(f"{topic[:44]}: failed: {exc.cause}", flush=True)
    wall = time.perf_counter() - t0
    async with db.tx() as s:
        p = {"j": job.id}
        answers = (
            await s.execute(
                text(
                    "SELECT response, messages FROM llm_calls WHERE job_id = :j AND status = 'ok' "
                    "AND purpose IN ('write', 'extend') ORDER BY id"
                ),
                p,
            )
        ).all()
        doc = (
            await s.execute(
                text("SELECT text FROM documents WHERE job_id = :j ORDER BY (role = 'output') DESC, version DESC"), p
            )
        ).scalar()
        cuts = (
            await s.execute(
                text(
                    "SELECT c->>'rule', c->>'text' FROM chunk_attempts a, jsonb_array_elements(a.cuts) c "
                    "WHERE a.job_id = :j ORDER BY a.id"
                ),
                p,
            )
        ).all()
        rules = Counter(
            dict(
                (
                    await s.execute(
                        text(
                            "SELECT c->>'rule', sum((c->>'words')::int) FROM chunk_attempts a, "
                            "jsonb_array_elements(a.cuts) c WHERE a.job_id = :j GROUP BY 1"
                        ),
                        p,
                    )
                ).all()
            )
        )
    doc = doc or ""
    raw_words = sum(count_words(a or "") for a, _ in answers)
    prompts = ["\n".join(m["content"] for m in msgs) for _, msgs in answers]
    before = sum(len(gate(a or "", prompt=q).cuts) for (a, _), q in zip(answers, prompts, strict=True))
    body = "\n".join(ln for ln in doc.splitlines() if not ln.startswith("#"))
    headings = "\n".join(ln for ln in doc.splitlines() if ln.startswith("#"))  # the titles a line may echo
    left = gate(body, prompt=headings).cuts
    return {
        "doc": doc,
        "topic": topic,
        "status": status,
        "words": count_words(doc),
        "raw_words": raw_words,
        "cut_words": sum(rules.values()),
        "rules": rules,
        "before": 1000 * before / max(1, raw_words),
        "after": 1000 * len(left) / max(1, count_words(body)),
        "left": [c.rule for c in left],
        "cuts": [f"{rule}: {cut}" for rule, cut in cuts],
        "wall": wall,
    }


def _save(path: Path, doc: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


HEADER = f"{'topic':<44} {'status':<9} {'words':>6} {'model':>6} {'cut':>5} " + (
    f"{'junk/1k before':>15} {'after':>6} {'wall s':>7}"
)


def line(r: dict) -> str:
    return (
        f"{r['topic'][:44]:<44} {r['status']:<9} {r['words']:>6} {r['raw_words']:>6} {r['cut_words']:>5} "
        f"{r['before']:>15.1f} {r['after']:>6.1f} {r['wall']:>7.0f}"
    )


def report(rows: list[dict], words: int) -> None:
    print(f"target {words} words per topic; local model {localmodel.MODEL_ALIAS} (llama.cpp, 2 threads)")
    print(HEADER)
    for r in rows:
        print(line(r))
    total = Counter()
    for r in rows:
        total.update(r["rules"])
    print("words cut by rule: " + ", ".join(f"{k} {v}" for k, v in total.most_common()))
    print("junk left after (rule of each): " + (", ".join(x for r in rows for x in r["left"]) or "none"))
    raw = sum(r["raw_words"] for r in rows)
    print(
        f"all topics: {sum(r['words'] for r in rows)} words written, {raw} by the model, "
        f"{sum(r['cut_words'] for r in rows)} cut; junk/1k before "
        f"{sum(r['before'] * r['raw_words'] for r in rows) / max(1, raw):.1f}, "
        f"wall {sum(r['wall'] for r in rows):.0f} s"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=800)
    ap.add_argument("--topics", type=int, default=len(TOPICS))
    ap.add_argument("--out", type=Path, default=None, help="save each document here")
    ap.add_argument("--models", type=Path, default=Path("/tmp/quire-bench-models"), help="where the GGUF goes")
    ap.add_argument("--plain-sampling", action="store_true", help="llama.cpp's defaults, not LOCAL_SAMPLING")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a model call may take")
    a = ap.parse_args()
    a.models.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    with local_model(a.models) as llm_port:
        results = asyncio.run(bench(llm_port, a.words, a.topics, a.models, a.out, a.plain_sampling, a.timeout))
    report(results, a.words)
