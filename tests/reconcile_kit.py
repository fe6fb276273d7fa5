"""The reconciler's own stack and the helpers of its tests (tests/test_reconcile.py,
tests/test_reconcile_edits.py, tests/test_doctor.py); tests/conftest.py registers this module as
a plugin (``pytest_plugins``), so its fixtures are found by name, as a conftest's are, and its
asserts are rewritten.

A database, a worker (with the reconciler) and an API of their own, on a task queue of their own:
the reconciler settles every row of its database and every workflow of its task queue, so the
rows and workflows other tests leave on purpose stay theirs.

The database and its client are one per session (per xdist worker): the modules that use them run
one after another on a worker, and each finds the rows and workflows the one before left on the
queue, all of them known to the database (with a database of its own, a module's reconciler would
settle the previous one's open workflows as runs of deleted jobs). The worker with the reconciler,
its Schedule and the API are one per module: up while its tests run, gone after.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

import testkit
from db.loop import Edit
from db.manuscript import PlanNode
from db.models import AuditEvent, Job
from db.session import Database
from metrics import SETTLED
from services import accounts
from services.reconcile import Reconciler, Starts, ensure_schedule, schedule_id
from tests.conftest import (
    AUDIT_KEY,
    OPERATOR_TOKEN,
    SEALING_KEY,
    TEST_SECRET,
    WEBHOOK_RETRY,
    api_settings,
    make_llm,
    serving,
    webhook_config,
)
from worker import build_worker
from workflows.steps import Durability

QUEUE = "quire-reconcile"
PERIOD_S = 3.0  # the reconciler's period here (QUIRE_RECONCILE_EVERY_S; 60 s by default)
GRACE_S = 1.0  # QUIRE_RECONCILE_GRACE_S (60 s by default)
# One period, and the reconciler's own run (a workflow task, an activity, a few RPCs and
# transactions) on a loaded 2-core machine.
SETTLES_WITHIN_S = PERIOD_S + 20.0
STARTS = Starts(QUEUE, Durability(retry_max_s=0.2), WEBHOOK_RETRY, False)


@pytest.fixture(scope="session")
def rec_url(pg_server) -> str:  # type: ignore[no-untyped-def]
    return testkit.create_database(pg_server, f"rec_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
async def rdb(rec_url: str) -> AsyncIterator[Database]:
    database = Database(rec_url, secrets=[TEST_SECRET, SEALING_KEY], signer=AUDIT_KEY, checkpoint_every=200)
    yield database
    await database.dispose()


@pytest.fixture(scope="session")
async def rclient(temporal_env, rdb):  # type: ignore[no-untyped-def]
    return await testkit.client(temporal_env, rdb)


@pytest.fixture(scope="module")
async def reconciler(rclient, rdb, fake_llm) -> AsyncIterator[Reconciler]:  # type: ignore[no-untyped-def]
    rec = Reconciler(rdb, rclient, STARTS, grace_s=GRACE_S)
    w = build_worker(rclient, rdb, make_llm(rdb, fake_llm), QUEUE, webhooks=webhook_config(), reconciler=rec)
    task = asyncio.create_task(w.run())
    await ensure_schedule(rclient, QUEUE, PERIOD_S)
    await ensure_schedule(rclient, QUEUE, PERIOD_S)  # again, as every worker does at its start: no error
    yield rec
    await rclient.get_schedule_handle(schedule_id(QUEUE)).delete()
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="module")
async def rapi(rdb, rclient, reconciler) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    from api.app import create_app

    app = create_app(api_settings(temporal_task_queue=QUEUE, quire_retry_max_interval_s=0.2), db=rdb, client=rclient)
    async with serving(app) as url:
        yield url


@pytest.fixture
async def ruser(rdb: Database) -> accounts.NewUser:
    return await accounts.create_user(rdb, f"rec-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def api(rapi: str, ruser: accounts.NewUser) -> AsyncIterator[httpx.AsyncClient]:
    auth = {"Authorization": f"Bearer {ruser.api_key}"}
    async with httpx.AsyncClient(base_url=rapi, headers=auth, timeout=60) as c:
        yield c


# -- helpers -------------------------------------------------------------------------------------


async def submit(api: httpx.AsyncClient, words: int, **options: Any) -> uuid.UUID:
    body = {"kind": "generate", "prompt": "Lighthouse keepers", "target_words": words, "options": options}
    r = await api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["id"])


async def job(db: Database, job_id: uuid.UUID) -> Job:
    async with db.tx() as s:
        row = await s.get(Job, job_id)
        assert row is not None
        return row


def status_is(db: Database, job_id: uuid.UUID, *statuses: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await job(db, job_id)).status in statuses

    return check


def chunks_done(db: Database, job_id: uuid.UUID, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with db.tx() as s:
            done = await s.scalar(
                text("SELECT count(*) FROM chunks WHERE job_id = :j AND status = 'done'"), {"j": job_id}
            )
        return int(done or 0) >= n

    return check


async def events(db: Database, job_id: uuid.UUID, kind: str, action: str | None = None) -> list[AuditEvent]:
    async with db.tx() as s:
        q = select(AuditEvent).where(AuditEvent.job_id == job_id, AuditEvent.kind == kind).order_by(AuditEvent.seq)
        found = list((await s.execute(q)).scalars())
    return [e for e in found if action is None or e.action == action]


def settled(what: str, action: str, by: str) -> float:
    return SETTLED.labels(what, action, by)._value.get()


async def settles(what: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Wait for ``check`` (the reconciler's work) within one period and its run; the seconds it took."""
    t0 = time.monotonic()
    await testkit.until(what, check, within=SETTLES_WITHIN_S)
    return time.monotonic() - t0


@asynccontextmanager
async def reconciler_paused(client: Any) -> AsyncIterator[None]:
    """The Schedule paused, and no run of it in flight: stuck states stay as made, for a doctor, a
    cancel or a resume to find."""
    handle = client.get_schedule_handle(schedule_id(QUEUE))
    await handle.pause(note="a test makes stuck states")

    async def idle() -> bool:
        query = f"WorkflowType = 'ReconcileWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{QUEUE}'"
        return not [wf async for wf in client.list_workflows(query)]

    await testkit.until("no reconciler run in flight", idle)
    try:
        yield
    finally:
        await handle.unpause()


async def succeeded_job(api: httpx.AsyncClient, db: Database, words: int = 400) -> uuid.UUID:
    job_id = await submit(api, words)
    await testkit.until("the job to succeed", status_is(db, job_id, "succeeded"), within=120)
    return job_id


async def a_section(db: Database, job_id: uuid.UUID) -> int:
    async with db.tx() as s:
        return int(
            await s.scalar(select(PlanNode.id).where(PlanNode.job_id == job_id, PlanNode.level == "section").limit(1))
        )


async def the_edit(db: Database, job_id: uuid.UUID, number: int) -> Edit:
    async with db.tx() as s:
        e = await s.scalar(select(Edit).where(Edit.job_id == job_id, Edit.number == number))
        assert e is not None
        return e


async def awaiting_review(api: httpx.AsyncClient, words: int = 600) -> uuid.UUID:
    """A job waiting for its plan's review: its workflow open, no step of it running."""
    job_id = await submit(api, words, review_plan=True)

    async def awaiting() -> bool:
        return bool((await api.get(f"/v1/jobs/{job_id}/plan")).json()["awaiting_review"])

    await testkit.until("the plan to await its review", awaiting, within=60)
    return job_id


def api_env(rec_url: str, temporal: str, namespace: str, home: str, **env: str) -> dict[str, str]:
    """The settings of an API process of the reconciler's database and task queue."""
    return {
        "QUIRE_HOME": home,
        "DATABASE_URL": rec_url,
        "TEMPORAL_ADDRESS": temporal,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_TASK_QUEUE": QUEUE,
        "QUIRE_TEMPORAL_KEY": testkit.TEMPORAL_KEY,
        "QUIRE_SECRET_KEY": SEALING_KEY,
        "QUIRE_AUDIT_KEY": AUDIT_KEY.text(),
        "QUIRE_MODEL": "fake-model",
        "QUIRE_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "QUIRE_RATE_LIMIT": "100000/minute",
        **env,
    }
