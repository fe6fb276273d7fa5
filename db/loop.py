"""The tables of the author's loop: the plan's versions (as planned, as proposed, as approved) and
the edits made to a finished job (a node regenerated, edited by hand, a selection rewritten, a node
rolled back), each with who asked for it, what it changed and the document version it made.

What an edit writes goes where the job's own writing goes (chunk versions, ledger entries, seam
checks, continuity findings, documents), each row naming the edit where it matters.
"""

from __future__ import annotations

import datetime as dt
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    ScalarSelect,
    Text,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.spec import sql_in
from db.models import Base, Job, ts_column

# planned: the outline as the model planned it (version 1); proposed: a review sent to the job's
# workflow (an Update); approved: the workflow applied it; rejected: the workflow refused it.
PLAN_STATUSES = ("planned", "proposed", "approved", "rejected")
EDIT_KINDS = ("regenerate", "edit", "rewrite", "rollback")
EDIT_STATUSES = ("running", "done", "failed")


class PlanVersion(Base):
    """One version of a job's outline (its top-level nodes: title, summary, key points, budget),
    and what changed from the version before it."""

    __tablename__ = "plan_versions"
    __table_args__ = (
        UniqueConstraint("job_id", "version"),
        CheckConstraint(sql_in("status", PLAN_STATUSES), name="status"),
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("status <> 'proposed' OR workflow_id IS NOT NULL", name="proposed_names_workflow"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text)
    # A proposal is an Update on its way to this run (update id ``plan-v<version>``): the reconciler
    # delivers it again, or rejects it once that run has ended.
    workflow_id: Mapped[str | None] = mapped_column(Text)
    outline: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    changes: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    user_name: Mapped[str | None] = mapped_column(Text)  # who proposed it (None: the planner)
    reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected
    created_at: Mapped[datetime] = ts_column(default=True)
    decided_at: Mapped[datetime | None] = ts_column()


class Edit(Base):
    """An edit of a finished job, run by its own workflow (``core.runs.edit_workflow_id``): what was
    asked (kind, node, instruction, selection, hand-written text, version to roll back to), by whom,
    what it did (``detail``: each chunk's versions before and after, its model calls), the document
    version it made, or why it failed. One runs at a time per job."""

    __tablename__ = "edits"
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        CheckConstraint(sql_in("kind", EDIT_KINDS), name="kind"),
        CheckConstraint(sql_in("status", EDIT_STATUSES), name="status"),
        CheckConstraint("(status = 'running') = (completed_at IS NULL)", name="completed_unless_running"),
        CheckConstraint("status <> 'done' OR document_version IS NOT NULL", name="done_has_document"),
        Index("uq_edits_running", "job_id", unique=True, postgresql_where=text("status = 'running'")),
        Index("ix_edits_node_id", "node_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... in the job
    kind: Mapped[str] = mapped_column(Text)
    node_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    user_name: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    text: Mapped[str | None] = mapped_column(Text)  # a hand edit's Markdown
    words: Mapped[int] = mapped_column(Integer, server_default="0")  # words asked of the model (quotas)
    status: Mapped[str] = mapped_column(Text, server_default="running")
    workflow_id: Mapped[str] = mapped_column(Text)
    document_version: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    error_code: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = ts_column(default=True)
    completed_at: Mapped[datetime | None] = ts_column()


async def clock_start(s: AsyncSession, job: Job, edit: int | None = None) -> dt.datetime:
    """Where the job's time budget (``max_wall_seconds``) is counted from: its start, moved on by
    the time its plan waited for review (an author's days are not the job's); for the steps of
    edit ``edit``, that edit's start (an edit weeks later has a budget of its own)."""
    if edit is not None:
        started = (
            await s.execute(select(Edit.created_at).where(Edit.job_id == job.id, Edit.number == edit))
        ).scalar_one_or_none()
        if started is not None:
            return started
    asked, approved = (await s.execute(select(*review_wait(job.id)))).one()
    return moved_on(job, asked, approved)


def review_wait(job_id: uuid.UUID) -> tuple[ScalarSelect[datetime], ScalarSelect[datetime]]:
    """When the plan was first put to its review and when a version was approved: ``clock_start``'s
    columns, for a statement that reads them beside others."""
    return (
        select(PlanVersion.created_at).where(PlanVersion.job_id == job_id, PlanVersion.version == 1).scalar_subquery(),
        select(PlanVersion.decided_at)
        .where(PlanVersion.job_id == job_id, PlanVersion.status == "approved")
        .scalar_subquery(),
    )


def moved_on(job: Job, asked: datetime | None, approved: datetime | None) -> dt.datetime:
    start = job.started_at or job.created_at
    return start + (approved - asked) if asked is not None and approved is not None else start
