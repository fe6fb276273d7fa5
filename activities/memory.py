"""The story memory, read and written: the ledger as a chunk sees it (document order: only what
comes before it), the book so far in summaries, the memory call (a passage's delta and the
judge's contradictions, validated, retried once with the error, else the deterministic
extractor's), the continuity checks and their repairs, and the rows all of that becomes.

Used by the chunk step (a chunk is remembered and checked before it is committed), the seam step
(a chapter written in parallel is checked against its predecessor's real end) and the plan step
(the plan's glossary is the ledger's first entries).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Text, and_, cast, func, literal, null, or_, select, text, union_all

from activities.gating import clean
from activities.llm import Call, LlmClient, LlmResult
from activities.prompts import memory_messages, repair_messages, summary_messages
from core.continuity import Finding, apply_fixes, check, needs_repair, paragraph_of
from core.memory import (
    ChunkMemory,
    Entry,
    Ledger,
    NewEntry,
    Summary,
    entity_line,
    entries_of,
    extract,
    fold,
    key_of,
    merge,
    norm,
    parse_memory,
    tokens,
)
from core.text import count_words, paragraphs
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, LedgerEntry, NodeSummary, PlanNode
from db.session import JobTx

JUDGE_TOKENS = 300  # ledger entries shown to the judge with a passage
MAX_REPAIR_ROUNDS = 2  # a finding still there after this many rewrites stays open
SUMMARY_WORDS = 100


# -- reading ------------------------------------------------------------------------------------


async def ledger_before(tx: JobTx, doc_order: int) -> Ledger:
    """The ledger as a chunk at ``doc_order`` sees it: the plan's entries and those of the
    current memory version of every chunk before it in the document (never a later one's,
    whatever the clock says)."""
    rows = (
        await tx.session.execute(
            select(
                LedgerEntry.id,
                LedgerEntry.kind,
                LedgerEntry.key,
                LedgerEntry.name,
                LedgerEntry.value,
                LedgerEntry.quote,
                LedgerEntry.doc_order,
                LedgerEntry.attribute,
                LedgerEntry.etype,
                LedgerEntry.when_,
                LedgerEntry.chunk_version_id,
                LedgerEntry.source,
            )
            .outerjoin(Chunk, Chunk.id == LedgerEntry.chunk_id)
            .where(
                LedgerEntry.job_id == tx.job_id,
                LedgerEntry.doc_order < doc_order,
                or_(LedgerEntry.chunk_id.is_(None), LedgerEntry.chunk_version_id == Chunk.memory_version_id),
            )
        )
    ).all()
    return fold(
        Entry(
            id=r.id,
            kind=r.kind,
            key=r.key,
            name=r.name,
            value=r.value,
            quote=r.quote,
            doc_order=r.doc_order,
            attribute=r.attribute,
            etype=r.etype,
            when=r.when_,
            chunk_version_id=r.chunk_version_id,
            source=r.source,
        )
        for r in rows
    )


async def summaries_before(tx: JobTx, chunk: Chunk, path: list[PlanNode] | None = None) -> list[Summary]:
    """The book before a chunk, one line per stretch at the coarsest level that covers it,
    oldest first: earlier parts, then earlier chapters of this part (or of the book), each by its
    summary or, not written yet (a chapter still being written in parallel), its plan synopsis;
    then the chunks before it in its own chapter, by their states' summaries. ``path``: the plan
    nodes above the chunk's section and the section, outermost first (``plan_path``), when the
    caller has read them."""
    chain: list[PlanNode] = []  # the unit and the nodes above it, up to the book (excluded)
    if path is not None:
        ids = [n.id for n in path]
        chain = list(reversed(path[: ids.index(chunk.unit_id) + 1])) if chunk.unit_id in ids else []
    elif chunk.unit_id:
        cur = await tx.session.get(PlanNode, chunk.unit_id)
        while cur is not None and cur.level != "book":
            chain.append(cur)
            cur = await tx.session.get(PlanNode, cur.parent_id) if cur.parent_id else None
    # The chunks before it in its chapter (after the unit's first chunk), by their states' summaries.
    first = select(func.min(Chunk.ordinal)).where(Chunk.unit_id == chunk.unit_id).scalar_subquery()
    q = select(
        literal(1).label("k"),
        literal(0).label("a"),
        CoherenceState.ordinal.label("b"),
        cast(null(), BigInteger).label("node"),
        literal("chunk").label("level"),
        cast(null(), Text).label("title"),
        cast(null(), Text).label("purpose"),
        cast(null(), BigInteger).label("summary_id"),
        CoherenceState.summary.label("summary"),
    ).where(
        CoherenceState.job_id == tx.job_id,
        CoherenceState.kind == "chunk",
        CoherenceState.ordinal > func.coalesce(first, chunk.ordinal),
        CoherenceState.ordinal <= chunk.ordinal,
    )
    if chain:  # and before them, every level above in the same statement: earlier parts, then chapters
        latest = (
            select(NodeSummary.node_id, func.max(NodeSummary.version).label("v"))
            .where(NodeSummary.job_id == tx.job_id)
            .group_by(NodeSummary.node_id)
            .subquery()
        )
        nodes = (
            select(literal(0), PlanNode.depth, PlanNode.position, PlanNode.id, PlanNode.level, PlanNode.title)
            .add_columns(PlanNode.purpose, NodeSummary.id, NodeSummary.summary)
            .outerjoin(latest, latest.c.node_id == PlanNode.id)
            .outerjoin(NodeSummary, and_(NodeSummary.node_id == PlanNode.id, NodeSummary.version == latest.c.v))
            .where(
                PlanNode.job_id == tx.job_id,
                PlanNode.is_continuation.is_(False),
                or_(*[and_(PlanNode.parent_id == n.parent_id, PlanNode.position < n.position) for n in chain]),
            )
        )
        q = union_all(nodes, q)  # type: ignore[assignment]
    rows = (await tx.session.execute(q.order_by(text("1, 2, 3")))).all()
    out: list[Summary] = []
    for k, _, ordinal, nid, level, title, purpose, sid, summary in rows:
        if k == 0:
            out.append(Summary(level, title or "", summary or purpose or "", nid, sid, planned=summary is None))
        elif summary:
            out.append(Summary("chunk", "", summary, ordinal - 1))
    return out


def judge_entries(ledger: Ledger, passage: str, budget: int = JUDGE_TOKENS) -> list[tuple[str, str]]:
    """The ledger entries a judge sees beside a passage, with their refs: the entities the
    passage names (and their attributes), then the open threads and facts, within ``budget``."""
    text = f" {norm(passage)} "
    out: list[tuple[str, str]] = []
    left = budget
    for v in sorted(ledger.entities.values(), key=lambda v: -v.last_seen):
        if f" {v.key} " not in text:
            continue
        lines = [(v.intro.ref, entity_line(v))]
        lines += [(a.ref, f"{v.name}'s {a.attribute}: {a.value}") for a in v.attributes.values()]
        for ref, line in lines:
            if tokens(line) + 3 <= left:
                out.append((ref, line))
                left -= tokens(line) + 3
    for e in [*ledger.open_threads.values(), *reversed(ledger.facts)]:
        line = ("open thread: " if e.kind == "thread" else "fact: ") + e.value
        if tokens(line) + 3 <= left:
            out.append((e.ref, line))
            left -= tokens(line) + 3
    return out


# -- the memory call ----------------------------------------------------------------------------


@dataclass
class Remembered:
    """A passage's delta and how it was made."""

    memory: ChunkMemory
    source: str  # "model" | "fallback"
    calls: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # names the extractor added to the model's answer
    why_fallback: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "llm_calls": self.calls,
            "errors": self.errors,
            "dropped": self.dropped[:20],
            "merged_from_extractor": self.merged,
            "why_fallback": self.why_fallback,
        }


BASE_MODEL = "the model is a base model (prompt style document)"


def memory_request(
    llm: LlmClient,
    *,
    job_id: uuid.UUID,
    chunk_id: int | None,
    model: str,
    passage: str,
    ledger: Ledger,
    request_key: str,
    judge_only: bool = False,
    attempt: int = 1,
    error: str | None = None,
) -> Call | None:
    """The memory call for a passage (its ``attempt``, with the previous one's ``error``); None for
    a small base model, which is asked for prose only (the extractor remembers for it)."""
    if llm.prompt_style == "document":
        return None
    return llm.request(
        job_id=job_id,
        chunk_id=chunk_id,
        purpose="judge" if judge_only else "memory",
        request_key=f"{request_key}:{attempt}",
        model=llm.judge_model or model,
        messages=memory_messages(passage, judge_entries(ledger, passage), judge_only=judge_only, error=error),
        max_tokens=600 if judge_only else 1600,
        temperature=0.0,
        json_mode=True,
    )


def interpret(res: LlmResult, passage: str, ledger: Ledger) -> Remembered | str:
    """The model's delta, completed with every proper name the extractor finds and it left out;
    or why the answer is not valid (the next attempt is told)."""
    refs = {ref for ref, _ in judge_entries(ledger, passage)}
    try:
        parsed = parse_memory(res.text, passage, refs)
    except ValueError as exc:
        return str(exc)
    mem, added = merge(parsed.memory, passage)
    return Remembered(mem, "model", [res.call_id], [], parsed.dropped, added)


async def remember(
    llm: LlmClient,
    *,
    job_id: uuid.UUID,
    chunk_id: int | None,
    model: str,
    passage: str,
    ledger: Ledger,
    request_key: str,
    judge_only: bool = False,
    after: tuple[int, str] | None = None,
) -> Remembered:
    """Ask the model for the passage's delta and its contradictions with the ledger; an invalid
    answer is retried once with what was wrong, then the extractor's delta is used (and says
    so). ``after``: (call id, error) of a first attempt already made and found invalid."""
    calls, errors = ([after[0]], [after[1]]) if after is not None else ([], [])
    for attempt in (1, 2)[len(calls) :]:
        call = memory_request(
            llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger,
            request_key=request_key, judge_only=judge_only, attempt=attempt, error=errors[-1] if errors else None,
        )  # fmt: skip
        if call is None:
            return fallback(passage, BASE_MODEL)
        res = await llm.complete_call(call)
        got = interpret(res, passage, ledger)
        if isinstance(got, str):
            calls.append(res.call_id)
            errors.append(got)
            continue
        got.calls, got.errors = [*calls, res.call_id], errors
        return got
    return fallback(passage, "no valid answer in two tries", calls, errors)


def fallback(passage: str, why: str, calls: list[int] | None = None, errors: list[str] | None = None) -> Remembered:
    """The deterministic extractor's delta (every proper name with the sentence that introduced it)."""
    return Remembered(extract(passage), "fallback", calls or [], errors or [], why_fallback=why)


# -- checks and repairs -------------------------------------------------------------------------


@dataclass
class Checked:
    """A passage after its checks and repairs: the text, its delta, every finding and its fate."""

    text: str
    remembered: Remembered
    findings: list[Finding]
    fixed: set[tuple[str, int | None, str]] = field(default_factory=set)  # _key of each finding repaired
    rounds: int = 0

    def is_repaired(self, f: Finding) -> bool:
        return _key(f) in self.fixed

    @property
    def open(self) -> list[Finding]:
        return [f for f in self.findings if not self.is_repaired(f)]

    @property
    def open_major(self) -> list[Finding]:
        return [f for f in needs_repair(self.findings) if not self.is_repaired(f)]


async def check_and_repair(
    llm: LlmClient,
    *,
    job_id: uuid.UUID,
    chunk_id: int,
    model: str,
    passage: str,
    ledger: Ledger,
    request_key: str,
    min_words: int,
    extend: Any = None,
    stored: Remembered | None = None,
    judge: bool = True,
    locked: bool = False,
    remembered: Remembered | None = None,
) -> Checked:
    """Check a passage against the ledger and repair what is found: a finding at or above the
    repair severity gets a rule's fix, else the model rewrites its paragraph with the finding in
    the prompt; the repaired text is remembered and checked again, at most ``MAX_REPAIR_ROUNDS``
    times. ``extend(text, key)`` lengthens a repaired text that fell below ``min_words``.

    A new passage is remembered first (its delta and the judge, one call). A passage whose delta
    is ``stored`` (a chapter checked again at its seam) is judged only when ``judge`` (one call
    for the contradictions, its delta kept), else checked by the rules alone (no call).
    ``remembered``: the new passage's delta, already asked for (the chunk step asks in its own
    transactions)."""
    if remembered is not None:
        rem = remembered
    elif stored is None:
        rem = await remember(
            llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger,
            request_key=f"{request_key}:r0",
        )  # fmt: skip
    elif judge:
        verdict = await remember(
            llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger,
            request_key=f"{request_key}:r0", judge_only=True,
        )  # fmt: skip
        memory = stored.memory.model_copy(update={"contradictions": verdict.memory.contradictions})
        rem = Remembered(memory, stored.source, verdict.calls, verdict.errors, verdict.dropped)
    else:
        rem = Remembered(stored.memory.model_copy(update={"contradictions": []}), stored.source)
    first = rem
    out = Checked(passage, rem, check(passage, rem.memory, ledger))
    todo = needs_repair(out.findings)
    while todo and not locked and out.rounds < MAX_REPAIR_ROUNDS:
        out.rounds += 1
        text, fixed = apply_fixes(out.text, todo)
        rest = [f for f in todo if f not in fixed]
        if rest:
            text = await _rewrite(llm, job_id, chunk_id, model, text, rest, f"{request_key}:fix{out.rounds}")
        if extend is not None and count_words(text) < min_words:
            text = await extend(text, f"{request_key}:fix{out.rounds}")
        rem = await remember(
            llm,
            job_id=job_id,
            chunk_id=chunk_id,
            model=model,
            passage=text,
            ledger=ledger,
            request_key=f"{request_key}:r{out.rounds}",
        )
        again = check(text, rem.memory, ledger)
        still = {_key(f) for f in needs_repair(again)}
        out.fixed |= {_key(f) for f in todo if _key(f) not in still}
        known = {_key(f) for f in out.findings}
        out.findings += [f for f in again if _key(f) not in known]  # a repair's own new problem is found too
        todo = needs_repair(again)
        out.text, out.remembered = text, rem
    if out.rounds and not out.fixed:  # nothing was put right: the passage stays as it was written
        out.text, out.remembered = passage, first
    return out


def _key(f: Finding) -> tuple[str, int | None, str]:
    """One problem across rewrites: its kind and the ledger entry it contradicts (the quote changes)."""
    return (f.subtype, f.entry_id, f.fix[0] if f.fix else "")


async def _rewrite(
    llm: LlmClient, job_id: uuid.UUID, chunk_id: int, model: str, text: str, findings: Sequence[Finding], key: str
) -> str:
    """Each paragraph holding a finding's quote, rewritten by the model with the finding in its prompt."""
    paras = paragraphs(text)
    by_para: dict[int, list[Finding]] = {}
    for f in findings:
        i = paragraph_of(text, f.quote)
        if i is not None:
            by_para.setdefault(i, []).append(f)
    for i, fs in sorted(by_para.items()):
        msgs = repair_messages(paras[i], [(f.message, f.quote_there) for f in fs], count_words(paras[i]))
        res = await llm.complete(
            job_id=job_id,
            chunk_id=chunk_id,
            purpose="repair",
            request_key=f"{key}:p{i}",
            model=model,
            messages=msgs,
            max_tokens=max(64, int(count_words(paras[i]) * 1.8) + 48),
            temperature=0.3,
        )
        # The paragraph and the established sentences are in the prompt and rightly in the answer:
        # only the instructions are echoes.
        instructions = "\n".join(m["content"] for m in msgs).replace(paras[i], "")
        for f in fs:
            instructions = instructions.replace(f.quote_there, "")
        new = (await clean(res.text, instructions)).strip().strip('"').strip()
        if new:
            paras[i] = new
    return "\n\n".join(paras)


# -- writing ------------------------------------------------------------------------------------


def ledger_rows(
    tx: JobTx, entries: Sequence[NewEntry], *, chunk: Chunk, version_id: int, state_id: int | None, source: str
) -> list[LedgerEntry]:
    rows = [
        LedgerEntry(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            chunk_version_id=version_id,
            state_id=state_id,
            doc_order=chunk.ordinal,
            kind=e.kind,
            key=e.key,
            name=e.name[:300],
            attribute=e.attribute,
            value=e.value[:1000],
            quote=e.quote[:1000],
            etype=e.etype,
            when_=e.when,
            source=source,
        )
        for e in entries
    ]
    tx.session.add_all(rows)
    return rows


async def store_memory(
    tx: JobTx, chunk: Chunk, version_id: int, state_id: int | None, rem: Remembered
) -> list[LedgerEntry]:
    """A version's delta into the ledger, made the chunk's current memory."""
    rows = ledger_rows(
        tx, entries_of(rem.memory), chunk=chunk, version_id=version_id, state_id=state_id, source=rem.source
    )
    chunk.memory_version_id = version_id
    await tx.session.flush()
    return rows


def finding_rows(
    tx: JobTx,
    checked: Checked,
    *,
    chunk: Chunk,
    version_id: int,
    repair_version_id: int | None,
    seam_check_id: int | None = None,
) -> list[ContinuityFinding]:
    call = checked.remembered.calls[0] if checked.remembered.calls else None
    rows = [
        ContinuityFinding(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            chunk_version_id=version_id,
            seam_check_id=seam_check_id,
            category=f.category,
            subtype=f.subtype,
            severity=f.severity,
            detector=f.detector,
            message=f.message[:1000],
            quote=f.quote[:1000],
            entry_id=f.entry_id,
            quote_there=(f.quote_there or "")[:1000],
            doc_order_there=f.doc_order_there,
            llm_call_id=call if f.detector == "judge" else None,
            status="repaired" if checked.is_repaired(f) and repair_version_id else "open",
            repair_version_id=repair_version_id if checked.is_repaired(f) else None,
            repair_attempts=checked.rounds,
        )
        for f in checked.findings
    ]
    tx.session.add_all(rows)
    return rows


def finding_events(tx: JobTx, rows: Sequence[ContinuityFinding], chunk: Chunk, where: str) -> None:
    """One ``continuity`` event per finding (its id: the report links a finding to its seq)."""
    for r in rows:
        tx.event(
            "continuity",
            "repaired" if r.status == "repaired" else "found",
            {
                "finding": r.id,
                "where": where,
                "chunk": chunk.ordinal,
                "category": r.category,
                "subtype": r.subtype,
                "severity": r.severity,
                "detector": r.detector,
                "message": r.message,
                "quote": r.quote,
                "quote_there": r.quote_there,
                "entry": r.entry_id,
                "version": r.chunk_version_id,
                "repair_version": r.repair_version_id,
                "llm_call_id": r.llm_call_id,
            },
        )


async def summarize(
    llm: LlmClient,
    *,
    job_id: uuid.UUID,
    node: PlanNode,
    pieces: list[str],
    model: str,
    request_key: str,
) -> tuple[str, str, int | None]:
    """A chapter's or part's summary: (text, "model" | "fallback", the call's id)."""
    fallback = " ".join(" ".join(pieces).split()[:SUMMARY_WORDS]) or node.purpose or (node.title or "")
    if llm.prompt_style == "document" or not pieces:
        return fallback, "fallback", None
    msgs = summary_messages(node.level, node.title or "", pieces, SUMMARY_WORDS)
    res = await llm.complete(
        job_id=job_id,
        purpose="summary",
        request_key=request_key,
        model=model,
        messages=msgs,
        max_tokens=int(SUMMARY_WORDS * 1.8) + 32,
        temperature=0.2,
    )
    text = " ".join((await clean(res.text, "\n".join(m["content"] for m in msgs))).split()[: SUMMARY_WORDS * 2])
    if count_words(text) < 8:
        return fallback, "fallback", res.call_id
    return text, "model", res.call_id


def plan_entries(glossary: dict[str, str]) -> list[NewEntry]:
    """The plan's glossary and cast as the ledger's first entries."""
    return [
        NewEntry("entity", key_of(term), term.strip()[:200], (definition or "").strip(), f"the plan: {definition}")
        for term, definition in glossary.items()
        if term.strip()
    ]
