"""Cancel racing finalize never leaves a cancelled job with an output (nor serves one), nor a
succeeded one marked cancelled: a hundred races between the real finalize step and the real cancel
step, each side a few ms ahead in turn."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.base import now
from activities.contracts import FailInput, RoundRef
from activities.finalize import FinalizeActivities
from core.spec import JobSpec
from core.text import sha256
from db.manuscript import Chunk, ChunkVersion, CoherenceState, PlanNode
from db.models import Job
from db.session import Database
from services import accounts, jobs
from tests.fake_llm import WORDS
from tests.helpers import assert_log_whole, output, rows

pytestmark = pytest.mark.usefixtures("worker")


RACES = 100  # the issue asks for a hundred races
SPEC = JobSpec(kind="generate", prompt="Small lamps", target_words=40)


async def written_job(db: Database, user: accounts.NewUser) -> uuid.UUID:
    """A small job at the point where finalize succeeds: created as the API creates it, then, in one
    audited transaction, what plan_job and write_chunk leave for a one-chunk document (running; the
    book as its one unit and section; the chain's root; the chunk done as version 1 and the state it
    leaves). Built here rather than by the model steps: it takes well under a second, and the race
    below is between the real finalize and the real cancel step all the same."""
    job = await jobs.create(db, user_id=user.user_id, user_name=user.name, spec=SPEC, default_model="m")
    text_ = " ".join(WORDS[i % len(WORDS)] for i in range(42)) + "."
    async with db.job_tx(job.id) as tx:
        row = await tx.session.get(Job, job.id)
        assert row is not None
        row.status, row.started_at, row.chunks_total, row.sections_total, row.units_total = "running", now(), 1, 1, 1
        book = PlanNode(job_id=job.id, level="book", depth=0, ordinal=0, position=0, budget_words=40, status="writing")
        tx.session.add(book)
        await tx.session.flush()
        section = PlanNode(
            job_id=job.id, parent_id=book.id, level="section", ordinal=0, position=1, title="Lamps",
            heading_key="lamps", budget_words=40, status="expanded",
        )  # fmt: skip
        root = CoherenceState(job_id=job.id, kind="root", ordinal=0, unit_id=None)
        tx.session.add_all([section, root])
        await tx.session.flush()
        chunk = Chunk(
            job_id=job.id, section_id=section.id, unit_id=book.id, ordinal=0, index_in_section=0,
            target_words=40, min_words=40, max_words=44, status="writing", state_before_id=root.id,
            text=text_, word_count=42, attempts=1,
        )  # fmt: skip
        tx.session.add(chunk)
        await tx.session.flush()
        version = ChunkVersion(
            job_id=job.id, chunk_id=chunk.id, version=1, reason="written", text=text_, word_count=42,
            sha256=sha256(text_),
        )  # fmt: skip
        tx.session.add(version)
        await tx.session.flush()
        after = CoherenceState(job_id=job.id, kind="chunk", ordinal=1, parent_id=root.id, chunk_version_id=version.id)
        tx.session.add(after)
        await tx.session.flush()
        chunk.state_after_id, chunk.status = after.id, "done"
    return job.id


async def test_cancel_racing_finalize_never_serves_a_cancelled_job_nor_cancels_a_succeeded_one(db, user, api_url):
    """A hundred small jobs, each written to the point where finalize succeeds; then finalize and
    the cancel path's step (fail_job with status cancelled: what the job workflow runs once its
    cancel arrives) run at the same moment, ten jobs at a time, one side or the other a few ms
    ahead. Never a cancelled job with an output (nor one served), never a succeeded job marked
    cancelled; and each side won some of the races."""
    fin = FinalizeActivities(db)
    rng = random.Random(12)

    async def race(jid: uuid.UUID) -> None:
        cancel = FailInput(str(jid), "E_CANCELLED", "cancelled by request", status="cancelled")
        lead = rng.uniform(0, 0.004)
        first, second = (lead, 0.0) if rng.random() < 0.5 else (0.0, lead)

        async def late(delay: float, step: Any, arg: Any) -> Any:
            await asyncio.sleep(delay)
            return await ActivityEnvironment().run(step, arg)

        await asyncio.gather(late(first, fin.finalize, RoundRef(str(jid), 0)), late(second, fin.fail_job, cancel))

    ready: list[uuid.UUID] = []
    for _ in range(RACES // 10):
        batch = list(await asyncio.gather(*(written_job(db, user) for _ in range(10))))
        await asyncio.gather(*(race(j) for j in batch))
        ready += batch
    outcomes: dict[str, int] = {"succeeded": 0, "cancelled": 0}
    auth = {"Authorization": f"Bearer {user.api_key}"}
    async with httpx.AsyncClient(base_url=api_url, headers=auth, timeout=30) as http:
        for jid in ready:
            job = (await rows(db, "SELECT status, error_code FROM jobs WHERE id=:j", j=jid))[0]
            out = await output(db, jid)
            said = {
                r.action
                for r in await rows(db, "SELECT action FROM audit_events WHERE job_id=:j AND kind='job'", j=jid)
            }
            if job.status == "succeeded":
                assert out is not None and "cancelled" not in said, jid
            else:
                assert (job.status, job.error_code) == ("cancelled", "E_CANCELLED"), job
                assert out is None and "succeeded" not in said, jid
                assert (await http.get(f"/v1/jobs/{jid}/output")).status_code == 409
            outcomes[job.status] += 1
    assert outcomes["succeeded"] > 0 and outcomes["cancelled"] > 0, outcomes  # both orders were raced
    for jid in ready[:3]:
        await assert_log_whole(db, jid, activities=False)
