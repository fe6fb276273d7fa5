"""Jobs that outlive deploys, and users who share the model (services.deploys): two worker versions
side by side, a job pinned to the version it started on, the old version drained; and a small job of
one user served while another user's large job fills every model slot."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus as Status
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import testkit
from db.session import Database
from services import accounts
from services.deploys import promote, version, version_status
from services.temporal import WORKER_IDENTITY
from tests.conftest import make_llm
from tests.fake_llm import FakeLLM
from tests.helpers import builds_of
from worker import build_worker

# A drained version is seen as drained within seconds (the server checks every 3 minutes by default).
DRAINAGE = [
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
]


@pytest.fixture(scope="module")
async def deploy_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await testkit.temporal(DRAINAGE)
    yield env
    await env.shutdown()


@pytest.fixture(scope="module")
async def deploy_client(deploy_env: WorkflowEnvironment, db: Database) -> Client:
    return await testkit.client(deploy_env, db)


async def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.tx() as s:
        return list((await s.execute(text(sql), params)).all())


async def test_a_job_started_on_the_old_version_finishes_there_while_new_jobs_start_on_the_new(
    db, deploy_client, fake, user
):
    fake.reset(ratio=(1.0, 1.1), delay_s=0.15)
    queue = f"ver-{uuid.uuid4().hex[:6]}"
    v1, v2 = version(queue, "v1"), version(queue, "v2")
    # Two ways to the same scripted model: each model call's row says which worker made it.
    url1, url2 = fake.url, fake.url.replace("127.0.0.1", "localhost")
    llm1, llm2 = make_llm(db, fake), make_llm(db, fake, base_url=url2)
    async with AsyncExitStack() as old:
        await old.enter_async_context(build_worker(deploy_client, db, llm1, queue, deployment=v1))
        assert await promote(deploy_client, v1, WORKER_IDENTITY)
        first = await testkit.submit(db, deploy_client, queue, 1500, options={"chunk_words": 300}, user=user)

        async def started() -> bool:
            done = await rows(db, "SELECT count(*) FROM chunks WHERE job_id=:j AND status='done'", j=first.id)
            return done[0][0] > 0

        await testkit.until("the first job's first chunk", started)
        # The next release's worker starts beside the old one and becomes current.
        async with build_worker(deploy_client, db, llm2, queue, deployment=v2):
            assert await promote(deploy_client, v2, WORKER_IDENTITY)
            assert await version_status(deploy_client, v1) == Status.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINING
            # The old release's worker restarting (a crash, the old image redeployed) does not take over again.
            assert not await promote(deploy_client, v1, WORKER_IDENTITY)
            assert await version_status(deploy_client, v2) == Status.WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT
            second = await testkit.submit(db, deploy_client, queue, 300, user=user)
            for job in (first, second):
                assert await deploy_client.get_workflow_handle(job.workflow_id).result() == "succeeded"

            # The first job ran on v1 from start to end, its model calls made by v1's worker; the second on v2.
            assert await builds_of(deploy_client, first.id) == {"v1"}
            assert await builds_of(deploy_client, second.id) == {"v2"}
            calls = await rows(
                db, "SELECT job_id, base_url FROM llm_calls WHERE job_id IN (:a, :b)", a=first.id, b=second.id
            )
            assert {u for j, u in calls if j == first.id} == {url1}
            assert {u for j, u in calls if j == second.id} == {url2}

            # Draining for the deploy: once nothing is pinned to v1 the server says so, and its workers go.
            async def drained() -> bool:
                return await version_status(deploy_client, v1) == Status.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINED

            await testkit.until("v1 drained", drained, within=60)
            await old.aclose()
            third = await testkit.submit(db, deploy_client, queue, 300, user=user)
            assert await deploy_client.get_workflow_handle(third.workflow_id).result() == "succeeded"
            assert await builds_of(deploy_client, third.id) == {"v2"}
    await llm1.close()
    await llm2.close()


async def small_job_wait(client: Client, db: Database, fake: FakeLLM) -> tuple[int, float]:
    """One user's 120,000-word job writes 16 chapters at once on a worker with 2 model slots (a
    backlog of about 14 model steps at any time); once it is under way, another user submits
    2,000 words. Returns how many model calls of the large job started between that submit and
    the small job's first chunk call, and the seconds it waited."""
    fake.reset(ratio=(1.0, 1.1), delay_s=0.05)
    queue = f"fair-{uuid.uuid4().hex[:6]}"
    heavy = await accounts.create_user(db, f"heavy-{uuid.uuid4().hex[:6]}")
    light = await accounts.create_user(db, f"light-{uuid.uuid4().hex[:6]}")
    llm = make_llm(db, fake)
    async with build_worker(client, db, llm, queue, llm_concurrency=2):
        large = await testkit.submit(
            db, client, queue, 120_000, prompt="Lighthouses", options={"parallelism": 16}, user=heavy
        )

        async def backlogged() -> bool:  # the plan and a few chapters' plans done: the rest queue up
            return len(await rows(db, "SELECT 1 FROM llm_calls WHERE job_id=:j", j=large.id)) >= 6

        await testkit.until("the large job under way", backlogged)
        t0 = time.monotonic()
        small = await testkit.submit(db, client, queue, 2000, prompt="Orchards", user=light)

        async def writing() -> bool:
            return bool(await rows(db, "SELECT 1 FROM llm_calls WHERE job_id=:j AND purpose='write'", j=small.id))

        await testkit.until("the small job's first chunk", writing, within=120)
        waited = time.monotonic() - t0
        between = await rows(
            db,
            "SELECT count(*) FROM llm_calls l WHERE l.job_id = :large AND l.started_at > "
            "(SELECT created_at FROM jobs WHERE id = :small) AND l.started_at < "
            "(SELECT min(started_at) FROM llm_calls WHERE job_id = :small AND purpose = 'write')",
            large=large.id,
            small=small.id,
        )
        for job in (large, small):
            await client.get_workflow_handle(job.workflow_id).cancel()
        for job in (large, small):
            await testkit.until("cancelled", lambda job=job: _ended(client, job.workflow_id))
    await llm.close()
    return int(between[0][0]), waited


async def _ended(client: Client, wid: str) -> bool:
    return (await client.get_workflow_handle(wid).describe()).close_time is not None


async def test_a_small_job_is_served_while_another_users_large_job_fills_every_model_slot(db, client, fake):
    between, waited = await small_job_wait(client, db, fake)
    # Its three model steps (plan, chapter plan, first chunk) each waited for a slot to free, not for
    # the backlog: a few of the large job's calls at most (2 slots, one more call per step at worst).
    assert between <= 12, f"{between} calls of the large job went first ({waited:.1f} s)"


async def test_without_fairness_the_small_job_waits_behind_the_backlog(db):
    """The bound above can fail: on a server with fairness off, the same small job waits behind the
    large job's whole backlog at each of its steps, first come, first served."""
    env = await testkit.temporal(["--dynamic-config-value", "matching.enableFairness=false"])
    fake = FakeLLM().start()
    try:
        between, waited = await small_job_wait(await testkit.client(env, db), db, fake)
    finally:
        fake.stop()
        await env.shutdown()
    assert between > 25, f"only {between} calls of the large job went first ({waited:.1f} s)"
