"""The length promise as rules: how much to ask a model for, when a chunk has stalled, and when a
short document is given up on (and with which code and reason)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

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


# The cuts that are a whole answer not used, not junk: a repair's or a bridge's answer given up
# (``not_used``), an edit's or a coverage retry's answer refused (``out_of_scope``).
UNUSED_RULES = ("not_used", "out_of_scope")


@dataclass(frozen=True)
class WordAccount:
    """What a job's words are made of, shown wherever its outcome is (page, status, API, webhook,
    the final audit event): the words the model wrote (every answer for the document, used or not:
    each is a chunk attempt), those cut (by rule), split into junk (the gate's rules, repeats of
    the document, fragments cut to a sentence boundary) and answers not used (``UNUSED_RULES``),
    the chunks short (their last length check failed: accepted short after their attempts ran
    out, or left short by a repair or an edit), the top-ups that made up for them, and what was
    trimmed to a length: chunks cut to their maximum when committed, and the document's end cut
    by finalize to the job's maximum (its words before, the words cut, where)."""

    words_model: int = 0
    words_cut: int = 0  # = words_junk + words_unused
    cut_by_rule: dict[str, int] = field(default_factory=dict)
    chunks_short: int = 0
    top_up_rounds: int = 0
    top_up_words: int = 0
    trimmed_words: int = 0  # cut from chunks over their maximum when they were committed
    final_words_before: int = 0  # the assembled document's words before finalize cut it (0: it did not)
    final_trimmed: int = 0  # the words finalize cut from the document's end, down to the job's max_words
    final_trimmed_at: str = ""  # where that cut began
    words_junk: int = field(init=False, default=0)  # cut as junk: every rule but UNUSED_RULES
    words_unused: int = field(init=False, default=0)  # cut as answers not used

    def __post_init__(self) -> None:
        unused = sum(n for r, n in self.cut_by_rule.items() if r in UNUSED_RULES)
        object.__setattr__(self, "words_unused", unused)
        object.__setattr__(self, "words_junk", self.words_cut - unused)

    def with_trim(self, trim: dict[str, Any] | None) -> WordAccount:
        """The account with finalize's trim (``core.layout.Trim.record``), if it made one."""
        if not trim:
            return self
        at = str(trim.get("at", ""))
        return replace(
            self,
            final_words_before=int(trim["words_before"]),
            final_trimmed=int(trim["words_cut"]),
            final_trimmed_at=at,
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line a person reads: what was cut and why (junk, apart from answers not used: the
        parts add up to the words cut), what was accepted short and made up for, what was trimmed."""
        parts = [f"the model wrote {self.words_model:,} words"]
        junk = _by_rule({r: n for r, n in self.cut_by_rule.items() if r not in UNUSED_RULES})
        unused = _by_rule({r: n for r, n in self.cut_by_rule.items() if r in UNUSED_RULES})
        if self.words_junk and self.words_unused:
            parts.append(
                f"{self.words_cut:,} cut: {self.words_junk:,} as junk ({junk}), "
                f"{self.words_unused:,} from answers not used ({unused})"
            )
        elif self.words_unused:
            parts.append(f"{self.words_unused:,} cut from answers not used ({unused}), none as junk")
        elif self.words_junk:
            parts.append(f"{self.words_junk:,} cut as junk ({junk})")
        else:
            parts.append("none cut as junk")
        if self.chunks_short:
            parts.append(f"{self.chunks_short} chunk(s) accepted short")
        if self.top_up_rounds:
            parts.append(f"{self.top_up_rounds} top-up round(s) added {self.top_up_words:,} words")
        if self.trimmed_words:
            parts.append(f"{self.trimmed_words:,} trimmed from chunks over their maximum")
        if self.final_trimmed:
            after = self.final_words_before - self.final_trimmed
            parts.append(
                f"finalize cut the document's last {self.final_trimmed:,} words to its maximum "
                f"({self.final_words_before:,} -> {after:,}; {self.final_trimmed_at})"
            )
        return "; ".join(parts)


def _by_rule(cut: dict[str, int]) -> str:
    return ", ".join(f"{r} {n:,}" for r, n in sorted(cut.items(), key=lambda kv: (-kv[1], kv[0])))
