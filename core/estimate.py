"""What a job will cost before it runs: model calls, tokens in and out, money and wall time, each
with a range, from the plan's shape (``core.layout``), what this model did on finished jobs (calls
per chunk, section, chapter and job for every purpose, tokens per call, seconds per call on the
critical path), the prices (``core.cost``) and the parallelism.

Every kind of call is counted, the story memory's too (``memory`` and ``judge`` per passage,
``summary`` per chapter, ``repair`` when a check finds something): they are a large share of a
job's tokens. With no finished job of the model to learn from, the defaults below are used and the
range is wide. Pure: ``services.estimate`` reads the history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.cost import Price, cost_micro_usd, usd
from core.layout import NodePlan, tree_levels

# What each kind of model call is counted per (the shape's field).
BASIS = {
    "plan": "jobs",
    "expand": "expanded",
    "write": "chunks",
    "extend": "chunks",
    "memory": "chunks",
    "judge": "seams",
    "repair": "chunks",
    "summary": "summarized",
    "stitch": "sections",
}
# Calls whose tokens grow with the passage (the words asked for, the passage shown).
SCALES_OUT = ("write", "extend", "repair")
SCALES_IN = ("memory", "judge")
MEMORY_PURPOSES = ("memory", "judge", "summary", "repair")
SPREAD = 0.10  # added around the range the history spans
SIGMAS = 2.0  # the range: each kind's count known to within 1/sqrt(what was measured), twice that
OUTLINE_TOKENS = 8  # a chunk prompt's outline line per top-level node (a title)
DEFAULT_SPREAD = 0.5  # the defaults are a guess: -50% .. +100%
DEFAULT_SECONDS_PER_CALL = 10.0  # a provider writing ~700 words at ~100 tokens/s


@dataclass(frozen=True)
class Shape:
    """The parts of a job that calls are counted per."""

    words: int  # planned
    chunk_words: int
    parallelism: int
    chunks: int
    sections: int
    units: int  # chapters, or 1 (the book)
    expanded: int  # nodes planned lazily (chapters and parts), one planning call each
    summarized: int  # chapters and parts, one summary each
    top: int = 1  # top-level nodes: the outline every chunk prompt carries
    jobs: int = 1

    @property
    def seams(self) -> int:
        """Seams between chapters: the judge reads the chapter after each."""
        return max(0, self.units - 1)

    @property
    def lag(self) -> float:
        """The chapters a passage has before it, on average: each is a summary line of its prompt."""
        return (self.units - 1) / 2

    @property
    def lanes(self) -> int:
        """Chapters written at the same time: the critical path is the calls of one lane."""
        return max(1, min(self.parallelism, self.units))

    def data(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("words", "chunk_words", "chunks", "sections", "units", "parallelism")}


def shape_of(tree: NodePlan, chunk_words: int, parallelism: int) -> Shape:
    levels = tree_levels(tree)
    nodes = list(tree.walk())
    chapters = sum(1 for n in nodes if n.level == "chapter")
    parts = sum(1 for n in nodes if n.level == "part")
    return Shape(
        words=tree.budget,
        chunk_words=chunk_words,
        parallelism=parallelism,
        chunks=sum(len(n.chunks) for n in nodes),
        sections=sum(1 for n in nodes if n.level == "section"),
        units=chapters if "chapter" in levels else 1,
        expanded=chapters + parts,
        summarized=chapters + parts,
        top=len(tree.children),
    )


@dataclass
class Measured:
    """One finished job: its shape and, per kind of call, the calls and tokens it made; its wall time."""

    shape: Shape
    calls: dict[str, int] = field(default_factory=dict)
    tokens_in: dict[str, int] = field(default_factory=dict)
    tokens_out: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


# Without history: a chat model that writes about what it is asked (calls per basis; tokens per
# call as a + b x chunk words).
DEFAULT_RATES = {"plan": 1.1, "expand": 1.05, "write": 1.0, "extend": 0.3, "memory": 1.05, "judge": 1.0,
                 "repair": 0.05, "summary": 1.0, "stitch": 0.05}  # fmt: skip
DEFAULT_IN = {"plan": (500, 0), "expand": (700, 0), "write": (700, 1.2), "extend": (900, 1.2), "memory": (350, 1.4),
              "judge": (250, 1.4), "repair": (350, 0), "summary": (400, 0), "stitch": (150, 0)}  # fmt: skip
DEFAULT_OUT = {"plan": (1500, 0), "expand": (700, 0), "write": (0, 1.45), "extend": (0, 0.4), "memory": (450, 0),
               "judge": (120, 0), "repair": (250, 0), "summary": (150, 0), "stitch": (30, 0)}  # fmt: skip


@dataclass
class _Guess:
    calls: float
    tokens_in: float
    tokens_out: float


def _predict(shape: Shape, history: Sequence[Measured]) -> tuple[dict[str, _Guess], dict[str, float]]:
    """What ``history`` (its jobs pooled) says a job of ``shape`` makes, per kind of call, and how
    well each kind is known (relative error). A chunk's prompt grows
    with the book before it (a summary line per earlier chapter, an outline line per top-level
    node): its tokens per call are moved by that difference."""
    total = {k: sum(getattr(m.shape, k) for m in history) for k in (*set(BASIS.values()), "chunks")}
    calls = {p: sum(m.calls.get(p, 0) for m in history) for p in BASIS}
    t_in = {p: sum(m.tokens_in.get(p, 0) for m in history) for p in BASIS}
    t_out = {p: sum(m.tokens_out.get(p, 0) for m in history) for p in BASIS}
    summary_tokens = t_out["summary"] / calls["summary"] if calls["summary"] else 0.0
    weight = max(1, total["chunks"])
    lag = sum(m.shape.lag * m.shape.chunks for m in history) / weight
    top = sum(m.shape.top * m.shape.chunks for m in history) / weight
    cw = sum(m.shape.chunk_words * m.shape.chunks for m in history) / weight
    growth = summary_tokens * (shape.lag - lag) + OUTLINE_TOKENS * (shape.top - top)
    out: dict[str, _Guess] = {}
    known: dict[str, float] = {}
    fallback = _defaults(shape)
    for p, basis in BASIS.items():
        if not total[basis]:  # the history had none of these (a book of sections, no chapters): the defaults
            out[p], known[p] = fallback[p], DEFAULT_SPREAD
            continue
        n = calls[p] / total[basis] * getattr(shape, basis)
        per_in = t_in[p] / calls[p] if calls[p] else 0.0
        per_out = t_out[p] / calls[p] if calls[p] else 0.0
        scale = shape.chunk_words / max(1.0, cw)
        per_in = per_in * scale if p in SCALES_IN else per_in + (growth if p in ("write", "extend") else 0.0)
        out[p] = _Guess(n, n * max(0.0, per_in), n * per_out * (scale if p in SCALES_OUT else 1))
        # A kind made exactly k per basis (a memory call per passage) is known; what comes on top
        # (extensions, retries, repairs) is a count of chance events, known to 1/sqrt of it.
        excess = calls[p] - total[basis] * (calls[p] // total[basis])
        known[p] = math.sqrt(excess) / calls[p] if calls[p] else 0.0
    return out, known


def _defaults(shape: Shape) -> dict[str, _Guess]:
    out: dict[str, _Guess] = {}
    for p, basis in BASIS.items():
        n = DEFAULT_RATES[p] * getattr(shape, basis)
        (ai, bi), (ao, bo) = DEFAULT_IN[p], DEFAULT_OUT[p]
        out[p] = _Guess(n, n * (ai + bi * shape.chunk_words), n * (ao + bo * shape.chunk_words))
    return out


def _range(expected: float, error: float, spread: float, high_spread: float) -> dict[str, int]:
    return {
        "expected": round(expected),
        "low": max(0, math.floor((expected - error) * (1 - spread))),
        "high": math.ceil((expected + error) * (1 + high_spread)),
    }


def estimate(
    shape: Shape, history: Sequence[Measured], price: Price | None = None, compliance: float | None = None
) -> dict[str, Any]:
    """The estimate: expected calls, tokens in and out, cost and wall time with a low..high range
    (each kind of call's chance part known to within 1/sqrt of what was measured of it, twice
    that, widened a little; from the defaults, -50% .. +100%), each by kind of call, and the story
    memory's share of the tokens."""
    if history:
        guess, known = _predict(shape, history)
        spread, high = SPREAD, SPREAD
    else:
        guess, known = _defaults(shape), {p: 0.0 for p in BASIS}
        spread, high = DEFAULT_SPREAD, 1.0

    def ranged(what: str) -> dict[str, int]:
        expected = sum(getattr(g, what) for g in guess.values())
        error = SIGMAS * math.sqrt(sum((getattr(guess[p], what) * known[p]) ** 2 for p in BASIS))
        return _range(expected, error, spread, high)

    calls, t_in, t_out = ranged("calls"), ranged("tokens_in"), ranged("tokens_out")
    by_purpose = {
        p: {"calls": round(g.calls, 1), "tokens_in": round(g.tokens_in), "tokens_out": round(g.tokens_out)}
        for p, g in guess.items()
    }
    tokens = sum(v["tokens_in"] + v["tokens_out"] for v in by_purpose.values())
    memory = sum(by_purpose[p]["tokens_in"] + by_purpose[p]["tokens_out"] for p in MEMORY_PURPOSES)
    seconds = [
        m.wall_s / max(1.0, sum(m.calls.values()) / m.shape.lanes) for m in history if m.wall_s > 0 and m.calls
    ] or [DEFAULT_SECONDS_PER_CALL]
    per_call = sum(seconds) / len(seconds)
    path = calls["expected"] / shape.lanes
    spread_s = (max(seconds) - min(seconds)) / 2 if len(seconds) > 1 else per_call * 0.25
    wall = _range(
        path * per_call, path * spread_s + (calls["high"] - calls["expected"]) / shape.lanes * per_call, spread, high
    )

    def money(k: str) -> int | None:
        return cost_micro_usd(price, t_in[k], 0, t_out[k])

    cost = {k: money(k) for k in ("expected", "low", "high")}
    return {
        "basis": "history" if history else "defaults",
        "jobs_measured": len(history),
        "compliance": None if compliance is None else round(compliance, 3),
        "shape": shape.data(),
        "calls": calls,
        "tokens_in": t_in,
        "tokens_out": t_out,
        "wall_seconds": wall,
        "cost": {
            "priced": price is not None,
            "micro_usd": cost if price is not None else None,
            "usd": {k: usd(v) for k, v in cost.items() if v is not None} if price is not None else None,
        },
        "by_purpose": by_purpose,
        "memory_share": round(memory / tokens, 3) if tokens else 0.0,
    }
