"""The plan step: the job's skeleton (title, thesis, sections, glossary, style) from the model,
validated, retried once with the validation error, else a deterministic fallback; then its
sections and chunks as rows, and the root of the coherence chain."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.base import ModelStep, job_options, load_job, now
from activities.contracts import JobRef, PlanResult
from activities.prompts import outline_messages, plan_max_tokens, plan_messages, rewrite_plan_messages
from core.layout import SectionPlan, generate_layout, planned_words, rewrite_layout, section_count
from core.plan import PlanModel, fallback_plan, opening_and_headings, parse_outline, parse_plan, title_of_brief
from core.text import count_words
from db.models import Chunk, CoherenceState, Document, Section


class PlanActivities(ModelStep):
    @activity.defn(name="plan_job")
    async def plan_job(self, ref: JobRef) -> PlanResult:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            if job.sections_total > 0:  # planned by an earlier attempt or run
                return PlanResult(job.sections_total)
            if job.status == "queued":  # once: a retried plan_job finds the job running already
                job.status, job.started_at = "running", now()
                tx.event("job", "running", {"step": "planning"})
            job.current_step = "planning"
            opts = job_options(job)
            prompt, target, title, model = job.prompt or "", job.target_words, job.title, job.model
            source = None
            if job.kind == "rewrite":
                source = (
                    await tx.session.execute(
                        select(Document.text).where(Document.job_id == jid, Document.role == "input")
                    )
                ).scalar_one()
        n_sections = section_count(target, opts.chunk_words)
        plan, plan_source, errors = await self._ask_plan(jid, model, prompt, source, title, target, n_sections)
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid)
            if job.sections_total > 0:
                return PlanResult(job.sections_total)
            total = planned_words(target, job.max_words)
            if source is not None:
                layout = rewrite_layout(source, total, opts.chunk_words, plan)
            else:
                layout = generate_layout(total, opts.chunk_words, n_sections, plan)
            skeleton = plan.model_dump()
            skeleton["sections"] = [{"title": s.title, "summary": s.summary} for s in layout]
            job.skeleton = skeleton
            if not job.title:
                job.title = plan.title[:300]
            tx.session.add(
                CoherenceState(
                    job_id=jid,
                    ordinal=0,
                    parent_id=None,
                    summary=plan.thesis[:2000],
                    glossary=plan.glossary,
                    open_threads=[],
                    delta={"source": plan_source},
                )
            )
            chunks = await _add_sections(tx.session, jid, layout)
            job.sections_total, job.chunks_total = len(layout), chunks
            job.current_step = "writing"
            tx.event(
                "plan",
                "created",
                {
                    "source": plan_source,
                    "errors": errors,
                    "sections": len(layout),
                    "chunks": chunks,
                    "planned_words": total,
                    "target_words": target,
                    "max_words": job.max_words,
                    "title": job.title,
                },
            )
            return PlanResult(job.sections_total)

    async def _ask_plan(
        self,
        jid: uuid.UUID,
        model: str,
        prompt: str,
        source: str | None,
        title: str | None,
        target: int,
        n_sections: int,
    ) -> tuple[PlanModel, str, list[str]]:
        """(plan, "model" | "fallback", the validation errors of the answers that were refused)."""
        style = self.llm.prompt_style
        if source is not None:
            opening, headings = opening_and_headings(source)
            doc_title = title or (headings[0] if headings else source.strip().splitlines()[0][:120])
            lead = " ".join(opening.split()[:250])
        else:
            doc_title, lead = title or title_of_brief(prompt), prompt

        def messages(err: str | None) -> list[dict[str, str]]:
            if style == "document":
                return outline_messages(doc_title, lead, n_sections, err)
            if source is not None:
                return rewrite_plan_messages(opening, headings, target, count_words(source), err)
            return plan_messages(prompt, target, n_sections, err)

        errors: list[str] = []
        for attempt in (1, 2):  # once, then once more with the validation error
            res = await self.llm.complete(
                job_id=jid,
                purpose="plan",
                request_key=f"plan:{attempt}",
                model=model,
                messages=messages(errors[-1] if errors else None),
                max_tokens=plan_max_tokens(n_sections, style),
                temperature=0.4,
                json_mode=style != "document",
            )
            try:
                if style == "document":
                    return parse_outline(res.text, doc_title, lead[:1000], n_sections), "model", errors
                return parse_plan(res.text), "model", errors
            except ValueError as exc:
                errors.append(str(exc))
        return fallback_plan(prompt or (source or "")[:2000], n_sections, title), "fallback", errors


async def _add_sections(session: AsyncSession, jid: uuid.UUID, layout: list[SectionPlan]) -> int:
    """Section and chunk rows for a layout, chunks numbered in document order; returns their count."""
    ordinal = 0
    for si, sec in enumerate(layout):
        section = Section(
            job_id=jid,
            ordinal=si,
            title=sec.title,
            summary=sec.summary,
            key_points=sec.key_points,
            target_words=sec.target_words,
        )
        session.add(section)
        await session.flush()
        for ci, c in enumerate(sec.chunks):
            session.add(
                Chunk(
                    job_id=jid,
                    section_id=section.id,
                    ordinal=ordinal,
                    index_in_section=ci,
                    brief=c.brief,
                    source_text=c.source,
                    target_words=c.target,
                    min_words=c.min_words,
                    max_words=c.max_words,
                )
            )
            ordinal += 1
    return ordinal
