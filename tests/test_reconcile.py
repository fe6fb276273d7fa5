"""Nothing stuck: each way Postgres and Temporal came to disagree, made for real, and settled by the
reconciler on its Temporal Schedule within one period, with its audit event; ``quire doctor
--dry-run`` listing exactly those; cancel and resume that act on a job whose workflow is gone;
cancelled workflows that record their own end; the API killed -9 between a plan version's commit
and its Update; a commit that fails after it landed, written once.

A database, a worker (with the reconciler) and an API of their own, on a task queue of their own:
the reconciler settles every row of its database and every workflow of its task queue, so the
rows and workflows other tests leave on purpose stay theirs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.api.enums.v1 import PendingActivityState

import testkit
from core.spec import JobSpec
from db.loop import Edit, PlanVersion
from db.manuscript import PlanNode
from db.models import AuditEvent, Document, Job
from db.session import Database
from metrics import SETTLED
from services import accounts, jobs, loop
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
from tests.helpers import temporal_cli
from worker import build_worker
from workflows.steps import Durability

QUEUE = "quire-reconcile"
PERIOD_S = 3.0  # the reconciler's period here (QUIRE_RECONCILE_EVERY_S; 60 s by default)
GRACE_S = 1.0  # QUIRE_RECONCILE_GRACE_S (60 s by default)
# One period, and the reconciler's own run (a workflow task, an activity, a few RPCs and
# transactions) on a loaded 2-core machine.
SETTLES_WITHIN_S = PERIOD_S + 20.0
STARTS = Starts(QUEUE, Durability(retry_max_s=0.2), WEBHOOK_RETRY, False)


@pytest.fixture(scope="module")
def rec_url(pg_server) -> str:  # type: ignore[no-untyped-def]
    return testkit.create_database(pg_server, f"rec_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
async def rdb(rec_url: str) -> AsyncIterator[Database]:
    database = Database(rec_url, secrets=[TEST_SECRET, SEALING_KEY], signer=AUDIT_KEY, checkpoint_every=200)
    yield database
    await database.dispose()


@pytest.fixture(scope="module")
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


# -- one commit, one record ----------------------------------------------------------------------------


async def test_a_commit_that_fails_after_it_landed_writes_each_event_once(rdb, ruser, monkeypatch) -> None:
    job_id = await testkit.make_job(rdb, ruser.user_id)
    real, real_landed = AsyncSession.commit, Database.landed
    mode = {"landed": True}

    async def ambiguous(self: AsyncSession) -> None:
        if mode["landed"]:
            await real(self)  # it commits, then the connection is lost before the answer
        raise sa_exc.OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    def seqs() -> Callable[[], Awaitable[list[tuple[int, str, str, bool]]]]:
        async def read() -> list[tuple[int, str, str, bool]]:
            async with rdb.tx() as s:
                got = await s.execute(
                    text(
                        "SELECT seq, kind, action, data ? 'rolled_back' FROM audit_events WHERE job_id=:j ORDER BY seq"
                    ),
                    {"j": job_id},
                )
                return [tuple(r) for r in got]

        return read

    before = await seqs()()
    monkeypatch.setattr(AsyncSession, "commit", ambiguous)
    async with rdb.job_tx(job_id) as tx:  # no error: it landed, and job_tx read that it did
        tx.event("user", "landed-once", {"n": 1})
    monkeypatch.setattr(AsyncSession, "commit", real)
    after = await seqs()()
    new = after[len(before) :]
    assert [e for e in new if e[1] == "user"] == [(tx.last_seq, "user", "landed-once", False)]
    assert not any(e[3] for e in new)  # nothing written again as rolled back

    # It did not land: the error reaches the caller, and its record is written once, marked.
    mode["landed"] = False
    monkeypatch.setattr(AsyncSession, "commit", ambiguous)
    with pytest.raises(sa_exc.OperationalError):
        async with rdb.job_tx(job_id) as tx:
            tx.event("user", "lost", {"n": 2})
    monkeypatch.setattr(AsyncSession, "commit", real)
    new = (await seqs()())[len(after) :]
    assert [(k, a, rb) for _, k, a, rb in new if k == "user"] == [("user", "lost", True)]
    assert [(k, a) for _, k, a, _ in new if k == "error"] == [("error", "rollback")]

    # Whether it landed could not be read (the database gone a moment): the record is kept, and
    # read again before the job is next written: it had landed, so nothing is written for it.
    mode["landed"] = True
    mark = len(await seqs()())
    monkeypatch.setattr(AsyncSession, "commit", ambiguous)
    monkeypatch.setattr(Database, "landed", _unreachable)
    with pytest.raises(sa_exc.OperationalError):
        async with rdb.job_tx(job_id) as tx:
            tx.event("user", "unknown", {"n": 3})
    monkeypatch.setattr(AsyncSession, "commit", real)
    monkeypatch.setattr(Database, "landed", real_landed)
    assert len(rdb.pending) == 1
    async with rdb.job_tx(job_id) as tx:
        tx.event("user", "next", {"n": 4})
    assert rdb.pending == []
    new = (await seqs()())[mark:]
    assert [(a, rb) for _, k, a, rb in new if k == "user"] == [("unknown", False), ("next", False)]
    assert not [e for e in new if e[1] == "error"]
    async with rdb.tx() as s:  # a row with no workflow: the reconciler would start it
        await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job_id})


async def _unreachable(self: Database, job_id: uuid.UUID, written: tuple[int, str]) -> bool:
    raise ConnectionError("the database is not answering")


# -- a job ---------------------------------------------------------------------------------------


async def test_a_job_whose_workflow_is_terminated_is_failed_within_a_period_its_work_kept(
    api, rdb, rclient, fake
) -> None:
    fake.reset(delay_s=0.4)  # a job in flight long enough to be terminated mid-way
    job_id = await submit(api, 1600, chunk_words=200)
    await testkit.until("two chunks written", chunks_done(rdb, job_id, 2))
    before = settled("job", "job_failed", "reconciler")
    # As an operator would: the job's workflow ends in Temporal, and no code of it runs.
    await temporal_cli(rclient, "workflow", "terminate", "-w", f"job-{job_id}", "--reason", "operator says stop")
    took = await settles("the job failed by the reconciler", status_is(rdb, job_id, "failed"))
    row = await job(rdb, job_id)
    assert row.error_code == "E_INTERNAL"
    assert f"job-{job_id} was terminated" in row.failure_reason and "operator says stop" in row.failure_reason
    async with rdb.tx() as s:
        partial = await s.scalar(select(Document).where(Document.job_id == job_id, Document.role == "partial"))
    assert partial is not None and partial.word_count > 0  # what it wrote is kept
    (ev,) = await events(rdb, job_id, "reconcile", "job_failed")
    assert ev.data["by"] == "reconciler" and ev.data["temporal"] == "terminated"

    async def counted() -> bool:  # the count follows the commit
        return settled("job", "job_failed", "reconciler") > before

    await testkit.until("the settlement counted", counted)
    assert settled("job", "job_failed", "reconciler") == before + 1
    assert took <= SETTLES_WITHIN_S
    # Failed now: resume acts as for any failed job (a new run).
    fake.reset()
    r = await api.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 202 and r.json()["workflow_id"] == f"job-{job_id}-r2", r.text
    await testkit.until("the resumed job to succeed", status_is(rdb, job_id, "succeeded"), within=120)


async def test_a_job_recorded_but_never_started_is_started(api, rdb, rclient, ruser, fake) -> None:
    fake.reset()
    # The first write alone (the API stopped before its Temporal call): the job queued, no workflow.
    spec = JobSpec(kind="generate", prompt="Tide tables", target_words=300)
    row = await jobs.create(rdb, user_id=ruser.user_id, user_name=ruser.name, spec=spec, default_model="fake-model")

    async def started() -> bool:  # its workflow started, and the start noted
        return bool(await events(rdb, row.id, "reconcile", "job_started"))

    await settles("the reconciler to start it", started)
    (ev,) = await events(rdb, row.id, "reconcile", "job_started")
    assert ev.data["workflow_id"] == f"job-{row.id}" and ev.data["by"] == "reconciler"
    await testkit.until("the job to succeed", status_is(rdb, row.id, "succeeded"), within=120)
    # Started once: the start is idempotent (its id is the row's), and a second start is refused.
    assert not await jobs.start_workflow(rclient, row, ruser.name, QUEUE, Durability())


async def test_a_provider_error_with_a_nul_ends_the_job_failed_with_a_readable_reason(api, rdb, fake) -> None:
    fake.reset(mode="down_nul")
    job_id = await submit(api, 300)
    await testkit.until("the job to end", status_is(rdb, job_id, "failed", "succeeded"), within=SETTLES_WITHIN_S + 120)
    row = await job(rdb, job_id)
    assert row.status == "failed" and row.failure_reason, (row.status, row.failure_reason)
    assert "exploded" in row.failure_reason and "\x00" not in row.failure_reason
    # Whoever recorded it, it is in the log once: the job's own failure path, or, when that path
    # could not store the text (its step failed for good and the workflow ended without it), the
    # reconciler, from the reason the workflow's failure carries.
    assert len(await events(rdb, job_id, "job", "failed")) == 1
    could_not = [e for e in await events(rdb, job_id, "activity", "error") if e.data.get("activity") == "fail_job"]
    settled_here = await events(rdb, job_id, "reconcile", "job_failed")
    assert len(settled_here) == (1 if could_not else 0), (len(could_not), settled_here)
    if settled_here:
        assert settled_here[0].data["temporal"] == "failed" and "\x00" not in settled_here[0].data["reason"]


async def awaiting_review(api: httpx.AsyncClient, words: int = 600) -> uuid.UUID:
    """A job waiting for its plan's review: its workflow open, no step of it running."""
    job_id = await submit(api, words, review_plan=True)

    async def awaiting() -> bool:
        return bool((await api.get(f"/v1/jobs/{job_id}/plan")).json()["awaiting_review"])

    await testkit.until("the plan to await its review", awaiting, within=60)
    return job_id


async def test_a_workflow_open_for_a_deleted_job_is_terminated(api, rdb, rclient, fake) -> None:
    fake.reset()
    job_id = await awaiting_review(api)
    before = settled("workflow", "workflow_terminated", "reconciler")
    async with rdb.tx() as s:  # its rows gone while its workflow waits on (a restore, a hand's DELETE)
        await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job_id})

    async def closed() -> bool:  # terminated, and counted (the count follows the termination)
        desc = await rclient.get_workflow_handle(f"job-{job_id}").describe()
        return desc.status.name == "TERMINATED" and settled("workflow", "workflow_terminated", "reconciler") > before

    await settles("the workflow terminated", closed)
    assert settled("workflow", "workflow_terminated", "reconciler") == before + 1


async def test_a_workflow_open_for_a_job_that_ended_is_terminated_once_the_grace_is_over(
    api, rdb, rclient, fake
) -> None:
    fake.reset()
    job_id = await awaiting_review(api)
    async with rdb.tx() as s:  # the row ended (a hand's UPDATE, a restore) while its workflow waits on
        await s.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', error_code = 'E_CANCELLED', failure_reason = 'by hand', "
                "completed_at = now() WHERE id = :j"
            ),
            {"j": job_id},
        )
        # and a review proposed to it, which no run of the job will take now
        await s.execute(
            text(
                "INSERT INTO plan_versions (job_id, version, status, outline, changes, user_name, workflow_id) "
                "VALUES (:j, 2, 'proposed', '[]', '[]', 'someone', :w)"
            ),
            {"j": job_id, "w": f"job-{job_id}"},
        )

    async def closed() -> bool:
        desc = await rclient.get_workflow_handle(f"job-{job_id}").describe()
        done = await events(rdb, job_id, "reconcile")
        return desc.status.name != "RUNNING" and {"workflow_terminated", "review_rejected"} <= {e.action for e in done}

    await settles("the workflow terminated", closed)
    desc = await rclient.get_workflow_handle(f"job-{job_id}").describe()
    assert desc.status.name == "TERMINATED"
    (ev,) = await events(rdb, job_id, "reconcile", "workflow_terminated")
    assert ev.data["why"] == "a job's run open for a job that is cancelled"
    assert (await job(rdb, job_id)).status == "cancelled"  # the row as it was: only the workflow went
    async with rdb.tx() as s:
        pv = await s.scalar(select(PlanVersion).where(PlanVersion.job_id == job_id, PlanVersion.version == 2))
    assert pv.status == "rejected" and "job is cancelled" in pv.reason


# -- cancel and resume act -------------------------------------------------------------------------


async def test_cancel_of_a_job_whose_workflow_ended_settles_it_at_once(api, rdb, rclient, fake) -> None:
    fake.reset(delay_s=0.4)
    job_id = await submit(api, 1600, chunk_words=200)
    await testkit.until("a chunk written", chunks_done(rdb, job_id, 1))
    async with reconciler_paused(rclient):
        await rclient.get_workflow_handle(f"job-{job_id}").terminate("gone")
        r = await api.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
        row = await job(rdb, job_id)
        assert (row.status, row.error_code) == ("cancelled", "E_CANCELLED")
        assert "was terminated" in row.failure_reason
        (ev,) = await events(rdb, job_id, "reconcile", "job_cancelled")
        assert ev.data["by"] == "cancel"
        assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status_code == 409


async def test_resume_of_a_running_job_whose_workflow_is_gone_settles_it_and_starts_a_new_run(
    api, rdb, rclient, fake
) -> None:
    fake.reset(delay_s=0.3)
    job_id = await submit(api, 1200, chunk_words=200)
    await testkit.until("a chunk written", chunks_done(rdb, job_id, 1))
    async with reconciler_paused(rclient):
        await rclient.get_workflow_handle(f"job-{job_id}").terminate("gone")
        fake.reset()
        r = await api.post(f"/v1/jobs/{job_id}/resume")
        assert r.status_code == 202 and r.json()["workflow_id"] == f"job-{job_id}-r2", r.text
        (ev,) = await events(rdb, job_id, "reconcile", "job_failed")
        assert ev.data["by"] == "resume"
    await testkit.until("the resumed job to succeed", status_is(rdb, job_id, "succeeded"), within=120)


async def test_a_cancel_during_the_failure_path_waits_for_it(api, rdb, rclient, fake) -> None:
    """The job fails (the model is down) and its failure step is held up (its partial document's
    row is being inserted by another transaction, here); a cancel arrives meanwhile. Shielded, the
    step is not cancelled with the workflow: the job ends failed, with its reason, by its own code,
    instead of staying `running`."""
    fake.reset(mode="down")
    job_id = await submit(api, 300)
    async with rdb.sessions() as s:
        await s.begin()
        await s.execute(
            text(
                "INSERT INTO documents (job_id, role, version, text, sha256, word_count) "
                "VALUES (:j, 'partial', 1, '', '', 0)"
            ),
            {"j": job_id},
        )

        async def failing() -> bool:  # the failure step is in flight, waiting on that row
            desc = await rclient.get_workflow_handle(f"job-{job_id}").describe()
            return any(a.activity_type.name == "fail_job" for a in desc.raw_description.pending_activities)

        await testkit.until("the failure step to start", failing, within=120)
        handle = rclient.get_workflow_handle(f"job-{job_id}")
        # The cancel reaches Temporal at once; its record in the log waits for the job row, which
        # the failure step holds while it waits here: so the row is let go once the cancel is in.
        cancelling = asyncio.create_task(handle.cancel())

        async def delivered() -> bool:
            history = await handle.fetch_history()
            return any(e.HasField("workflow_execution_cancel_requested_event_attributes") for e in history.events)

        await testkit.until("the cancel delivered", delivered)

        async def taken() -> bool:  # the workflow has run its code on the cancel
            history = (await handle.fetch_history()).events
            cancel = "workflow_execution_cancel_requested_event_attributes"
            asked = next(i for i, e in enumerate(history) if e.HasField(cancel))
            return any(e.HasField("workflow_task_completed_event_attributes") for e in history[asked:])

        await testkit.until("the cancel taken by the workflow", taken)
        desc = await handle.describe()
        (pending,) = [a for a in desc.raw_description.pending_activities if a.activity_type.name == "fail_job"]
        # Shielded: the step is not asked to cancel with its workflow (unshielded, it is, and a
        # step cancelled while it waits leaves the job `running`).
        assert pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED
        await s.rollback()  # the row it waits on is let go: it goes on
        await cancelling
    await testkit.until("the job to end", status_is(rdb, job_id, "failed", "cancelled"), within=60)
    row = await job(rdb, job_id)
    assert row.status == "failed" and row.error_code == "E_LLM_UNAVAILABLE", (row.status, row.failure_reason)
    assert not await events(rdb, job_id, "reconcile")  # ended by its own workflow


# -- edits ---------------------------------------------------------------------------------------


async def test_an_edit_cancelled_records_its_end_and_one_terminated_is_settled(api, rdb, rclient, fake) -> None:
    fake.reset()
    job_id = await succeeded_job(api, rdb)
    node = await a_section(rdb, job_id)
    fake.reset(delay_s=2.0)  # an edit long enough to act on while it runs
    r = await api.post(f"/v1/jobs/{job_id}/nodes/{node}/regenerate", json={})
    assert r.status_code == 202, r.text
    await rclient.get_workflow_handle(f"job-{job_id}-e1").cancel()

    def ended(number: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await the_edit(rdb, job_id, number)).status != "running"

        return check

    await testkit.until("the cancelled edit to end", ended(1), within=60)
    one = await the_edit(rdb, job_id, 1)
    assert (one.status, one.error_code) == ("failed", "E_CANCELLED")  # by its own workflow, shielded
    assert not await events(rdb, job_id, "reconcile")

    r = await api.post(f"/v1/jobs/{job_id}/nodes/{node}/regenerate", json={})  # not refused: nothing runs
    assert r.status_code == 202, r.text
    await rclient.get_workflow_handle(f"job-{job_id}-e2").terminate("operator")
    await settles("the terminated edit failed by the reconciler", ended(2))
    two = await the_edit(rdb, job_id, 2)
    assert two.status == "failed" and "was terminated" in two.reason
    (ev,) = await events(rdb, job_id, "reconcile", "edit_failed")
    assert ev.data["edit"] == 2 and ev.data["by"] == "reconciler"
    fake.reset()
    r = await api.post(f"/v1/jobs/{job_id}/nodes/{node}/regenerate", json={})
    assert r.status_code == 202, r.text  # every later edit is accepted again


async def test_an_edit_recorded_but_never_started_is_started(api, rdb, fake, monkeypatch) -> None:
    fake.reset()
    job_id = await succeeded_job(api, rdb)
    node = await a_section(rdb, job_id)
    real = loop.start_edit_workflow

    async def lost(*a: Any, **kw: Any) -> bool:  # the API stops between the edit's commit and its start
        monkeypatch.setattr(loop, "start_edit_workflow", real)
        raise RuntimeError("the API stopped here")

    monkeypatch.setattr(loop, "start_edit_workflow", lost)
    r = await api.post(f"/v1/jobs/{job_id}/nodes/{node}/regenerate", json={})
    assert r.status_code == 500
    assert (await the_edit(rdb, job_id, 1)).status == "running"

    async def done() -> bool:
        started = await events(rdb, job_id, "reconcile", "edit_started")
        return (await the_edit(rdb, job_id, 1)).status == "done" and bool(started)

    await testkit.until("the edit started by the reconciler and done", done, within=SETTLES_WITHIN_S + 60)
    (ev,) = await events(rdb, job_id, "reconcile", "edit_started")
    assert ev.data["workflow_id"] == f"job-{job_id}-e1"


# -- a plan review: the API killed between the version's commit and its Update ------------------------


def api_env(rec_url: str, temporal: str, namespace: str, home: str, **env: str) -> dict[str, str]:
    """The settings of an API process of this module's database and task queue."""
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


async def test_the_api_killed_between_a_plan_versions_commit_and_its_update_then_the_review_goes_on(
    api, rdb, rclient, ruser, rec_url, temporal_env, tmp_path, fake
) -> None:
    fake.reset()
    job_id = await awaiting_review(api)
    port = testkit.free_port()
    env = api_env(rec_url, testkit.target(temporal_env), temporal_env.client.namespace, str(tmp_path))
    proc = testkit.api_process(port, {**env, "QUIRE_FAULT": "review"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as other:

            async def up() -> bool:
                try:
                    return (await other.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await testkit.until("the API process up", up, within=60)
            with pytest.raises(httpx.HTTPError):  # it dies between the commit and the Update
                await other.post(
                    f"/v1/jobs/{job_id}/plan", json={}, headers={"Authorization": f"Bearer {ruser.api_key}"}
                )
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    async with rdb.tx() as s:
        pv = await s.scalar(select(PlanVersion).where(PlanVersion.job_id == job_id, PlanVersion.version == 2))
    assert pv is not None and pv.status == "proposed" and pv.workflow_id == f"job-{job_id}"

    async def applied() -> bool:  # and its delivery noted (the note follows the delivery)
        async with rdb.tx() as s:
            got = await s.scalar(
                select(PlanVersion.status).where(PlanVersion.job_id == job_id, PlanVersion.version == 2)
            )
        return got == "approved" and bool(await events(rdb, job_id, "reconcile", "update_delivered"))

    await testkit.until("the version delivered again and applied", applied, within=GRACE_S + SETTLES_WITHIN_S)
    (ev,) = await events(rdb, job_id, "reconcile", "update_delivered")
    assert ev.data["update_id"] == "plan-v2"
    await testkit.until("the job to succeed", status_is(rdb, job_id, "succeeded"), within=120)
    assert len(await events(rdb, job_id, "plan", "reviewed")) == 1  # applied once


# -- quire doctor ----------------------------------------------------------------------------------


def doctor(rec_url: str, temporal_env: Any, home: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QUIRE_", "DATABASE_URL", "TEMPORAL_"))}
    target, namespace = testkit.target(temporal_env), temporal_env.client.namespace
    env = {**base, **api_env(rec_url, target, namespace, home, QUIRE_RECONCILE_GRACE_S=str(GRACE_S))}
    cmd = [sys.executable, "-m", "quire.cli", "doctor", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


async def test_doctor_dry_run_lists_exactly_the_stuck_states_then_doctor_settles_them(
    api, rdb, rclient, ruser, rec_url, temporal_env, tmp_path, fake
) -> None:
    fake.reset()
    done = await succeeded_job(api, rdb)
    node = await a_section(rdb, done)
    fake.reset(delay_s=0.4)
    async with reconciler_paused(rclient):
        clean = await asyncio.to_thread(doctor, rec_url, temporal_env, str(tmp_path), "--dry-run")
        assert clean.returncode == 0 and "nothing disagrees" in clean.stdout, clean.stdout + clean.stderr
        # 1. a job whose workflow was terminated
        terminated = await submit(api, 1600, chunk_words=200)
        await testkit.until("a chunk written", chunks_done(rdb, terminated, 1))
        await rclient.get_workflow_handle(f"job-{terminated}").terminate("gone")
        # 2. a job recorded, never started
        spec = JobSpec(kind="generate", prompt="Tides", target_words=300)
        unstarted = await jobs.create(
            rdb, user_id=ruser.user_id, user_name=ruser.name, spec=spec, default_model="fake-model"
        )
        # 3. an edit whose workflow was terminated
        r = await api.post(f"/v1/jobs/{done}/nodes/{node}/regenerate", json={})
        assert r.status_code == 202, r.text
        await rclient.get_workflow_handle(f"job-{done}-e1").terminate("gone")
        # 4. a workflow open for a job deleted under it
        orphan = await awaiting_review(api)
        async with rdb.tx() as s:
            await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": orphan})

        dry = await asyncio.to_thread(doctor, rec_url, temporal_env, str(tmp_path), "--dry-run")
        assert dry.returncode == 1, dry.stdout + dry.stderr
        lines = [ln for ln in dry.stdout.splitlines() if ln.endswith("[dry run: not settled]")]
        assert sorted(lines) == sorted(
            [
                f"job {terminated}: job says it runs; its workflow job-{terminated} was terminated -> job_failed "
                "[dry run: not settled]",
                f"job {unstarted.id}: job says it runs; its workflow job-{unstarted.id} never started -> job_started "
                "[dry run: not settled]",
                f"edit {done}: edit says it runs; its workflow job-{done}-e1 was terminated -> edit_failed "
                "[dry run: not settled]",
                f"workflow {orphan}: a job's run open for a job that is deleted -> workflow_terminated "
                "[dry run: not settled]",
            ]
        ), dry.stdout
        assert (await job(rdb, terminated)).status == "running"  # a dry run changes nothing

        fixed = await asyncio.to_thread(doctor, rec_url, temporal_env, str(tmp_path))
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert fixed.stdout.count("[settled]") == 4, fixed.stdout
        assert (await job(rdb, terminated)).status == "failed"
        assert (await the_edit(rdb, done, 1)).status == "failed"
        assert (await job(rdb, unstarted.id)).status in ("running", "succeeded")
        for jid, action in ((terminated, "job_failed"), (unstarted.id, "job_started"), (done, "edit_failed")):
            (ev,) = await events(rdb, jid, "reconcile", action)
            assert ev.data["by"] == "doctor"
        after = await asyncio.to_thread(doctor, rec_url, temporal_env, str(tmp_path), "--dry-run")
        assert after.returncode == 0 and "nothing disagrees" in after.stdout, after.stdout
