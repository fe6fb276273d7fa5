"""The job's activities: plan, write chunk, check length, extend, commit, stitch, finalize.

Each reads what it needs from Postgres by id, does one step and writes its results (and the
audit of everything it ran) in one transaction. Each is idempotent: the workflow passes the
attempt number it expects to create, and an activity that finds its result already stored
returns it. Model calls happen between transactions and are recorded on their own (see
``activities.llm``), so no transaction is held open while a model writes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from typing import Any

import structlog
from sqlalchemy import func, select
from temporalio import activity

from activities.coherence import delta, fix_term, fold, remove_paragraph, seam_issues
from activities.llm import LlmClient
from activities.prompts import (
    ChunkContext,
    chunk_messages,
    fallback_plan,
    max_tokens_for,
    opening_and_headings,
    outline_messages,
    parse_outline,
    parse_plan,
    plan_messages,
    planned_section_count,
    rewrite_plan_messages,
)
from activities.text import (
    clean_model_text,
    count_words,
    join_continuation,
    normalize_paragraph,
    paragraphs,
    sha256,
    split_parts,
    tail_words,
    trim_to_words,
)
from db.models import (
    TERMINAL_STATUSES,
    Chunk,
    ChunkAttempt,
    CoherenceState,
    Document,
    Job,
    LengthCheck,
    LlmCall,
    Section,
    StitchResult,
)
from db.session import Database, JobGone, JobTx
from workflows.contracts import (
    ChunkRef,
    ChunkStatus,
    ContinuationInput,
    FailInput,
    FinalizeInput,
    FinalizeResult,
    JobRef,
    PlanResult,
    SectionChunks,
    SectionRef,
)

log = structlog.get_logger(__name__)

CHUNKS_PER_SECTION = 4
HEADINGS_FROM_WORDS = 300  # below this, headings would crowd out the text the user asked for
MIN_COMPLIANCE = 0.34  # never ask for more than about 3x what is needed
HEADROOM = 1.03  # plan a little over target: stitch may remove repeated paragraphs
CHUNK_SLACK = 1.05  # a chunk may run this far past its budget before it is trimmed at a sentence end


class JobNotRunnable(Exception):
    """The job is finished, failed or cancelled: no more work is done for it."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _opts(job: Job) -> dict[str, Any]:
    from quire.jobs import JobOptions  # local: quire.jobs imports the workflows package

    return JobOptions(**(job.params or {})).model_dump()


async def _job(tx: JobTx, job_id: uuid.UUID, *, allow_terminal: bool = False) -> Job:
    job = await tx.session.get(Job, job_id, with_for_update=False)
    if job is None:
        raise JobGone(str(job_id))
    if job.status in TERMINAL_STATUSES and not allow_terminal:
        raise JobNotRunnable(f"job {job_id} is {job.status}")
    return job


def _budgets(total: int, n: int) -> list[int]:
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class JobActivities:
    def __init__(self, db: Database, llm: LlmClient) -> None:
        self.db = db
        self.llm = llm

    def all(self) -> list[Any]:
        return [
            self.plan_job,
            self.section_chunks,
            self.write_chunk,
            self.check_length,
            self.extend_chunk,
            self.commit_chunk,
            self.stitch_section,
            self.finalize,
            self.add_continuation,
            self.fail_job,
        ]

    # -- plan ----------------------------------------------------------------------------------
    @activity.defn(name="plan_job")
    async def plan_job(self, ref: JobRef) -> PlanResult:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            opts = _opts(job)
            if job.sections_total > 0:  # planned by an earlier attempt or run
                return self._plan_result(job, opts)
            if job.status == "queued":
                job.status, job.started_at = "running", _now()
            job.current_step = "planning"
            tx.event("job", "running", {"step": "planning"})
            kind, prompt, target, title, model = job.kind, job.prompt or "", job.target_words, job.title, job.model
            source = None
            if kind == "rewrite":
                source = (
                    await tx.session.execute(
                        select(Document.text).where(Document.job_id == jid, Document.role == "input")
                    )
                ).scalar_one()
        chunk_words = int(opts["chunk_words"])
        n_sections = planned_section_count(target, chunk_words)
        document_style = self.llm.prompt_style == "document"
        if source is not None:
            opening, headings = opening_and_headings(source)
            input_words = count_words(source)
            doc_title = title or (headings[0] if headings else source.strip().splitlines()[0][:120])
            lead = " ".join(opening.split()[:250])

            def make(err: str | None) -> list[dict[str, str]]:
                if document_style:
                    return outline_messages(doc_title, lead, n_sections, err)
                return rewrite_plan_messages(opening, headings, target, input_words, err)
        else:
            # A brief's first clause makes a title; the whole brief stays the thesis.
            doc_title = title or re.split(r"[:.;\n]", prompt.strip(), maxsplit=1)[0][:120].strip() or "Untitled"
            lead = prompt

            def make(err: str | None) -> list[dict[str, str]]:
                if document_style:
                    return outline_messages(doc_title, lead, n_sections, err)
                return plan_messages(prompt, target, n_sections, err)

        plan, plan_source, errors = None, "model", []
        for attempt in (1, 2):  # once, then once more with the validation error
            res = await self.llm.complete(
                job_id=jid,
                purpose="plan",
                request_key=f"plan:{attempt}",
                model=model,
                messages=make(errors[-1] if errors else None),
                max_tokens=(40 + 24 * min(n_sections, 24))
                if document_style
                else min(4096, 300 + 120 * min(n_sections, 24)),
                temperature=0.4,
                json_mode=not document_style,
            )
            try:
                if document_style:
                    plan = parse_outline(res.text, doc_title, lead[:1000], n_sections)
                else:
                    plan = parse_plan(res.text)
                break
            except ValueError as exc:
                errors.append(str(exc))
        if plan is None:
            plan_source = "fallback"
            plan = fallback_plan(prompt or (source or "")[:2000], n_sections, title)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            if job.sections_total > 0:
                return self._plan_result(job, opts)
            total = min(job.max_words, max(target, math.ceil(target * HEADROOM)))
            if source is not None:
                layout = self._rewrite_layout(source, total, chunk_words, plan.model_dump())
            else:
                layout = self._generate_layout(total, chunk_words, n_sections, plan.model_dump())
            skeleton = plan.model_dump()
            skeleton["sections"] = [{"title": s["title"], "summary": s["summary"]} for s in layout]
            job.skeleton = skeleton
            if not job.title:
                job.title = plan.title[:300]
            root = CoherenceState(
                job_id=jid,
                ordinal=0,
                parent_id=None,
                summary=plan.thesis[:2000],
                glossary=plan.glossary,
                open_threads=[],
                delta={"source": plan_source},
            )
            tx.session.add(root)
            ordinal = 0
            for si, sec in enumerate(layout):
                section = Section(
                    job_id=jid,
                    ordinal=si,
                    title=sec["title"],
                    summary=sec["summary"],
                    key_points=sec["key_points"],
                    target_words=sum(c["target"] for c in sec["chunks"]),
                )
                tx.session.add(section)
                await tx.session.flush()
                for ci, c in enumerate(sec["chunks"]):
                    tx.session.add(
                        Chunk(
                            job_id=jid,
                            section_id=section.id,
                            ordinal=ordinal,
                            index_in_section=ci,
                            brief=c["brief"],
                            source_text=c.get("source"),
                            target_words=c["target"],
                            min_words=c["target"],
                            max_words=max(c["target"], math.floor(c["target"] * CHUNK_SLACK)),
                        )
                    )
                    ordinal += 1
            job.sections_total, job.chunks_total = len(layout), ordinal
            job.current_step = "writing"
            tx.event(
                "plan",
                "created",
                {
                    "source": plan_source,
                    "errors": errors,
                    "sections": len(layout),
                    "chunks": ordinal,
                    "planned_words": total,
                    "target_words": target,
                    "max_words": job.max_words,
                    "title": job.title,
                },
            )
            return self._plan_result(job, opts)

    @staticmethod
    def _plan_result(job: Job, opts: dict[str, Any]) -> PlanResult:
        return PlanResult(
            sections=job.sections_total,
            chunks=job.chunks_total,
            max_attempts_per_chunk=opts["max_attempts_per_chunk"],
            max_rounds=opts["max_rounds"],
            max_wall_seconds=opts["max_wall_seconds"],
        )

    @staticmethod
    def _generate_layout(total: int, chunk_words: int, n_sections: int, plan: dict[str, Any]) -> list[dict[str, Any]]:
        planned = plan["sections"]
        out = []
        for si, budget in enumerate(_budgets(total, n_sections)):
            base = planned[si * len(planned) // n_sections]
            repeat = n_sections > len(planned)
            part = si - (si * len(planned) // n_sections) * n_sections // len(planned)
            title = base["title"] + (f" ({part + 1})" if repeat and part > 0 else "")
            n_chunks = max(1, round(budget / chunk_words)) if budget >= 1 else 1
            targets = [t for t in _budgets(budget, n_chunks) if t > 0] or [1]
            points = base.get("key_points") or []
            chunks = [
                {"target": t, "brief": points[ci % len(points)] if points else ""} for ci, t in enumerate(targets)
            ]
            out.append({"title": title, "summary": base.get("summary", ""), "key_points": points, "chunks": chunks})
        return out

    @staticmethod
    def _rewrite_layout(source: str, total: int, chunk_words: int, plan: dict[str, Any]) -> list[dict[str, Any]]:
        input_words = max(1, count_words(source))
        # Input part size chosen so each chunk's output is about chunk_words.
        part_words = max(100, min(2500, round(chunk_words * input_words / max(1, total))))
        parts = split_parts(source, part_words)
        weights = [max(1, count_words(p)) for p in parts]
        wsum = sum(weights)
        chunks: list[dict[str, Any]] = []
        for p, w in zip(parts, weights, strict=True):
            share = math.ceil(total * w / wsum)
            n = max(1, math.ceil(share / (chunk_words * 1.5)))  # expanding a lot: several chunks per part
            for j, t in enumerate(_budgets(share, n)):
                brief = "" if n == 1 else f"part {j + 1} of {n} of the rewrite of this source passage"
                chunks.append({"target": max(1, t), "brief": brief, "source": p})
        planned = plan["sections"]
        out = []
        for si in range(0, len(chunks), CHUNKS_PER_SECTION):
            k = si // CHUNKS_PER_SECTION
            group = chunks[si : si + CHUNKS_PER_SECTION]
            heading = next(
                (ln.strip("# ").strip() for c in group for ln in c["source"].splitlines() if ln.startswith("#")), None
            )
            base = planned[k] if k < len(planned) else {"title": f"Part {k + 1}", "summary": "", "key_points": []}
            out.append(
                {
                    "title": heading or base["title"],
                    "summary": base.get("summary", ""),
                    "key_points": base.get("key_points") or [],
                    "chunks": group,
                }
            )
        return out

    # -- sections and chunks -----------------------------------------------------------------
    @activity.defn(name="section_chunks")
    async def section_chunks(self, ref: SectionRef) -> SectionChunks:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            await _job(tx, jid)
            section = (
                await tx.session.execute(select(Section).where(Section.job_id == jid, Section.ordinal == ref.section))
            ).scalar_one()
            ids = (
                await tx.session.execute(
                    select(Chunk.id).where(Chunk.section_id == section.id).order_by(Chunk.index_in_section)
                )
            ).scalars()
            if section.status == "pending":
                section.status = "writing"
            return SectionChunks(list(ids))

    async def _context(self, tx: JobTx, job: Job, chunk: Chunk) -> tuple[ChunkContext, CoherenceState]:
        """What a chunk is written from: skeleton, section plan, the state before, the tail."""
        section = await tx.session.get(Section, chunk.section_id)
        assert section is not None
        if chunk.ordinal == 0:
            state = (
                await tx.session.execute(
                    select(CoherenceState).where(CoherenceState.job_id == job.id, CoherenceState.ordinal == 0)
                )
            ).scalar_one()
            prev_text = ""
        else:
            prev = (
                await tx.session.execute(
                    select(Chunk).where(Chunk.job_id == job.id, Chunk.ordinal == chunk.ordinal - 1)
                )
            ).scalar_one()
            if prev.status != "done" or prev.state_after_id is None:
                raise RuntimeError(f"chunk {chunk.ordinal} cannot start: chunk {prev.ordinal} is not done")
            state = await tx.session.get(CoherenceState, prev.state_after_id)
            assert state is not None
            prev_text = prev.text or ""
        sec_index = section.ordinal
        sections = job.skeleton.get("sections", [])
        title = section.title
        if section.is_continuation:  # top-ups continue the last planned section
            sec_index = max(0, len(sections) - 1)
            title = sections[sec_index]["title"] if sections else section.title
        ctx = ChunkContext(
            plan=job.skeleton,
            section_index=sec_index,
            section_title=title,
            section_summary=section.summary,
            key_points=list(section.key_points or []),
            state_summary=state.summary,
            glossary=dict(state.glossary or {}),
            open_threads=list(state.open_threads or []),
            brief=chunk.brief,
            source_text=chunk.source_text,
            previous_tail=tail_words(prev_text, 120),
        )
        return ctx, state

    @staticmethod
    def _status(chunk: Chunk, passed: bool = False, stalled: bool = False) -> ChunkStatus:
        return ChunkStatus(
            words=chunk.word_count, min_words=chunk.min_words, attempts=chunk.attempts, passed=passed, stalled=stalled
        )

    @activity.defn(name="write_chunk")
    async def write_chunk(self, ref: ChunkRef) -> ChunkStatus:
        return await self._attempt(ref, "write")

    @activity.defn(name="extend_chunk")
    async def extend_chunk(self, ref: ChunkRef) -> ChunkStatus:
        return await self._attempt(ref, "extend")

    async def _attempt(self, ref: ChunkRef, kind: str) -> ChunkStatus:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            chunk = await tx.session.get(Chunk, ref.chunk_id)
            assert chunk is not None and chunk.job_id == jid
            if chunk.attempts >= ref.attempt_no or chunk.status == "done":
                return self._status(chunk)  # this attempt is already stored
            current = chunk.text or ""
            words_before = chunk.word_count
            model = job.model
            need = chunk.target_words if kind == "write" else max(1, chunk.target_words - words_before)
            ask = math.ceil(need / await self._compliance(tx, jid))
            ctx, state = await self._context(tx, job, chunk)
            msgs = chunk_messages(
                ctx, style=self.llm.prompt_style, words=ask, current_text=current if kind == "extend" else ""
            )
            if chunk.status == "pending":
                chunk.status, chunk.state_before_id = "writing", state.id
            job.current_step = f"{kind} chunk {chunk.ordinal + 1}/{job.chunks_total}"
        res = await self.llm.complete(
            job_id=jid,
            chunk_id=ref.chunk_id,
            purpose=kind,
            request_key=f"chunk:{ref.chunk_id}:attempt:{ref.attempt_no}",
            model=model,
            messages=msgs,
            max_tokens=max_tokens_for(max(ask, 8)),
        )
        added = clean_model_text(res.text, echo_of="\n".join(m["content"] for m in msgs))
        async with self.db.job_tx(jid) as tx:
            await _job(tx, jid)
            chunk = await tx.session.get(Chunk, ref.chunk_id)
            assert chunk is not None
            if chunk.attempts >= ref.attempt_no:
                return self._status(chunk)
            text_after = join_continuation(current, added) if kind == "extend" else added
            words_after = count_words(text_after)
            tx.session.add(
                ChunkAttempt(
                    job_id=jid,
                    chunk_id=chunk.id,
                    attempt_no=ref.attempt_no,
                    kind=kind,
                    llm_call_id=res.call_id,
                    words_asked=ask,
                    added_text=added,
                    text_after=text_after,
                    words_before=words_before,
                    words_added=words_after - words_before,
                    words_after=words_after,
                )
            )
            chunk.text, chunk.word_count, chunk.attempts = text_after, words_after, ref.attempt_no
            tx.event(
                "chunk",
                kind,
                {
                    "chunk": chunk.ordinal,
                    "attempt": ref.attempt_no,
                    "words_in": words_before,
                    "words_out": words_after,
                    "words_added": words_after - words_before,
                    "target_words": chunk.target_words,
                    "min_words": chunk.min_words,
                    "words_asked": ask,
                    "finish_reason": res.finish_reason,
                    "llm_call_id": res.call_id,
                    "truncated": res.finish_reason == "length",
                },
            )
            return self._status(chunk)

    @staticmethod
    async def _compliance(tx: JobTx, jid: uuid.UUID) -> float:
        """How much of what it is asked for this model writes, from this job's recent attempts.

        Small models stop at 30-60% of the asked length; asking for need/compliance makes a
        chunk pass in one or two calls instead of a long tail of shrinking extensions. Bounded
        so one odd answer cannot make Quire ask for far too much.
        """
        rows = (
            await tx.session.execute(
                select(ChunkAttempt.words_added, ChunkAttempt.words_asked)
                .where(
                    ChunkAttempt.job_id == jid, ChunkAttempt.kind.in_(["write", "extend"]), ChunkAttempt.words_asked > 0
                )
                .order_by(ChunkAttempt.id.desc())
                .limit(20)
            )
        ).all()
        asked = sum(r.words_asked for r in rows)
        if asked < 50:
            return 1.0
        return min(1.0, max(MIN_COMPLIANCE, sum(max(0, r.words_added) for r in rows) / asked))

    @activity.defn(name="check_length")
    async def check_length(self, ref: ChunkRef) -> ChunkStatus:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            chunk = await tx.session.get(Chunk, ref.chunk_id)
            assert chunk is not None
            words = count_words(chunk.text or "")
            passed = words >= chunk.min_words
            attempts = (
                (
                    await tx.session.execute(
                        select(ChunkAttempt.words_added)
                        .where(ChunkAttempt.chunk_id == chunk.id)
                        .order_by(ChunkAttempt.attempt_no)
                    )
                )
                .scalars()
                .all()
            )
            max_attempts = int(_opts(job)["max_attempts_per_chunk"])
            # Two attempts in a row that added nothing: the model has stopped; finalize tops up.
            stalled = not passed and (
                len(attempts) >= max_attempts or (len(attempts) >= 2 and attempts[-1] <= 0 and attempts[-2] <= 0)
            )
            existing = (
                await tx.session.execute(
                    select(LengthCheck).where(
                        LengthCheck.job_id == jid,
                        LengthCheck.scope == "chunk",
                        LengthCheck.chunk_id == chunk.id,
                        LengthCheck.round == ref.attempt_no,
                    )
                )
            ).scalar_one_or_none()
            if existing is None:
                tx.session.add(
                    LengthCheck(
                        job_id=jid,
                        chunk_id=chunk.id,
                        scope="chunk",
                        round=ref.attempt_no,
                        words=words,
                        min_words=chunk.min_words,
                        target_words=chunk.target_words,
                        max_words=chunk.max_words,
                        passed=passed,
                    )
                )
                tx.event(
                    "length",
                    "pass" if passed else "fail",
                    {
                        "scope": "chunk",
                        "chunk": chunk.ordinal,
                        "attempt": ref.attempt_no,
                        "words": words,
                        "min_words": chunk.min_words,
                        "target_words": chunk.target_words,
                        "passed": passed,
                        "stalled": stalled,
                    },
                )
            return self._status(chunk, passed=passed, stalled=stalled)

    @activity.defn(name="commit_chunk")
    async def commit_chunk(self, ref: ChunkRef) -> None:
        """Accept a chunk: dedupe and trim it, then fold its delta into the next coherence state."""
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            chunk = await tx.session.get(Chunk, ref.chunk_id)
            assert chunk is not None
            if chunk.status == "done":
                return
            text = _dedupe(chunk.text or "")
            if count_words(text) > chunk.max_words:
                text = trim_to_words(text, chunk.max_words, chunk.min_words)
            if text != (chunk.text or ""):
                n = chunk.attempts + 1
                tx.session.add(
                    ChunkAttempt(
                        job_id=jid,
                        chunk_id=chunk.id,
                        attempt_no=n,
                        kind="trim",
                        llm_call_id=None,
                        added_text="",
                        text_after=text,
                        words_before=chunk.word_count,
                        words_added=count_words(text) - chunk.word_count,
                        words_after=count_words(text),
                    )
                )
                chunk.attempts = n
            before = await tx.session.get(CoherenceState, chunk.state_before_id)
            assert before is not None
            d = delta(text, dict(before.glossary or {}))
            summary, glossary, threads = fold(
                before.summary,
                dict(before.glossary or {}),
                list(before.open_threads or []),
                d,
                f"chunk {chunk.ordinal + 1}",
            )
            after = CoherenceState(
                job_id=jid,
                ordinal=chunk.ordinal + 1,
                parent_id=before.id,
                summary=summary,
                glossary=glossary,
                open_threads=threads,
                delta=d,
            )
            tx.session.add(after)
            await tx.session.flush()
            chunk.text, chunk.word_count = text, count_words(text)
            chunk.state_after_id, chunk.status, chunk.completed_at = after.id, "done", _now()
            await tx.session.flush()
            job.chunks_done = job.chunks_done + 1
            job.words_written = (
                await tx.session.execute(
                    select(func.coalesce(func.sum(Chunk.word_count), 0)).where(Chunk.job_id == jid)
                )
            ).scalar_one()
            tx.event(
                "chunk",
                "done",
                {
                    "chunk": chunk.ordinal,
                    "words": chunk.word_count,
                    "target_words": chunk.target_words,
                    "min_words": chunk.min_words,
                    "max_words": chunk.max_words,
                    "attempts": chunk.attempts,
                    "passed": chunk.word_count >= chunk.min_words,
                    "state_before": before.id,
                    "state_after": after.id,
                    "new_terms": d["new_terms"],
                },
            )

    # -- stitch --------------------------------------------------------------------------------
    @activity.defn(name="stitch_section")
    async def stitch_section(self, ref: SectionRef) -> None:
        jid = uuid.UUID(ref.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            section = (
                await tx.session.execute(select(Section).where(Section.job_id == jid, Section.ordinal == ref.section))
            ).scalar_one()
            if (
                await tx.session.execute(
                    select(StitchResult.id).where(StitchResult.job_id == jid, StitchResult.section_id == section.id)
                )
            ).first():
                return
            chunks = (
                (await tx.session.execute(select(Chunk).where(Chunk.section_id == section.id).order_by(Chunk.ordinal)))
                .scalars()
                .all()
            )
            if not chunks:
                return
            first = chunks[0].ordinal
            # Earlier text in a window of a few sections: enough to catch repeats, bounded at scale.
            earlier = (
                await tx.session.execute(
                    select(Chunk.ordinal, Chunk.text)
                    .where(Chunk.job_id == jid, Chunk.ordinal < first, Chunk.ordinal >= first - 3 * CHUNKS_PER_SECTION)
                    .order_by(Chunk.ordinal)
                )
            ).all()
            seen = {normalize_paragraph(p) for _, t in earlier[:-1] for p in paragraphs(t or "")}
            glossary = (await tx.session.get(CoherenceState, chunks[-1].state_after_id)).glossary or {}  # type: ignore[union-attr]
            window = ([(earlier[-1][0], earlier[-1][1] or "")] if earlier else []) + [
                (c.ordinal, c.text or "") for c in chunks
            ]
            issues = seam_issues(window, glossary, job.sections_total, seen)
            repair_with_model = bool(_opts(job)["stitch_repairs_with_model"])
            texts = {c.ordinal: c.text or "" for c in chunks}
            if earlier:
                texts[earlier[-1][0]] = earlier[-1][1] or ""
            model = job.model
        bridges: dict[int, str] = {}
        for issue in [i for i in issues if i["type"] == "broken_seam"][:3]:
            if not repair_with_model:
                break
            left = texts[issue["chunk"]]
            res = await self.llm.complete(
                job_id=jid,
                purpose="stitch",
                request_key=f"stitch:{section.id}:{issue['chunk']}",
                model=model,
                messages=[
                    {"role": "system", "content": "You finish sentences in documents. Write only the words."},
                    {
                        "role": "user",
                        "content": f'The passage ends mid-sentence:\n"…{tail_words(left, 60)}"\n\n'
                        "Finish that sentence in about 12 words.",
                    },
                ],
                max_tokens=48,
                temperature=0.3,
            )
            bridge = clean_model_text(res.text).split("\n")[0].strip()
            if bridge:
                bridges[issue["chunk"]] = bridge if bridge[-1] in ".!?" else bridge + "."
        async with self.db.job_tx(jid) as tx:
            await _job(tx, jid)
            if (
                await tx.session.execute(
                    select(StitchResult.id).where(StitchResult.job_id == jid, StitchResult.section_id == section.id)
                )
            ).first():
                return
            rows = {
                c.ordinal: c
                for c in (
                    await tx.session.execute(select(Chunk).where(Chunk.job_id == jid, Chunk.ordinal.in_(list(texts))))
                ).scalars()
            }
            words_before = sum(r.word_count for r in rows.values())
            repairs: list[dict[str, Any]] = []
            for issue in issues:
                row = rows.get(issue["chunk"])
                if row is None or row.section_id != section.id and issue["type"] != "broken_seam":
                    continue
                if issue["type"] == "repeated_paragraph":
                    row.text = remove_paragraph(row.text or "", issue["text"])
                    repairs.append({"type": "removed_repeated_paragraph", "chunk": row.ordinal})
                elif issue["type"] == "glossary_drift":
                    row.text = fix_term(row.text or "", issue["term"], issue["found"])
                    repairs.append({"type": "normalised_term", "chunk": row.ordinal, "term": issue["term"]})
                elif issue["type"] == "broken_seam" and issue["chunk"] in bridges:
                    row.text = join_continuation(row.text or "", bridges[issue["chunk"]])
                    repairs.append({"type": "bridged_seam", "chunk": row.ordinal, "text": bridges[issue["chunk"]]})
            for row in rows.values():
                row.word_count = count_words(row.text or "")
            words_after = sum(r.word_count for r in rows.values())
            tx.session.add(
                StitchResult(
                    job_id=jid,
                    section_id=section.id,
                    issues=issues,
                    repairs=repairs,
                    words_before=words_before,
                    words_after=words_after,
                )
            )
            fresh = await tx.session.get(Section, section.id)
            assert fresh is not None
            fresh.status = "done"
            tx.event(
                "stitch",
                "section",
                {
                    "section": section.ordinal,
                    "issues": len(issues),
                    "repairs": len(repairs),
                    "words_before": words_before,
                    "words_after": words_after,
                    "issue_types": sorted({i["type"] for i in issues}),
                },
            )

    # -- finalize ------------------------------------------------------------------------------
    async def _assemble(self, tx: JobTx, job: Job) -> str:
        sections = (
            (await tx.session.execute(select(Section).where(Section.job_id == job.id).order_by(Section.ordinal)))
            .scalars()
            .all()
        )
        chunk_rows = (
            await tx.session.execute(
                select(Chunk.section_id, Chunk.text).where(Chunk.job_id == job.id).order_by(Chunk.ordinal)
            )
        ).all()
        by_section: dict[int, list[str]] = {}
        for sid, text in chunk_rows:
            if text and text.strip():
                by_section.setdefault(sid, []).append(text.strip())
        headings = job.target_words >= HEADINGS_FROM_WORDS
        out: list[str] = [f"# {job.title}"] if headings and job.title else []
        for s in sections:
            body = by_section.get(s.id, [])
            if headings and not s.is_continuation and body:
                out.append(f"## {s.title}")
            out.extend(body)
        return "\n\n".join(out) + "\n"

    @activity.defn(name="finalize")
    async def finalize(self, inp: FinalizeInput) -> FinalizeResult:
        jid = uuid.UUID(inp.job_id)
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid, allow_terminal=True)
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
            job.current_step = f"finalize round {inp.round}"
            doc = await self._assemble(tx, job)
            if count_words(doc) > job.max_words:
                doc = trim_to_words(doc, job.max_words, job.target_words).rstrip() + "\n"
            words = count_words(doc)
            passed = words >= job.target_words
            prev = (
                await tx.session.execute(
                    select(LengthCheck.words).where(
                        LengthCheck.job_id == jid, LengthCheck.scope == "final", LengthCheck.round == inp.round - 1
                    )
                )
            ).scalar_one_or_none()
            existing = (
                await tx.session.execute(
                    select(LengthCheck.id).where(
                        LengthCheck.job_id == jid, LengthCheck.scope == "final", LengthCheck.round == inp.round
                    )
                )
            ).first()
            if existing is None:
                tx.session.add(
                    LengthCheck(
                        job_id=jid,
                        chunk_id=None,
                        scope="final",
                        round=inp.round,
                        words=words,
                        min_words=job.target_words,
                        target_words=job.target_words,
                        max_words=job.max_words,
                        passed=passed,
                    )
                )
            tx.event(
                "length",
                "pass" if passed else "fail",
                {
                    "scope": "final",
                    "round": inp.round,
                    "words": words,
                    "target_words": job.target_words,
                    "max_words": job.max_words,
                    "passed": passed,
                },
            )
            if passed:
                tx.session.add(
                    Document(job_id=jid, role="output", version=1, text=doc, sha256=sha256(doc), word_count=words)
                )
                job.status, job.completed_at, job.current_step, job.words_written = "succeeded", _now(), "done", words
                tx.event(
                    "job",
                    "succeeded",
                    {"words": words, "target_words": job.target_words, "rounds": inp.round, "sha256": sha256(doc)},
                )
                return FinalizeResult(True, words, job.target_words)
            opts = _opts(job)
            tokens = (
                await tx.session.execute(
                    select(
                        func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0)
                    ).where(LlmCall.job_id == jid)
                )
            ).scalar_one()
            elapsed = (_now() - (job.started_at or job.created_at)).total_seconds()
            code = reason = None
            stats = await self._stats(tx, jid)
            base = (
                f"the output has {words} of the {job.target_words} words asked for after {inp.round} "
                f"top-up round(s), {stats['attempts']} chunk attempts and {stats['calls']} model calls "
                f"({stats['empty']} empty answers, {stats['failed']} failed calls)"
            )
            if opts["max_tokens"] is not None and tokens >= opts["max_tokens"]:
                code, reason = "E_BUDGET_EXHAUSTED", f"token budget of {opts['max_tokens']} used up ({tokens}): {base}"
            elif elapsed >= opts["max_wall_seconds"]:
                code, reason = "E_BUDGET_EXHAUSTED", f"time budget of {opts['max_wall_seconds']} s used up: {base}"
            elif inp.round >= opts["max_rounds"]:
                code, reason = "E_LENGTH_NOT_MET", f"{base}; no top-up rounds left (max_rounds={opts['max_rounds']})"
            elif prev is not None and words <= prev:
                code, reason = (
                    "E_LENGTH_NOT_MET",
                    f"{base}; the last top-up added no words, so the model is not producing usable text",
                )
            version = inp.round + 1
            if (
                await tx.session.execute(
                    select(Document.id).where(
                        Document.job_id == jid, Document.role == "partial", Document.version == version
                    )
                )
            ).first() is None:
                tx.session.add(
                    Document(
                        job_id=jid, role="partial", version=version, text=doc, sha256=sha256(doc), word_count=words
                    )
                )
            if code is not None:
                job.status, job.completed_at, job.error_code, job.failure_reason = "failed", _now(), code, reason
                job.current_step = "failed"
                tx.event("job", "failed", {"error_code": code, "reason": reason, "words": words})
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

    @staticmethod
    async def _stats(tx: JobTx, jid: uuid.UUID) -> dict[str, int]:
        attempts = (
            await tx.session.execute(select(func.count()).select_from(ChunkAttempt).where(ChunkAttempt.job_id == jid))
        ).scalar_one()
        calls, failed, empty = (
            await tx.session.execute(
                select(
                    func.count(),
                    func.count().filter(LlmCall.status == "error"),
                    func.count().filter(LlmCall.error == "empty content"),
                ).where(LlmCall.job_id == jid)
            )
        ).one()
        return {"attempts": attempts, "calls": calls, "failed": failed, "empty": empty}

    @activity.defn(name="add_continuation")
    async def add_continuation(self, inp: ContinuationInput) -> int:
        """A top-up section covering the deficit of the last final check; returns its ordinal."""
        jid = uuid.UUID(inp.job_id)
        title = f"continuation {inp.round + 1}"
        async with self.db.job_tx(jid) as tx:
            job = await _job(tx, jid)
            existing = (
                await tx.session.execute(
                    select(Section).where(Section.job_id == jid, Section.is_continuation, Section.title == title)
                )
            ).scalar_one_or_none()
            if existing is not None:
                return existing.ordinal
            words = (
                await tx.session.execute(
                    select(LengthCheck.words).where(
                        LengthCheck.job_id == jid, LengthCheck.scope == "final", LengthCheck.round == inp.round
                    )
                )
            ).scalar_one()
            deficit = max(1, job.target_words - words)
            # Aim a little over the deficit (stitch may remove text) without passing max_words.
            budget = min(math.ceil(deficit * 1.1) + 10, max(deficit, job.max_words - words))
            chunk_words = int(_opts(job)["chunk_words"])
            n = max(1, math.ceil(budget / chunk_words))
            ordinal = (
                await tx.session.execute(select(func.max(Section.ordinal)).where(Section.job_id == jid))
            ).scalar_one() + 1
            next_chunk = (
                await tx.session.execute(select(func.max(Chunk.ordinal)).where(Chunk.job_id == jid))
            ).scalar_one() + 1
            section = Section(
                job_id=jid,
                ordinal=ordinal,
                title=title,
                summary="Continue and deepen the document.",
                key_points=[],
                target_words=budget,
                is_continuation=True,
            )
            tx.session.add(section)
            await tx.session.flush()
            for i, t in enumerate(_budgets(budget, n)):
                tx.session.add(
                    Chunk(
                        job_id=jid,
                        section_id=section.id,
                        ordinal=next_chunk + i,
                        index_in_section=i,
                        brief="",
                        target_words=max(1, t),
                        min_words=max(1, t),
                        max_words=max(1, math.floor(t * CHUNK_SLACK)),
                    )
                )
            job.sections_total += 1
            job.chunks_total += n
            job.finalize_rounds = inp.round + 1
            tx.event(
                "job",
                "top_up",
                {"round": inp.round + 1, "deficit": deficit, "planned_words": budget, "chunks": n, "section": ordinal},
            )
            return ordinal

    @activity.defn(name="fail_job")
    async def fail_job(self, inp: FailInput) -> None:
        jid = uuid.UUID(inp.job_id)
        try:
            async with self.db.job_tx(jid) as tx:
                job = await _job(tx, jid, allow_terminal=True)
                if job.status in TERMINAL_STATUSES:
                    return
                doc = await self._assemble(tx, job)
                words = count_words(doc)
                version = (
                    1
                    + (
                        await tx.session.execute(
                            select(func.coalesce(func.max(Document.version), 0)).where(
                                Document.job_id == jid, Document.role == "partial"
                            )
                        )
                    ).scalar_one()
                )
                tx.session.add(
                    Document(
                        job_id=jid, role="partial", version=version, text=doc, sha256=sha256(doc), word_count=words
                    )
                )
                job.status, job.completed_at = inp.status, _now()
                job.error_code, job.failure_reason = inp.error_code, inp.reason
                job.current_step = inp.status
                tx.event("job", inp.status, {"error_code": inp.error_code, "reason": inp.reason, "words": words})
                if inp.status == "failed":
                    tx.event("error", "job", {"error_code": inp.error_code, "reason": inp.reason})
        except JobGone:
            log.info("fail_job.job_deleted", job_id=inp.job_id)


def _dedupe(text: str) -> str:
    """Drop paragraphs a model repeated within one chunk (repetition loops)."""
    seen: set[str] = set()
    out = []
    for p in paragraphs(text):
        key = normalize_paragraph(p)
        if key and key in seen and count_words(p) >= 5:
            continue
        seen.add(key)
        out.append(p)
    return "\n\n".join(out)
