"""How a job's documents are stored, and how a job ends without its document: failed or cancelled,
what it wrote kept as a partial document, its outcome in its log. The job workflow's failure and
cancel paths (``activities.finalize.fail_job``), an operator's restore (``services.restore``) and
the reconciler (``services.reconcile``) all end a job through ``end_job``."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select

from core.continuity import brief
from core.errors import JobGone
from core.layout import assemble
from core.spec import TERMINAL_STATUSES
from core.text import count_words, sha256
from db.blocks import document_blocks
from db.counts import coherence_counts, word_account
from db.models import Document, Job
from db.session import Database, JobTx


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


async def end_job(tx: JobTx, job: Job, *, status: str, error_code: str, reason: str) -> None:
    """End ``job`` (read under its row lock, not ended) as ``status`` (failed or cancelled) with
    ``error_code`` and ``reason``: what it wrote is kept as its next partial document, and the
    outcome (its words, its word account, its coherence in brief) is in its log."""
    doc = assemble(job.title, job.target_words, await document_blocks(tx.session, job))
    words = count_words(doc)
    version = (
        1
        + (
            await tx.session.execute(
                select(func.coalesce(func.max(Document.version), 0)).where(
                    Document.job_id == job.id, Document.role == "partial"
                )
            )
        ).scalar_one()
    )
    await save_document(tx, role="partial", version=version, text=doc, words=words)
    job.status, job.completed_at = status, dt.datetime.now(dt.UTC)
    job.error_code, job.failure_reason = error_code, reason
    job.current_step = status
    account = await word_account(tx.session, job.id)
    tx.event(
        "job",
        status,
        {
            "error_code": error_code,
            "reason": reason,
            "words": words,
            "account": account.as_dict(),
            "coherence": brief(await coherence_counts(tx.session, job.id, words or 0)),
        },
    )
    if status == "failed":
        tx.event("error", "job", {"error_code": error_code, "reason": reason})


async def end_unless_ended(db: Database, job_id: uuid.UUID, *, status: str, error_code: str, reason: str) -> bool:
    """``end_job`` outside a workflow's step (a restore, the reconciler): whether it ended the job
    (False: it had ended already, or is deleted)."""
    try:
        async with db.job_tx(job_id) as tx:
            job = await tx.session.get(Job, job_id, with_for_update=True, populate_existing=True)
            if job is None:
                raise JobGone(str(job_id))
            if job.status in TERMINAL_STATUSES:
                return False
            await end_job(tx, job, status=status, error_code=error_code, reason=reason)
            return True
    except JobGone:
        return False
