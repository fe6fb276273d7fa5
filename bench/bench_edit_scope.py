"""The author's loop held to its word: edits against a real model, and every break counted.

    .venv/bin/python -m bench.bench_edit_scope --topics 2                # the local model (Gemma 3 270M)
    .venv/bin/python -m bench.bench_edit_scope --fake --topics 3         # the scripted model, in seconds

Per topic: one job written (chapters, when ``--words`` asks for them), then four edits as an
author makes them: a hand edit of its first node (one sentence changed), a selection rewritten
near the start of a node and one near its end (its first and last sentences), and the last node
regenerated with an instruction. A break is any claim that does not hold:

- a rewrite committed with the node's text changed outside the selection, or the document changed
  anywhere but inside it;
- an edited node (model text: rewrite, regenerate) that starts or ends in the middle of a sentence;
- the document's end cut by an edit that is not at the end;
- a model answer of an edit with no attempt recording its words (the word account short);
- a failed edit that left a new document version, or a refused rewrite that left new versions.

A refused rewrite (``E_EDIT_SCOPE``: no answer stayed inside its selection) is no break: nothing
was committed and the edit says why; it is counted apart, with the coverage verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from temporalio.client import Client

import testkit
from bench.bench_demo import TOPICS, local_model
from core.edits import node_text
from core.scope import boundary_problems, changed_region
from core.spec import JobSpec
from db.coverage import CoverageCheck
from db.loop import Edit
from db.manuscript import ChunkVersion, PlanNode
from db.models import Document, Job
from db.session import Database
from db.tree import chunks_under, latest_text
from quire import localmodel
from services import accounts, jobs
from services import loop as authoring
from services.config import load_settings
from worker import build_worker, llm_from_settings
from workflows.steps import Durability

QUEUE = "bench-edit-scope"
EDIT_PURPOSES = ("write", "extend", "rewrite", "coverage_repair")


async def bench(db: Database, client: Client, llm: Any, words: int, topics: int) -> list[dict[str, Any]]:
    out = []
    async with build_worker(client, db, llm, QUEUE, llm_concurrency=1):
        user = await accounts.create_user(db, f"bench-{uuid.uuid4().hex[:6]}")
        for topic in TOPICS[:topics]:
            out.append(await one(db, client, user, topic, words))
            print(line(out[-1]), flush=True)
    return out


async def one(db: Database, client: Client, user: accounts.NewUser, topic: str, words: int) -> dict[str, Any]:
    job, _ = await jobs.submit(
        db, client, user_id=user.user_id, user_name=user.name,
        spec=JobSpec(kind="generate", prompt=topic, target_words=words), task_queue=QUEUE,
        default_model=localmodel.MODEL_ALIAS,
    )  # fmt: skip
    status = await client.get_workflow_handle(job.workflow_id).result()
    row: dict[str, Any] = {"topic": topic, "status": status, "breaks": [], "edits": Counter(), "coverage": Counter()}
    if status != "succeeded":
        return row
    nodes = await _nodes(db, job.id)
    first, last = nodes[0], nodes[-1]
    text0 = await _text(db, first)
    sents = [s for s in text0.replace("\n\n", " ").split(". ") if len(s.split()) >= 4]
    changed = text0.replace(sents[0], sents[0] + ", as the old books say", 1) if sents else text0 + " It was so."
    await _edit(db, client, user, job.id, first, "edit", row, text=changed)
    for where in ("start", "end"):
        t = await _text(db, first)
        pieces = [s.strip() for s in t.split(". ") if s.strip()]
        quote = pieces[0] + "." if where == "start" else pieces[-1]
        await _edit(db, client, user, job.id, first, "rewrite", row,
                    params={"quote": quote, "instruction": "say it more plainly"})  # fmt: skip
    await _edit(db, client, user, job.id, last, "regenerate", row, params={"instruction": "make the ending calmer"})
    async with db.tx() as s:
        for (verdict,) in (await s.execute(select(CoverageCheck.verdict).where(CoverageCheck.job_id == job.id))).all():
            row["coverage"][verdict] += 1
        calls = (
            await s.execute(
                text(
                    "SELECT count(*) FROM llm_calls c WHERE c.job_id = :j AND c.status = 'ok' AND c.purpose = ANY(:p) "
                    "AND c.started_at >= (SELECT min(created_at) FROM edits WHERE job_id = :j) "
                    "AND NOT EXISTS (SELECT 1 FROM chunk_attempts a WHERE a.llm_call_id = c.id)"
                ),
                {"j": job.id, "p": list(EDIT_PURPOSES)},
            )
        ).scalar_one()
    if calls:
        row["breaks"].append(f"{calls} model answer(s) of edits with no attempt recording their words")
    return row


async def _edit(
    db: Database, client: Client, user: accounts.NewUser, job_id: uuid.UUID, node: PlanNode, kind: str,
    row: dict[str, Any], *, params: dict[str, Any] | None = None, text: str | None = None,
) -> None:  # fmt: skip
    before_doc = await _doc(db, job_id)
    before_node = await _text(db, node)
    versions = await _versions(db, job_id)
    async with db.tx() as s:
        job = await s.get(Job, job_id)
    try:
        edit = await authoring.start_edit(
            db, client, job, node.id, kind, {"user": user.name}, task_queue=QUEUE, durability=Durability(),
            params=dict(params or {}), text=text,
        )  # fmt: skip
    except authoring.Refused as exc:
        row["edits"][f"{kind} refused {exc.status}"] += 1
        return
    try:
        await client.get_workflow_handle(edit.workflow_id).result()
    except Exception:  # noqa: BLE001 - a failed edit is read from its row
        pass
    async with db.tx() as s:
        edit = await s.get(Edit, edit.id)
    after_doc, after_node = await _doc(db, job_id), await _text(db, node)
    row["edits"][f"{kind} {edit.status}" + (f" {edit.error_code}" if edit.error_code else "")] += 1
    if edit.status != "done":
        row.setdefault("why", []).append(f"{kind}: {edit.reason}")
        if after_doc != before_doc or (edit.error_code == "E_EDIT_SCOPE" and await _versions(db, job_id) != versions):
            row["breaks"].append(f"{kind}: failed ({edit.error_code}) but left new versions")
        return
    if kind == "rewrite":
        start, end = int(edit.params["start"]), int(edit.params["end"])
        new = edit.detail["scope"]["selection_after"]
        if after_node != before_node[:start] + new + before_node[end:]:
            row["breaks"].append("rewrite: the node changed outside the selection")
        p, q, gone, came = changed_region(before_doc, after_doc)
        if gone not in before_node[start:end] or came not in new:
            row["breaks"].append(f"rewrite: the document changed outside the selection at {p}: {gone[:60]!r}")
    if kind in ("rewrite", "regenerate") and boundary_problems(after_node):
        row["breaks"].append(f"{kind}: " + "; ".join(boundary_problems(after_node)))
    tail = before_doc.rstrip().rsplit("\n\n", 1)[-1]
    if tail not in before_node and not after_doc.rstrip().endswith(tail) and not edit.detail.get("top_ups"):
        row["breaks"].append(f"{kind}: the document's end was cut ({tail[-60:]!r})")


async def _nodes(db: Database, job_id: uuid.UUID) -> list[PlanNode]:
    async with db.tx() as s:
        q = select(PlanNode).where(PlanNode.job_id == job_id, PlanNode.depth == 1, PlanNode.is_continuation.is_(False))
        return list((await s.execute(q.order_by(PlanNode.position))).scalars())


async def _text(db: Database, node: PlanNode) -> str:
    async with db.tx() as s:
        return node_text([await latest_text(s, c.id) for c in await chunks_under(s, node)])


async def _doc(db: Database, job_id: uuid.UUID) -> str:
    async with db.tx() as s:
        q = select(Document.text).where(Document.job_id == job_id, Document.role == "output")
        return (await s.execute(q.order_by(Document.version.desc()).limit(1))).scalar_one()


async def _versions(db: Database, job_id: uuid.UUID) -> int:
    async with db.tx() as s:
        q = select(func.count()).select_from(ChunkVersion).where(ChunkVersion.job_id == job_id)
        return int((await s.execute(q)).scalar_one())


def line(r: dict[str, Any]) -> str:
    edits = ", ".join(f"{k} {v}" for k, v in sorted(r["edits"].items()))
    cov = ", ".join(f"{k} {v}" for k, v in sorted(r["coverage"].items())) or "none"
    return f"{r['topic'][:40]:<40} {r['status']:<9} breaks {len(r['breaks'])}; edits: {edits}; coverage: {cov}" + (
        "".join(f"\n    break: {b}" for b in r["breaks"]) + "".join(f"\n    failed: {w}" for w in r.get("why", []))
    )


async def main(a: argparse.Namespace) -> list[dict[str, Any]]:
    with testkit.postgres() as pg:
        db = Database(testkit.create_database(pg, "bench"))
        env = await testkit.temporal()
        client = await testkit.client(env, db)
        try:
            if a.fake:
                with testkit.fake_model("--ratio", "1.0", "1.15") as url:
                    from activities.llm import LlmClient

                    llm = LlmClient(db, base_url=url, api_key="bench", model=localmodel.MODEL_ALIAS)
                    return await bench(db, client, llm, a.words, a.topics)
            with local_model(a.models) as port:
                settings = load_settings(
                    quire_home=a.models, openai_base_url=None, openai_api_key=None, llm_port=port,
                    quire_llm_timeout_s=a.timeout,
                )  # fmt: skip
                llm = llm_from_settings(db, settings)  # as the embedded stack's worker: document prompts
                return await bench(db, client, llm, a.words, a.topics)
        finally:
            await db.dispose()
            await env.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=600)
    ap.add_argument("--topics", type=int, default=2)
    ap.add_argument("--fake", action="store_true", help="the scripted model instead of the local one")
    ap.add_argument("--models", type=Path, default=Path("/tmp/i29e-models"), help="where the GGUF goes")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a model call may take")
    args = ap.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    rows = asyncio.run(main(args))
    total = sum(len(r["breaks"]) for r in rows)
    edits = Counter()
    for r in rows:
        edits.update(r["edits"])
    print(
        f"{len(rows)} topics, {sum(edits.values())} edits ({', '.join(f'{k} {v}' for k, v in sorted(edits.items()))})"
    )
    print(f"breaks: {total}")
