"""Plan review: a job that asked for it (``options.review_plan``) waits after planning, in its
workflow, for its author to approve the outline as is or edited; these are the steps around that
wait. ``await_review`` keeps the plan as version 1 and says the job is waiting; ``apply_review``
applies an approved version: the outline laid out again (``core.layout.subtree``: each node's
sections and passages, their budgets) and planned as its author wrote it, with what changed in
the job's audit log.

Nothing has been written when a plan is reviewed (the chunks are only laid out), so applying a
version lays the whole tree out again from the edited outline, as ``plan_job`` first did.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from temporalio import activity

from activities.base import Step, job_options, load_job, now
from activities.contracts import JobRef
from activities.plan import _lay_out
from core.layout import NodePlan, subtree, tree_levels, unit_level
from core.plan import PlanItem
from core.review import changes
from db.loop import PlanVersion
from db.manuscript import Chunk, PlanNode
from db.session import JobTx
from db.tree import chunks_under, latest_version, outline


@dataclass
class ReviewWait:
    awaiting: bool  # False: a version was approved already (a resumed or retried run goes on)
    version: int  # the plan's latest version


@dataclass
class ReviewRef:
    job_id: str
    version: int


class ReviewRefused(Exception):
    """The version cannot be applied (it is not the proposal the job is waiting for)."""


class ReviewActivities(Step):
    @activity.defn(name="await_review")
    async def await_review(self, ref: JobRef) -> ReviewWait:
        """The plan as version 1 (once) and the job marked as waiting for its review, unless a
        version was approved already."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            latest = await latest_version(tx)
            approved = (
                await tx.session.execute(
                    select(func.max(PlanVersion.version)).where(
                        PlanVersion.job_id == jid, PlanVersion.status == "approved"
                    )
                )
            ).scalar_one()
            if approved is not None:
                return ReviewWait(False, approved)
            if latest is None:
                latest = PlanVersion(
                    job_id=jid, version=1, status="planned", outline=await outline(tx.session, tx.job_id)
                )
                tx.session.add(latest)
                await tx.session.flush()
            if job.current_step != "awaiting plan review":
                job.current_step = "awaiting plan review"
                tx.event(
                    "plan",
                    "awaiting_review",
                    {"version": latest.version, "nodes": len(latest.outline), "target_words": job.target_words},
                )
            return ReviewWait(True, latest.version)

    @activity.defn(name="apply_review")
    async def apply_review(self, ref: ReviewRef) -> int:
        """Apply proposed version ``ref.version``: the outline laid out again and planned as its
        author wrote it (as is: nothing changes but the version's status). Idempotent."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, lock=True)
            pv = (
                await tx.session.execute(
                    select(PlanVersion).where(PlanVersion.job_id == jid, PlanVersion.version == ref.version)
                )
            ).scalar_one_or_none()
            if pv is not None and pv.status == "approved":
                return pv.version
            if pv is None or pv.status != "proposed":
                raise ReviewRefused(f"plan version {ref.version} of job {jid} is not a proposal awaiting review")
            before = await outline(tx.session, tx.job_id)
            diff = changes(before, pv.outline)
            if diff:
                await _lay_out_again(tx, job, before, pv.outline)
            pv.status, pv.decided_at, pv.changes = "approved", now(), diff
            job.current_step = "writing"
            tx.event(
                "plan",
                "reviewed",
                {
                    "version": pv.version,
                    "by": pv.user_name,
                    "as_is": not diff,
                    "changes": diff,
                    "nodes": len(pv.outline),
                    "planned_words": sum(i["budget_words"] for i in pv.outline),
                    "target_words": job.target_words,
                    "units": job.units_total,
                    "chunks": job.chunks_total,
                },
            )
            return pv.version


async def _lay_out_again(tx: JobTx, job: Any, before: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """The tree laid out from the edited outline (nothing is written yet): every node and chunk
    made again, kept nodes keeping what the planner gave them (the entities they introduce and
    rely on) and, for a rewrite, the input passages they rewrite."""
    jid = tx.job_id
    chunk_words = job_options(job).chunk_words
    old = {b["node"]: b for b in before}
    extra = {
        n.id: (list(n.introduces or []), list(n.relies_on or []))
        for n in (await tx.session.execute(select(PlanNode).where(PlanNode.id.in_(list(old))))).scalars()
    }
    sources: dict[int, str] = {}
    if job.kind == "rewrite":
        for node_id in old:
            sources[node_id] = await _source_of(tx, node_id)
    await tx.session.execute(delete(Chunk).where(Chunk.job_id == jid))
    await tx.session.execute(delete(PlanNode).where(PlanNode.job_id == jid))
    tree = NodePlan(
        "book",
        sum(i["budget_words"] for i in items),
        children=[subtree(i["level"], i["budget_words"], chunk_words, sources.get(i["node"])) for i in items],
    )
    plan_items = [
        PlanItem(
            title=i["title"],
            summary=i["summary"],
            key_points=i["key_points"],
            introduces=extra.get(i["node"], ([], []))[0],
            relies_on=extra.get(i["node"], ([], []))[1],
        )
        for i in items
    ]
    top = await _lay_out(tx.session, jid, tree, plan_items)
    job.skeleton = {**job.skeleton, "sections": [{"title": n.title, "summary": n.purpose} for n in top]}
    job.sections_total = sum(1 for n in tree.walk() if n.level == "section")
    job.chunks_total = sum(len(n.chunks) for n in tree.walk())
    job.units_total = sum(1 for n in tree.walk() if n.level == unit_level(tree_levels(tree)))


async def _source_of(tx: JobTx, node_id: int) -> str:
    """A rewrite's input for a node: its passages' sources in order, each once."""
    node = await tx.session.get(PlanNode, node_id)
    assert node is not None
    out: list[str] = []
    for c in await chunks_under(tx.session, node):
        if c.source_text and (not out or out[-1] != c.source_text):
            out.append(c.source_text)
    return "\n\n".join(out)
