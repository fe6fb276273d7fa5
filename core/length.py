"""The length promise as rules: how much to ask a model for, when a chunk has stalled, and when a
short document is given up on (and with which code and reason)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from core.spec import ErrorCode, JobOptions

MIN_COMPLIANCE = 0.34  # never ask for more than about 3x what is needed
COMPLIANCE_WINDOW = 20  # recent attempts the estimate is taken from
MIN_EVIDENCE_WORDS = 50  # below this many words asked, assume the model writes what it is asked


def compliance(asked_added: Sequence[tuple[int, int]]) -> float:
    """How much of what it is asked for this model writes, from recent (asked, added) attempts.

    Small models stop at 30-60% of the asked length; asking for need/compliance makes a chunk
    pass in one or two calls instead of a long tail of shrinking extensions. Bounded so one odd
    answer cannot make Quire ask for far too much.
    """
    asked = sum(a for a, _ in asked_added)
    if asked < MIN_EVIDENCE_WORDS:
        return 1.0
    return min(1.0, max(MIN_COMPLIANCE, sum(max(0, added) for _, added in asked_added) / asked))


def words_to_ask(need: int, model_compliance: float) -> int:
    return math.ceil(need / model_compliance)


def stalled(words_added: Sequence[int], passed: bool, max_attempts: int) -> bool:
    """A chunk that failed its check and will not get better by extending: attempts used up, or
    two attempts in a row that added nothing (the model has stopped). Finalize tops up instead."""
    if passed:
        return False
    if len(words_added) >= max_attempts:
        return True
    return len(words_added) >= 2 and words_added[-1] <= 0 and words_added[-2] <= 0


@dataclass(frozen=True)
class Effort:
    """What a job has spent so far: the facts a give-up decision and its reason are made of."""

    attempts: int
    calls: int
    empty: int
    failed: int
    tokens: int
    elapsed_s: float


def give_up(
    *, words: int, target_words: int, round: int, previous_words: int | None, effort: Effort, options: JobOptions
) -> tuple[ErrorCode, str] | None:
    """Whether a document still short after ``round`` top-ups fails now: (code, reason), or None
    to top it up again. Budgets first, then rounds, then a top-up that added nothing."""
    base = (
        f"the output has {words} of the {target_words} words asked for after {round} "
        f"top-up round(s), {effort.attempts} chunk attempts and {effort.calls} model calls "
        f"({effort.empty} empty answers, {effort.failed} failed calls)"
    )
    if options.max_tokens is not None and effort.tokens >= options.max_tokens:
        return ErrorCode.BUDGET_EXHAUSTED, f"token budget of {options.max_tokens} used up ({effort.tokens}): {base}"
    if effort.elapsed_s >= options.max_wall_seconds:
        return ErrorCode.BUDGET_EXHAUSTED, f"time budget of {options.max_wall_seconds} s used up: {base}"
    if round >= options.max_rounds:
        return ErrorCode.LENGTH_NOT_MET, f"{base}; no top-up rounds left (max_rounds={options.max_rounds})"
    if previous_words is not None and words <= previous_words:
        return (
            ErrorCode.LENGTH_NOT_MET,
            f"{base}; the last top-up added no words, so the model is not producing usable text",
        )
    return None


@dataclass(frozen=True)
class WordAccount:
    """What a job's words are made of, shown wherever its outcome is (page, status, API, webhook,
    the final audit event): the words the model wrote, those the degeneration gate cut (by rule),
    the chunks accepted short after their attempts ran out, and the top-ups that made up for them."""

    words_model: int = 0
    words_cut: int = 0
    cut_by_rule: dict[str, int] = field(default_factory=dict)
    chunks_short: int = 0
    top_up_rounds: int = 0
    top_up_words: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line a person reads: what was cut and why, what was accepted short and made up for."""
        parts = [f"the model wrote {self.words_model:,} words"]
        if self.words_cut:
            rules = ", ".join(f"{r} {n:,}" for r, n in sorted(self.cut_by_rule.items(), key=lambda kv: -kv[1]))
            parts.append(f"{self.words_cut:,} cut as junk ({rules})")
        else:
            parts.append("none cut as junk")
        if self.chunks_short:
            parts.append(f"{self.chunks_short} chunk(s) accepted short")
        if self.top_up_rounds:
            parts.append(f"{self.top_up_rounds} top-up round(s) added {self.top_up_words:,} words")
        return "; ".join(parts)
