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

from activities.llm import BudgetExhausted, LlmClient, QuotaExceeded
from core.spec import TERMINAL_STATUSES, JobOptions
from core.text import count_words, sha256
from db.models import Document, Job
from db.session import Database, JobGone, JobTx
from db.writing import Chunk, ChunkVersion, LengthCheck


class JobNotRunnable(Exception):
    """The job is finished, failed or cancelled: no more work is done for it."""


# Errors that no retry can cure; workflows name them in their retry policy.
NON_RETRYABLE = [JobGone.__name__, JobNotRunnable.__name__, BudgetExhausted.__name__, QuotaExceeded.__name__]


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


async def load_job(tx: JobTx, job_id: uuid.UUID, *, allow_terminal: bool = False) -> Job:
    """The job, or JobGone (deleted) / JobNotRunnable (already ended, unless ``allow_terminal``)."""
    job = await tx.session.get(Job, job_id)
    if job is None:
        raise JobGone(str(job_id))
    if job.status in TERMINAL_STATUSES and not allow_terminal:
        raise JobNotRunnable(f"job {job_id} is {job.status}")
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
) -> bool:
    """The length check of a chunk attempt or of the whole document (one row per scope, chunk and
    round) and its ``length`` event, written once however often the step is retried.

    Returns whether it passed (the words reach ``min_words``)."""
    passed = words >= min_words
    existing = (
        await tx.session.execute(
            select(LengthCheck.id).where(
                LengthCheck.job_id == tx.job_id,
                LengthCheck.scope == scope,
                LengthCheck.chunk_id.is_(None) if chunk_id is None else LengthCheck.chunk_id == chunk_id,
                LengthCheck.round == round,
            )
        )
    ).first()
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
        tx.event("length", "pass" if passed else "fail", {"scope": scope, **(event or {}), "passed": passed})
    return passed


async def save_document(tx: JobTx, *, role: str, version: int, text: str, words: int) -> None:
    """A document version (``output`` or a ``partial``), stored once per (role, version), with the
    audit head it was made at (the log's seq and hash just before this transaction's events)."""
    exists = (
        await tx.session.execute(
            select(Document.id).where(Document.job_id == tx.job_id, Document.role == role, Document.version == version)
        )
    ).first()
    if exists is None:
        seq, head = await tx.head()  # the log this document was made from, up to here
        tx.session.add(
            Document(
                job_id=tx.job_id,
                role=role,
                version=version,
                text=text,
                sha256=sha256(text),
                word_count=words,
                audit_seq=seq,
                audit_head=head,
            )
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
