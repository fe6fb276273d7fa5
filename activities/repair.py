"""A passage checked against the ledger and repaired: the checks (``core.continuity``) on the
passage and its delta, a rule's fix or the model's rewrite of each paragraph holding a finding
(through the gate: its words and cuts kept for the version's record), the rewrite remembered and
checked again, at most ``MAX_REPAIR_ROUNDS`` times; then, on the evidence of the last version
(``core.repair``), which findings are repaired. Nothing put right: the passage stays as written,
its findings open with what was tried.

Used by the chunk step before a chunk commits and by the seam checker (a chapter written in
parallel, checked again against the real ledger; a locked one is checked, never repaired).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from activities.gating import gate, passes
from activities.llm import LlmClient
from activities.memory import Remembered, remember
from activities.prompts import repair_messages
from core.continuity import Finding, apply_fixes, check, needs_repair, paragraph_of
from core.gate import Gated
from core.memory import Ledger
from core.repair import Recheck, established_only, next_round, same_problem, settle
from core.text import count_words, paragraphs

MAX_REPAIR_ROUNDS = 2  # a finding still there after this many rewrites stays open


@dataclass
class Checked:
    """A passage after its checks and repairs: the text, its delta, every finding and its fate,
    and what the checks could not do (``unchecked``: why, "" when the model's memory and judge
    answered)."""

    text: str
    remembered: Remembered
    findings: list[Finding]
    fixed: set[int] = field(default_factory=set)  # indexes of the findings repaired
    rounds: int = 0
    answers: list[Gated] = field(default_factory=list)  # the rewrites the text is made of, as gated
    unchecked: str = ""
    judged: bool = False  # a judge answered about it (a valid model answer with its contradictions)

    def is_repaired(self, f: Finding) -> bool:
        return any(self.findings[i] is f for i in self.fixed)

    def keep(self, wanted: Callable[[Finding], bool]) -> None:
        """Only the findings ``wanted``, each keeping its fate."""
        fates = [(f, fixed) for f, fixed in self.fates() if wanted(f)]
        self.findings = [f for f, _ in fates]
        self.fixed = {i for i, (_, fixed) in enumerate(fates) if fixed}

    def fates(self) -> list[tuple[Finding, bool]]:
        return [(f, i in self.fixed) for i, f in enumerate(self.findings)]

    @property
    def open(self) -> list[Finding]:
        return [f for i, f in enumerate(self.findings) if i not in self.fixed]

    @property
    def open_major(self) -> list[Finding]:
        return needs_repair(self.open)

    @property
    def gated(self) -> Gated:
        return passes(self.answers)


def unchecked_by(rem: Remembered) -> str:
    """Why a passage remembered so was not checked beyond names ("" when the model's memory was)."""
    return "" if rem.source == "model" else f"names only: {rem.why_fallback or 'no model answer'}"


def first_check(passage: str, rem: Remembered, ledger: Ledger) -> Checked:
    """The passage's checks, before any repair."""
    found = check(passage, rem.memory, ledger)
    return Checked(passage, rem, found, unchecked=unchecked_by(rem), judged=rem.source == "model" and bool(rem.calls))


Extend = Callable[[str, str], Awaitable[str]]


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
    extend: Extend | None = None,
    stored: Remembered | None = None,
    judge: bool = True,
    locked: bool = False,
    remembered: Remembered | None = None,
) -> Checked:
    """Check a passage against the ledger and repair what is found: a finding at or above the
    repair severity gets a rule's fix, else the model rewrites its paragraph with the finding in
    the prompt; the rewrite is remembered (the judge shown the entries under repair) and checked
    again, at most ``MAX_REPAIR_ROUNDS`` times. ``extend(text, key)`` lengthens a repaired text
    that fell below ``min_words``.

    A new passage is remembered first (its delta and the judge, one call). A passage whose delta
    is ``stored`` (a chapter checked again at its seam) is judged only when ``judge`` (one call
    for the contradictions, its delta kept), else checked by the rules alone (no call); a value
    the rules cannot decide calls the judge in. ``remembered``: the new passage's delta, already
    asked for (the chunk step asks in its own transactions). ``locked``: checked, never repaired."""
    key = f"{request_key}:r0"
    if remembered is not None:
        out = first_check(passage, remembered, ledger)
    elif stored is None:
        out = first_check(passage, await _remember(llm, job_id, chunk_id, model, passage, ledger, key), ledger)
    else:
        out = first_check(passage, replace(stored, shown=[]), ledger)
        if judge or any(f.subtype == "attribute_unsure" for f in out.findings):
            out = await _judged(llm, job_id, chunk_id, model, passage, ledger, key, stored)
    first = out.remembered
    original = list(out.findings)
    todo = needs_repair(out.findings)
    if locked:
        for f in todo:
            f.tried = "not repaired: the text is locked (checked, never rewritten)"
    text, rem, last = passage, first, None
    while todo and not locked and out.rounds < MAX_REPAIR_ROUNDS:
        out.rounds += 1
        key = f"{request_key}:fix{out.rounds}"
        text, by_rule = apply_fixes(text, todo)
        rest = [f for f in todo if f not in by_rule]
        if rest:
            text = await _rewrite(llm, job_id, chunk_id, model, text, rest, key, out.answers)
        if extend is not None and count_words(text) < min_words:
            text = await extend(text, key)
        must = [f.entry_id for f in rest if f.entry_id is not None]
        rem = await _remember(llm, job_id, chunk_id, model, text, ledger, f"{request_key}:r{out.rounds}", must)
        again = check(text, rem.memory, ledger)
        last = Recheck(text, again, rem.source == "model", rem.judged_ids or set(), rem.why_fallback)
        # A rewrite's own new problem is found too.
        out.findings += [g for g in again if not any(same_problem(g, f) for f in out.findings)]
        todo = next_round(out.findings, last)
    out.fixed = settle(out.findings, last, out.rounds)
    if out.rounds and not out.fixed:  # nothing was put right: the passage stays as it was written
        out.findings, out.answers = original, []
        text, rem = passage, first
    elif out.rounds:
        out.unchecked = unchecked_by(rem)
    out.text, out.remembered = text, rem
    rem.memory = established_only(rem.memory, [f for f, fixed in out.fates() if not fixed])
    return out


async def _remember(
    llm: LlmClient,
    job_id: uuid.UUID,
    chunk_id: int,
    model: str,
    passage: str,
    ledger: Ledger,
    key: str,
    must: Sequence[int] = (),
) -> Remembered:
    return await remember(
        llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger, request_key=key, must=must
    )


async def _judged(
    llm: LlmClient,
    job_id: uuid.UUID,
    chunk_id: int,
    model: str,
    passage: str,
    ledger: Ledger,
    key: str,
    stored: Remembered,
) -> Checked:
    """A stored passage judged again (the judge alone: its contradictions with the ledger as it
    now stands), with its stored delta: the judge that could not answer leaves it unchecked."""
    verdict = await remember(
        llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger, request_key=key,
        judge_only=True,
    )  # fmt: skip
    answered = verdict.source == "model"
    said = verdict.memory if answered else None
    memory = stored.memory.model_copy(
        update={"contradictions": said.contradictions if said else [], "agrees": said.agrees if said else []}
    )
    rem = Remembered(
        memory, stored.source, verdict.calls, verdict.errors, verdict.dropped, shown=verdict.shown if answered else []
    )
    out = first_check(passage, rem, ledger)
    out.judged = answered
    if not answered and not out.unchecked:
        out.unchecked = f"the judge gave no valid answer ({verdict.why_fallback})"
    return out


async def _rewrite(
    llm: LlmClient,
    job_id: uuid.UUID,
    chunk_id: int,
    model: str,
    text: str,
    findings: Sequence[Finding],
    key: str,
    answers: list[Gated],
) -> str:
    """Each paragraph holding a finding's quote, rewritten by the model with the finding in its
    prompt; each answer through the gate (kept in ``answers``)."""
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
        gated = await gate(res.text, prompt=instructions)
        answers.append(gated)
        new = gated.text.strip().strip('"').strip()
        if new:
            paras[i] = new
    return "\n\n".join(paras)
