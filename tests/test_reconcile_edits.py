"""Nothing stuck in the author's loop: an edit cancelled records its own end, one terminated is
settled by the reconciler, one recorded but never started is started; the API killed -9 between a
plan version's commit and its Update, and the review goes on (the version delivered again).

The reconciler's stack and the helpers are tests/reconcile_kit.py's; jobs and workflows:
tests/test_reconcile.py.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import testkit
from db.loop import PlanVersion
from services import loop
from tests.reconcile_kit import (
    GRACE_S,
    SETTLES_WITHIN_S,
    a_section,
    api_env,
    awaiting_review,
    events,
    settles,
    status_is,
    succeeded_job,
    the_edit,
)

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
