"""What every step shares: its dependencies, loading its job, and the rows steps write again and
again (length checks, documents), each written by one function here.

Every step reads what it needs from Postgres by id and writes its results, and the audit of
everything it ran, in one ``db.job_tx`` transaction. Every step is idempotent: it finds what an
earlier attempt stored and returns that instead of writing it again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from temporalio import activity

from activities.llm import LlmClient
from core.errors import JobGone, JobNotRunnable
from core.runs import edit_of, run_of
from core.spec import TERMINAL_STATUSES, JobOptions
from core.text import count_words, sha256
from db.manuscript import Chunk, ChunkVersion, LengthCheck, PlanNode
from db.models import Job
from db.session import Database, JobTx, lock_job


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def job_options(job: Job) -> JobOptions:
    return JobOptions(**(job.params or {}))


class Step:
    """A group of activities and the dependencies they hold: the database."""

    def __init__(self, db: Database) -> None:
        self.db = db


class ModelStep(Step):
    """A group of activities that also ask the model."""

    def __init__(self, db: Database, llm: LlmClient) -> None:
        super().__init__(db)
        self.llm = llm


async def load_job(tx: JobTx, job_id: uuid.UUID, *, allow_terminal: bool = False, lock: bool = False) -> Job:
    """The job, or JobGone (deleted) / JobNotRunnable (already ended, unless ``allow_terminal`` or
    the step is an edit's and the job succeeded; or run by a workflow of an earlier run than the
    job's current one, see ``core.runs``).

    ``lock``: read it under its row lock, held to commit; every step that may change the status
    does, so that two of them (finalize and a cancel) decide one after the other, each seeing what
    the other wrote."""
    job = await lock_job(tx.session, job_id) if lock else await tx.session.get(Job, job_id)
    if job is None:
        raise JobGone(str(job_id))
    return runnable(job, allow_terminal=allow_terminal)


def runnable(job: Job, *, allow_terminal: bool = False) -> Job:
    """``job``, if this step may work on it (see ``load_job``), else JobNotRunnable."""
    job_id = job.id
    # An edit's workflow (core.runs.edit_of) works on a job that has succeeded: its status stays.
    editing = activity.in_activity() and edit_of(activity.info().workflow_id) is not None
    if job.status in TERMINAL_STATUSES and not allow_terminal and not (editing and job.status == "succeeded"):
        raise JobNotRunnable(f"job {job_id} is {job.status}")
    caller = run_of(activity.info().workflow_id) if activity.in_activity() else None
    if caller is not None and caller != run_of(job.workflow_id):
        # A workflow left over from before a resume (a child whose cancel was lost): it must not
        # write beside the run that replaced it.
        raise JobNotRunnable(f"job {job_id} is on its run {run_of(job.workflow_id)}; this step is of run {caller}")
    return job


async def record_length_check(
    tx: JobTx,
    *,
    scope: str,
    round: int,
    words: int,
    min_words: int,
    target_words: int,
    max_words: int,
    chunk_id: int | None = None,
    event: dict[str, Any] | None = None,
    fresh: bool = False,
    told: bool = False,
) -> bool:
    """The length check of a chunk attempt or of the whole document (one row per scope, chunk and
    round) and its ``length`` event, written once however often the step is retried.

    Returns whether it passed (the words reach ``min_words``). ``fresh``: the round was stored by
    this transaction, so no check of it can exist (no read to find one). ``told``: the caller's
    own event of the round carries the verdict (a chunk attempt's), so no ``length`` event."""
    passed = words >= min_words
    existing = (
        None
        if fresh
        else (
            await tx.session.execute(
                select(LengthCheck.id).where(
                    LengthCheck.job_id == tx.job_id,
                    LengthCheck.scope == scope,
                    LengthCheck.chunk_id.is_(None) if chunk_id is None else LengthCheck.chunk_id == chunk_id,
                    LengthCheck.round == round,
                )
            )
        ).first()
    )
    if existing is None:
        tx.session.add(
            LengthCheck(
                job_id=tx.job_id,
                chunk_id=chunk_id,
                scope=scope,
                round=round,
                words=words,
                min_words=min_words,
                target_words=target_words,
                max_words=max_words,
                passed=passed,
            )
        )
        if not told:
            tx.event("length", "pass" if passed else "fail", {"scope": scope, **(event or {}), "passed": passed})
    return passed


async def check_version_length(tx: JobTx, chunk: Chunk, version: ChunkVersion) -> bool:
    """The length check of a chunk's version made after its attempts were checked (a repair's, the
    stitch's, an edit's): a repair can leave a chunk below its minimum, and a chunk's last check is
    what the word account counts short. Its round is minus the version's number (attempts count up
    from 1: the two never meet), recorded once however often the step is retried. An emptied
    chunk (a rollback to before it had text) is not in the document: not checked."""
    if not version.text:
        return True
    return await record_length_check(
        tx,
        scope="chunk",
        chunk_id=chunk.id,
        round=-version.version,
        words=version.word_count,
        min_words=chunk.min_words,
        target_words=chunk.target_words,
        max_words=chunk.max_words,
        event={
            "chunk": chunk.ordinal,
            "version": version.version,
            "reason": version.reason,
            "words": version.word_count,
            "min_words": chunk.min_words,
            "target_words": chunk.target_words,
        },
    )


# A chunk's text in versions (rows never updated): written by the chunk, seam and stitch steps.
def add_version(
    tx: JobTx, chunk: Chunk, version: int, reason: str, text: str, detail: dict | None = None
) -> ChunkVersion:
    """A new version of a chunk's text (the rows before it stay)."""
    row = ChunkVersion(
        job_id=chunk.job_id,
        chunk_id=chunk.id,
        version=version,
        reason=reason,
        text=text,
        word_count=count_words(text),
        sha256=sha256(text),
        detail=detail or {},
    )
    tx.session.add(row)
    return row


async def latest_version(tx: JobTx, chunk_id: int) -> ChunkVersion | None:
    return (
        await tx.session.execute(
            select(ChunkVersion).where(ChunkVersion.chunk_id == chunk_id).order_by(ChunkVersion.version.desc()).limit(1)
        )
    ).scalar_one_or_none()


async def text_of(tx: JobTx, chunk: Chunk) -> str:
    v = await latest_version(tx, chunk.id)
    return v.text if v is not None else chunk.text or ""


async def latest_versions(tx: JobTx, chunk_ids: list[int]) -> dict[int, ChunkVersion]:
    """The latest version of each of ``chunk_ids`` (those that have one), in one statement."""
    if not chunk_ids:
        return {}
    rows = await tx.session.execute(
        select(ChunkVersion)
        .where(ChunkVersion.chunk_id.in_(chunk_ids))
        .ext(distinct_on(ChunkVersion.chunk_id))
        .order_by(ChunkVersion.chunk_id, ChunkVersion.version.desc())
    )
    return {v.chunk_id: v for v in rows.scalars()}


async def texts_of(tx: JobTx, chunks: list[Chunk]) -> dict[int, str]:
    """``text_of`` for many chunks, by chunk id, in one statement."""
    versions = await latest_versions(tx, [c.id for c in chunks])
    return {c.id: versions[c.id].text if c.id in versions else c.text or "" for c in chunks}


async def plan_node(tx: JobTx, node_id: int) -> PlanNode:
    """A node of the transaction's job's plan (a step is handed its id); another job's is an error."""
    node = await tx.session.get(PlanNode, node_id)
    if node is None or node.job_id != tx.job_id:
        raise LookupError(f"node {node_id} is not a node of job {tx.job_id}")
    return node
