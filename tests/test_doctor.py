"""``quire doctor``: with the reconciler's Schedule paused, ``--dry-run`` lists exactly the stuck
states made (a job's workflow terminated, a job never started, an edit's workflow terminated, a
workflow open for a deleted job) and changes nothing; without it, doctor settles each, with its
audit event.

The reconciler's stack and the helpers are tests/reconcile_kit.py's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from sqlalchemy import text

import testkit
from core.spec import JobSpec
from services import jobs
from tests.reconcile_kit import (
    GRACE_S,
    a_section,
    api_env,
    awaiting_review,
    chunks_done,
    events,
    job,
    reconciler_paused,
    submit,
    succeeded_job,
    the_edit,
)


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
