"""The last steps: finalize (assemble and count the document: succeed, top up, or give up with a
code and a reason), the top-up section, and marking a job failed or cancelled with what it wrote
kept as a partial document."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import func, select
from temporalio import activity

from activities.base import Step, job_options, load_job, now, record_length_check
from activities.contracts import FailInput, FinalizeResult, RoundRef
from core.continuity import brief
from core.errors import JobGone
from core.layout import assemble, top_up
from core.length import Effort, give_up
from core.spec import TERMINAL_STATUSES
from core.text import count_words, sha256, trim_to_words
from db.blocks import document_blocks
from db.counts import coherence_counts, word_account
from db.endings import end_job, save_document
from db.loop import clock_start
from db.manuscript import Chunk, ChunkAttempt, LengthCheck, PlanNode
from db.models import Job, LlmCall
from db.session import JobTx

log = structlog.get_logger(__name__)


class FinalizeActivities(Step):
    @activity.defn(name="finalize")
    async def finalize(self, inp: RoundRef) -> FinalizeResult:
        jid = uuid.UUID(inp.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, allow_terminal=True, lock=True)
            if job.status == "succeeded":
                return FinalizeResult(True, job.words_written, job.target_words)
            if job.status in TERMINAL_STATUSES:
                return FinalizeResult(
                    False,
                    job.words_written,
                    job.target_words,
                    give_up=True,
                    error_code=job.error_code,
                    reason=job.failure_reason,
                )
            short = await _final_words(tx, jid, inp.round)
            if short is not None:  # a retry after this round's commit: it was short, already recorded
                return FinalizeResult(False, short, job.target_words)
            job.current_step = f"finalize round {inp.round}"
            doc = await _assemble(tx, job)
            if count_words(doc) > job.max_words:
                doc = trim_to_words(doc, job.max_words, job.target_words).rstrip() + "\n"
            words = count_words(doc)
            previous = await _final_words(tx, jid, inp.round - 1)
            passed = await record_length_check(
                tx,
                scope="final",
                round=inp.round,
                words=words,
                min_words=job.target_words,
                target_words=job.target_words,
                max_words=job.max_words,
                event={
                    "round": inp.round,
                    "words": words,
                    "target_words": job.target_words,
                    "max_words": job.max_words,
                },
            )
            if passed:
                await save_document(tx, role="output", version=1, text=doc, words=words)
                job.status, job.completed_at, job.current_step, job.words_written = "succeeded", now(), "done", words
                await _finish_book(tx)
                account = await word_account(tx.session, jid)
                tx.event(
                    "job",
                    "succeeded",
                    {
                        "words": words,
                        "target_words": job.target_words,
                        "rounds": inp.round,
                        "sha256": sha256(doc),
                        "coherence": brief(await coherence_counts(tx.session, jid, words)),
                        "account": account.as_dict(),
                        "summary": account.describe(),
                    },
                )
                return FinalizeResult(True, words, job.target_words)
            verdict = give_up(
                words=words,
                target_words=job.target_words,
                round=inp.round,
                previous_words=previous,
                effort=await _effort(tx, job),
                options=job_options(job),
            )
            await save_document(tx, role="partial", version=inp.round + 1, text=doc, words=words)
            if verdict is not None:
                code, reason = verdict
                job.status, job.completed_at, job.error_code, job.failure_reason = "failed", now(), code, reason
                job.current_step = "failed"
                account = await word_account(tx.session, jid)
                tx.event(
                    "job",
                    "failed",
                    {
                        "error_code": code,
                        "reason": reason,
                        "words": words,
                        "account": account.as_dict(),
                        "coherence": brief(await coherence_counts(tx.session, jid, words)),
                    },
                )
                return FinalizeResult(False, words, job.target_words, give_up=True, error_code=code, reason=reason)
            tx.event(
                "job",
                "short",
                {
                    "words": words,
                    "target_words": job.target_words,
                    "round": inp.round,
                    "deficit": job.target_words - words,
                },
            )
            return FinalizeResult(False, words, job.target_words)

    @activity.defn(name="add_continuation")
    async def add_continuation(self, inp: RoundRef) -> int:
        """A top-up covering the deficit of the last final check: a section of its own, written as
        one more unit strictly after the document's last chunk; returns its node id."""
        jid = uuid.UUID(inp.job_id)
        title = f"continuation {inp.round + 1}"
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            existing = (
                await tx.session.execute(
                    select(PlanNode).where(PlanNode.job_id == jid, PlanNode.is_continuation, PlanNode.title == title)
                )
            ).scalar_one_or_none()
            if existing is not None:
                return existing.id
            words = (
                await tx.session.execute(
                    select(LengthCheck.words).where(
                        LengthCheck.job_id == jid, LengthCheck.scope == "final", LengthCheck.round == inp.round
                    )
                )
            ).scalar_one()
            deficit, chunks = top_up(job.target_words, job.max_words, words, job_options(job).chunk_words)
            budget = sum(c.target for c in chunks)
            book = (
                await tx.session.execute(select(PlanNode).where(PlanNode.job_id == jid, PlanNode.level == "book"))
            ).scalar_one()
            position = (
                await tx.session.execute(select(func.max(PlanNode.position)).where(PlanNode.job_id == jid))
            ).scalar_one() + 1
            next_chunk = (
                await tx.session.execute(select(func.max(Chunk.ordinal)).where(Chunk.job_id == jid))
            ).scalar_one() + 1
            siblings = (
                await tx.session.execute(
                    select(func.count()).select_from(PlanNode).where(PlanNode.parent_id == book.id)
                )
            ).scalar_one()
            section = PlanNode(
                job_id=jid,
                parent_id=book.id,
                level="section",
                depth=1,
                ordinal=siblings,
                position=position,
                title=title,
                purpose="Continue and deepen the document.",
                budget_words=budget,
                is_continuation=True,
                status="expanded",
            )
            tx.session.add(section)
            await tx.session.flush()
            for i, c in enumerate(chunks):
                tx.session.add(
                    Chunk(
                        job_id=jid,
                        section_id=section.id,
                        unit_id=section.id,
                        ordinal=next_chunk + i,
                        index_in_section=i,
                        brief=c.brief,
                        target_words=c.target,
                        min_words=c.min_words,
                        max_words=c.max_words,
                    )
                )
            job.sections_total += 1
            job.units_total += 1
            job.chunks_total += len(chunks)
            job.finalize_rounds = inp.round + 1
            tx.event(
                "job",
                "top_up",
                {
                    "round": inp.round + 1,
                    "deficit": deficit,
                    "planned_words": budget,
                    "chunks": len(chunks),
                    "section": section.id,
                },
            )
            return section.id

    @activity.defn(name="fail_job")
    async def fail_job(self, inp: FailInput) -> None:
        jid = uuid.UUID(inp.job_id)
        try:
            async with self.db.job_tx(jid) as tx:
                job = await load_job(tx, jid, allow_terminal=True, lock=True)
                if job.status in TERMINAL_STATUSES:
                    return
                await end_job(tx, job, status=inp.status, error_code=inp.error_code, reason=inp.reason)
        except JobGone:
            log.info("fail_job.job_deleted", job_id=inp.job_id)


async def _final_words(tx: JobTx, jid: uuid.UUID, round: int) -> int | None:
    """The words of the final length check of ``round``, if one is stored."""
    return (
        await tx.session.execute(
            select(LengthCheck.words).where(
                LengthCheck.job_id == jid, LengthCheck.scope == "final", LengthCheck.round == round
            )
        )
    ).scalar_one_or_none()


async def _assemble(tx: JobTx, job: Job) -> str:
    return assemble(job.title, job.target_words, await document_blocks(tx.session, job))


async def _finish_book(tx: JobTx) -> None:
    book = (
        await tx.session.execute(select(PlanNode).where(PlanNode.job_id == tx.job_id, PlanNode.level == "book"))
    ).scalar_one_or_none()
    if book is not None and book.status != "done":
        book.status, book.completed_at = "done", now()


async def _effort(tx: JobTx, job: Job) -> Effort:
    """What the job has spent: chunk attempts, model calls (empty, failed), tokens, time."""
    attempts = (
        await tx.session.execute(select(func.count()).select_from(ChunkAttempt).where(ChunkAttempt.job_id == job.id))
    ).scalar_one()
    calls, failed, empty, tokens = (
        await tx.session.execute(
            select(
                func.count(),
                func.count().filter(LlmCall.status == "error"),
                func.count().filter(LlmCall.error == "empty content"),
                func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0),
            ).where(LlmCall.job_id == job.id)
        )
    ).one()
    elapsed = (now() - await clock_start(tx.session, job)).total_seconds()
    return Effort(
        attempts=attempts, calls=calls, empty=empty, failed=failed, tokens=int(tokens or 0), elapsed_s=elapsed
    )
