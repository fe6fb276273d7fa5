"""The memory call: a passage's delta (who and what it names, with attributes and the sentence
that establishes each; events, threads, facts) and, in the same answer, the judge's
contradictions with the ledger entries it was shown (``core.recall.judge_entries``); validated
against the passage, asked again once with what was wrong, else the deterministic extractor's
delta, which says so (and is no judge: a passage remembered by it is checked by names only).
Also a chapter's or a part's summary.

The chunk step remembers each passage before it commits it (``activities/chunks.py``), the repair
loop remembers each rewrite (``activities/repair.py``), the seam step asks the judge alone
(``activities/seam_check.py``); the rows are ``db/memory.py``'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from activities.gating import clean
from activities.llm import Call, LlmClient, LlmResult
from activities.prompts import memory_messages, summary_messages
from core.coherence import BASE_MODEL
from core.extractor import extract, merge
from core.memory import ChunkMemory, Ledger, parse_memory
from core.recall import judge_entries
from core.text import count_words
from db.manuscript import PlanNode

SUMMARY_WORDS = 100


@dataclass
class Remembered:
    """A passage's delta and how it was made: by the model (a valid answer, whose judge was shown
    ``shown``) or by the extractor (``fallback``, and why)."""

    memory: ChunkMemory
    source: str  # "model" | "fallback"
    calls: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # names the extractor added to the model's answer
    why_fallback: str = ""
    shown: list[str] = field(default_factory=list)  # the ledger refs the judge that answered was shown

    @property
    def judged_ids(self) -> set[int] | None:
        """The ledger entries a judge that answered was shown; None: no judge answered."""
        return {int(r[1:]) for r in self.shown} if self.source == "model" else None

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "llm_calls": self.calls,
            "errors": self.errors,
            "dropped": self.dropped[:20],
            "merged_from_extractor": self.merged,
            "why_fallback": self.why_fallback,
            "judge_shown": len(self.shown),
        }


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
    must: Sequence[int] = (),
) -> Call | None:
    """The memory call for a passage (its ``attempt``, with the previous one's ``error``; the judge
    shown the entries ``must`` whatever its budget); None for a small base model, which is asked
    for prose only (the extractor remembers for it)."""
    if llm.prompt_style == "document":
        return None
    return llm.request(
        job_id=job_id,
        chunk_id=chunk_id,
        purpose="judge" if judge_only else "memory",
        request_key=f"{request_key}:{attempt}",
        model=llm.judge_model or model,
        messages=memory_messages(
            passage, judge_entries(ledger, passage, must=must), judge_only=judge_only, error=error
        ),
        max_tokens=600 if judge_only else 1600,
        temperature=0.0,
        json_mode=True,
    )


def interpret(res: LlmResult, passage: str, ledger: Ledger, must: Sequence[int] = ()) -> Remembered | str:
    """The model's delta, completed with every proper name the extractor finds and it left out;
    or why the answer is not valid (the next attempt is told)."""
    shown = [ref for ref, _ in judge_entries(ledger, passage, must=must)]
    try:
        parsed = parse_memory(res.text, passage, set(shown))
    except ValueError as exc:
        return str(exc)
    mem, added = merge(parsed.memory, passage)
    return Remembered(mem, "model", [res.call_id], [], parsed.dropped, added, shown=shown)


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
    must: Sequence[int] = (),
) -> Remembered:
    """Ask the model for the passage's delta and its contradictions with the ledger; an invalid
    answer is retried once with what was wrong, then the extractor's delta is used (and says
    so). ``after``: (call id, error) of a first attempt already made and found invalid."""
    calls, errors = ([after[0]], [after[1]]) if after is not None else ([], [])
    for attempt in (1, 2)[len(calls) :]:
        call = memory_request(
            llm, job_id=job_id, chunk_id=chunk_id, model=model, passage=passage, ledger=ledger,
            request_key=request_key, judge_only=judge_only, attempt=attempt, error=errors[-1] if errors else None,
            must=must,
        )  # fmt: skip
        if call is None:
            return fallback(passage, BASE_MODEL)
        res = await llm.complete_call(call)
        got = interpret(res, passage, ledger, must)
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
