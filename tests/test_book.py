"""Book scale: hierarchical plans, parallel chapters, validated seams, budgets while writing."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
import uuid
from collections import Counter

import psycopg
import pytest
from sqlalchemy import select, text

from activities.contracts import JobRef, NodeRef
from activities.plan import PlanActivities
from core.layout import generate_tree, levels_for
from core.plan import heading_key
from core.spec import JobSpec
from core.text import count_words
from db.manuscript import Chunk, ChunkVersion, CoherenceState, PlanNode, SeamCheck
from db.models import AuditEvent, Job, LlmCall
from services import jobs
from tests.conftest import make_llm
from tests.helpers import (
    assert_audit_seq_gap_free,
    assert_chain_proven,
    job_row,
    output,
    scalar,
    start_worker,
    submit,
    wait,
)

pytestmark = pytest.mark.usefixtures("worker")


@pytest.mark.parametrize(
    ("target", "levels"),
    [
        (1, ("section",)),
        (5_000, ("section",)),
        (60_000, ("chapter", "section")),
        (300_000, ("part", "chapter", "section")),
    ],
)
def test_layout_depth_follows_the_target_and_budgets_cover_it(target, levels):
    tree = generate_tree(target, 700)
    assert levels_for(target) == levels
    assert {n.level for n in tree.walk()} == {"book", *levels}
    for node in tree.walk():
        if node.children:
            assert sum(c.budget for c in node.children) >= node.budget
        if node.chunks:
            assert sum(c.target for c in node.chunks) >= node.budget
    assert sum(c.target for n in tree.walk() for c in n.chunks) >= target


async def _plan_everything(db, fake, user, target: int) -> uuid.UUID:
    """plan_job, then every node expanded top-down, as the workflows would (activities called directly)."""
    job_id = uuid.uuid4()
    async with db.job_tx(job_id) as tx:
        tx.session.add(
            Job(
                id=job_id,
                user_id=user.user_id,
                kind="generate",
                status="queued",
                prompt="A natural history of lighthouses and the people who kept them",
                target_words=target,
                max_words=int(target * 1.1),
                model="fake-model",
                params=JobSpec(kind="generate", prompt="x", target_words=target).options.model_dump(),
                workflow_id=f"job-{job_id}",
            )
        )
    llm = make_llm(db, fake)
    try:
        acts = PlanActivities(db, llm)
        await acts.plan_job(JobRef(str(job_id)))
        async with db.tx() as s:
            order = (
                (
                    await s.execute(
                        select(PlanNode.id)
                        .where(PlanNode.job_id == job_id, PlanNode.level.in_(["part", "chapter"]))
                        .order_by(PlanNode.depth, PlanNode.position)
                    )
                )
                .scalars()
                .all()
            )
        for node_id in order:
            await acts.expand_node(NodeRef(str(job_id), node_id))
    finally:
        await llm.close()
    return job_id


@pytest.mark.parametrize("mode", ["normal", "malformed_plan"])
async def test_a_300k_plan_is_a_tree_with_distinct_headings_at_every_level(db, fake, user, mode):
    fake.reset(mode=mode)
    job_id = await _plan_everything(db, fake, user, 300_000)
    async with db.tx() as s:
        nodes = (await s.execute(select(PlanNode).where(PlanNode.job_id == job_id))).scalars().all()
        plans = (
            (await s.execute(select(AuditEvent.data).where(AuditEvent.job_id == job_id, AuditEvent.kind == "plan")))
            .scalars()
            .all()
        )
        calls = (
            (await s.execute(select(LlmCall.params).where(LlmCall.job_id == job_id, LlmCall.purpose == "plan")))
            .scalars()
            .all()
        )
    by_level = Counter(n.level for n in nodes)
    assert by_level["book"] == 1 and by_level["part"] >= 2 and by_level["chapter"] >= 20 and by_level["section"] >= 40
    titled = [n for n in nodes if n.level != "book"]
    assert all(n.title and n.heading_key == heading_key(n.title) for n in titled), "every node is planned"
    assert len({n.heading_key for n in titled}) == len(titled), "no two headings are the same"
    children: dict[int, int] = Counter()
    for n in nodes:
        if n.parent_id is not None:
            children[n.parent_id] += n.budget_words
    assert all(children[n.id] >= n.budget_words for n in nodes if n.id in children)
    assert sum(n.budget_words for n in nodes if n.level == "section") >= 300_000
    # Lazy: one skeleton call, then one call per part and per chapter; none asks for much.
    assert all(p["max_tokens"] <= 4096 for p in calls)
    sources = Counter(p.get("source") for p in plans)
    if mode == "malformed_plan":
        assert set(sources) == {"fallback"} and all(len(p["errors"]) == 2 for p in plans)
    else:
        assert set(sources) == {"model"}


async def test_parallel_chapters_meet_the_target_with_every_seam_validated(db, client, fake, user):
    fake.reset(ratio=(1.0, 1.15), delay_s=0.4, seam_drift=True)
    job_id = await submit(
        db,
        client,
        user,
        kind="generate",
        prompt="The keepers of the northern lights",
        target_words=60_000,
        options={"parallelism": 4, "chunk_words": 1500},
    )
    assert await wait(client, job_id) == "succeeded"
    doc = await output(db, job_id)
    assert doc is not None and 60_000 <= count_words(doc.text) <= 66_000
    await assert_chain_proven(db, job_id)
    await assert_audit_seq_gap_free(db, job_id)
    async with db.tx() as s:
        units = (
            (
                await s.execute(
                    select(PlanNode)
                    .where(PlanNode.job_id == job_id, PlanNode.level == "chapter")
                    .order_by(PlanNode.position)
                )
            )
            .scalars()
            .all()
        )
        seams = (await s.execute(select(SeamCheck).where(SeamCheck.job_id == job_id))).scalars().all()
        handoffs = (
            (
                await s.execute(
                    select(CoherenceState).where(CoherenceState.job_id == job_id, CoherenceState.kind == "handoff")
                )
            )
            .scalars()
            .all()
        )
        spans = (
            await s.execute(
                text(
                    "SELECT c.unit_id, min(a.created_at), max(a.created_at) FROM chunk_attempts a "
                    "JOIN chunks c ON c.id = a.chunk_id WHERE a.job_id = :j GROUP BY 1"
                ),
                {"j": job_id},
            )
        ).all()
    assert len(units) == 12 and all(u.status == "done" for u in units)
    assert len(seams) == len(units) - 1 and all(s.validated for s in seams)
    assert handoffs and {s.mode for s in seams} >= {"handoff"}
    # Four chapters wrote at once, never more: the widest overlap of the chapters' writing spans.
    edges = sorted([(a, 1) for _, a, _ in spans] + [(b, -1) for _, _, b in spans])
    widest = max(itertools.accumulate(d for _, d in edges))
    assert widest == 4 and fake.state.peak_in_flight >= 4
    # The fake spelled a term the predecessors established otherwise at some seams: repaired as
    # a new version of the successor's first chunk, the old one kept, the document using the new.
    repaired = [s for s in seams if s.repaired]
    assert repaired and all(c["type"] in ("term_drift", "repeated_opening") for s in repaired for c in s.conflicts)
    async with db.tx() as s:
        for seam in repaired:
            versions = (
                (
                    await s.execute(
                        select(ChunkVersion)
                        .where(ChunkVersion.chunk_id == seam.chunk_id)
                        .order_by(ChunkVersion.version)
                    )
                )
                .scalars()
                .all()
            )
            assert len(versions) >= 2 and versions[-1].id == seam.repair_version_id
            assert versions[-1].reason == "seam_repair" and versions[0].reason == "written"
            assert "harbor lantern council" not in versions[-1].text
    headings = [ln for ln in doc.text.splitlines() if ln.startswith("#")]
    assert headings[0].startswith("# ") and sum(h.startswith("## ") for h in headings) == 12
    assert len({h.lstrip("# ").lower() for h in headings}) == len(headings)


async def test_the_database_refuses_a_chapter_complete_without_its_seam(db, client, fake, user, pg_url):
    fake.reset(ratio=(1.0, 1.15))
    job_id = await submit(
        db, client, user, kind="generate", prompt="Salt roads", target_words=12_000, options={"parallelism": 3}
    )
    assert await wait(client, job_id) == "succeeded"
    async with db.tx() as s:
        second = (
            await s.execute(
                select(PlanNode.id)
                .where(PlanNode.job_id == job_id, PlanNode.level == "chapter")
                .order_by(PlanNode.position)
                .offset(1)
                .limit(1)
            )
        ).scalar_one()
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM seam_checks WHERE unit_id = %s", (second,))
        conn.execute("UPDATE plan_nodes SET status = 'written' WHERE id = %s", (second,))
        with pytest.raises(psycopg.errors.CheckViolation, match="seam is not validated"):
            conn.execute("UPDATE plan_nodes SET status = 'done' WHERE id = %s", (second,))
        conn.rollback()


async def test_parallelism_1_is_one_strict_chain(db, client, fake, user):
    fake.reset(ratio=(1.0, 1.15))
    job_id = await submit(
        db, client, user, kind="generate", prompt="Tidal mills", target_words=15_000, options={"parallelism": 1}
    )
    assert await wait(client, job_id) == "succeeded"
    await assert_chain_proven(db, job_id)
    modes = await scalar(db, "SELECT array_agg(DISTINCT mode) FROM seam_checks WHERE job_id = :j", j=job_id)
    assert modes == ["strict"]
    assert await scalar(db, "SELECT count(*) FROM coherence_states WHERE job_id=:j AND kind='handoff'", j=job_id) == 0


async def test_a_token_budget_ends_the_job_before_the_next_model_call(db, client, fake, user):
    fake.reset(ratio=(1.0, 1.1))
    job_id = await submit(
        db,
        client,
        user,
        kind="generate",
        prompt="Cartographers",
        target_words=20_000,
        options={"max_tokens": 6_000, "parallelism": 2},
    )
    result = await wait(client, job_id)
    assert "E_BUDGET_EXHAUSTED" in result
    job = await job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "E_BUDGET_EXHAUSTED"
    assert "token budget of 6000 used up" in job.failure_reason
    async with db.tx() as s:
        refusal = (
            await s.execute(
                select(AuditEvent.seq)
                .where(AuditEvent.job_id == job_id, AuditEvent.kind == "error", AuditEvent.action == "budget")
                .order_by(AuditEvent.seq)
                .limit(1)
            )
        ).scalar_one()
        calls_after = (
            (
                await s.execute(
                    select(AuditEvent.seq).where(
                        AuditEvent.job_id == job_id, AuditEvent.kind == "llm", AuditEvent.seq > refusal
                    )
                )
            )
            .scalars()
            .all()
        )
        partial = await scalar(db, "SELECT count(*) FROM documents WHERE job_id=:j AND role='partial'", j=job_id)
    # Calls already in flight (another chapter's) may finish after the first refusal; none starts.
    assert len(calls_after) <= 2 and partial >= 1


async def test_two_workers_share_the_chapters_and_one_survives_the_others_kill_9(db, client, fake, user, pg_url):
    fake.reset(ratio=(1.0, 1.1), delay_s=0.15)
    queue = f"pair-{uuid.uuid4().hex[:6]}"
    target = client.service_client.config.target_host
    workers = [start_worker(pg_url, target, fake.url, queue) for _ in range(2)]
    try:
        job, _ = await jobs.submit(
            db,
            client,
            user_id=user.user_id,
            user_name=user.name,
            spec=JobSpec(
                kind="generate", prompt="Lamp oil", target_words=24_000, options={"parallelism": 4, "chunk_words": 600}
            ),
            task_queue=queue,
            default_model="fake-model",
        )
        deadline = time.monotonic() + 120
        while True:  # both workers have run chunks of at least four chapters in flight
            async with db.tx() as s:
                ran = (
                    await s.execute(
                        text(
                            "SELECT count(DISTINCT data->>'worker'), count(DISTINCT data->>'workflow_id') "
                            "FROM audit_events WHERE job_id=:j AND kind='activity' AND action='start' "
                            "AND data->>'activity' = 'write_chunk'"
                        ),
                        {"j": job.id},
                    )
                ).one()
            if ran[0] == 2 and ran[1] >= 4:
                break
            assert time.monotonic() < deadline, ran
            await asyncio.sleep(0.05)
        workers[0].kill()
        workers[0].wait()
        assert await asyncio.wait_for(wait(client, job.id), 240) == "succeeded"
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    w.kill()
    await assert_chain_proven(db, job.id)
    await assert_audit_seq_gap_free(db, job.id)
    async with db.tx() as s:
        dup_attempts = await scalar(
            db,
            "SELECT count(*) FROM (SELECT chunk_id, attempt_no FROM chunk_attempts WHERE job_id=:j "
            "GROUP BY 1, 2 HAVING count(*) > 1) d",
            j=job.id,
        )
        seams = (await s.execute(select(SeamCheck.unit_id).where(SeamCheck.job_id == job.id))).scalars().all()
        chunks = (await s.execute(select(Chunk).where(Chunk.job_id == job.id))).scalars().all()
    assert dup_attempts == 0 and len(seams) == len(set(seams))
    for c in chunks:
        assert c.status == "done"
