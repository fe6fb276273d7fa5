"""Nothing stuck: each way Postgres and Temporal came to disagree over a job or a workflow, made
for real, and settled by the reconciler on its Temporal Schedule within one period, with its audit
event; cancel and resume that act on a job whose workflow is gone; a cancel during the failure path
that waits for it; a commit that fails after it landed, written once.

The reconciler's stack (its own database, worker and API, on a task queue of its own) and the
helpers are tests/reconcile_kit.py's. Edits and a plan review: tests/test_reconcile_edits.py;
``quire doctor``: tests/test_doctor.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.api.enums.v1 import PendingActivityState

import testkit
from core.spec import JobSpec
from db.loop import PlanVersion
from db.models import Document
from db.session import Database
from services import jobs
from tests.helpers import temporal_cli
from tests.reconcile_kit import (
    QUEUE,
    SETTLES_WITHIN_S,
    awaiting_review,
    chunks_done,
    events,
    job,
    reconciler_paused,
    settled,
    settles,
    status_is,
    submit,
)
from workflows.steps import Durability

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
