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
    "judge": "units",
    "repair": "chunks",
    "summary": "summarized",
    "stitch": "sections",
}
# Calls whose tokens grow with the passage (the words asked for, the passage shown).
SCALES_OUT = ("write", "extend", "repair")
SCALES_IN = ("memory", "judge")
MEMORY_PURPOSES = ("memory", "judge", "summary", "repair")
SPREAD = 0.10  # added around the range the history spans
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
    jobs: int = 1

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


def _per_job(shape: Shape, m: Measured) -> dict[str, _Guess]:
    """What job ``m`` says a job of ``shape`` makes, per kind of call."""
    out: dict[str, _Guess] = {}
    for p, basis in BASIS.items():
        have = getattr(m.shape, basis)
        calls = m.calls.get(p, 0)
        rate = calls / have if have else 0.0
        n = rate * getattr(shape, basis)
        per_in = m.tokens_in.get(p, 0) / calls if calls else 0.0
        per_out = m.tokens_out.get(p, 0) / calls if calls else 0.0
        scale = shape.chunk_words / max(1, m.shape.chunk_words)
        out[p] = _Guess(
            n, n * per_in * (scale if p in SCALES_IN else 1), n * per_out * (scale if p in SCALES_OUT else 1)
        )
    return out


def _defaults(shape: Shape) -> dict[str, _Guess]:
    out: dict[str, _Guess] = {}
    for p, basis in BASIS.items():
        n = DEFAULT_RATES[p] * getattr(shape, basis)
        (ai, bi), (ao, bo) = DEFAULT_IN[p], DEFAULT_OUT[p]
        out[p] = _Guess(n, n * (ai + bi * shape.chunk_words), n * (ao + bo * shape.chunk_words))
    return out


def _range(values: Sequence[float], spread: float, high_spread: float | None = None) -> dict[str, int]:
    mid = sum(values) / len(values)
    return {
        "expected": round(mid),
        "low": math.floor(min(values) * (1 - spread)),
        "high": math.ceil(max(values) * (1 + (spread if high_spread is None else high_spread))),
    }


def estimate(
    shape: Shape, history: Sequence[Measured], price: Price | None = None, compliance: float | None = None
) -> dict[str, Any]:
    """The estimate: expected calls, tokens in and out, cost and wall time with a low..high range
    (the spread of what the history's jobs would each predict, widened a little), each by kind
    of call, and the story memory's share of the tokens."""
    guesses = [_per_job(shape, m) for m in history] or [_defaults(shape)]
    spread, high = (SPREAD, SPREAD) if history else (DEFAULT_SPREAD, 1.0)

    def total(g: dict[str, _Guess], what: str) -> float:
        return sum(getattr(x, what) for x in g.values())

    calls = _range([total(g, "calls") for g in guesses], spread, high)
    t_in = _range([total(g, "tokens_in") for g in guesses], spread, high)
    t_out = _range([total(g, "tokens_out") for g in guesses], spread, high)
    by_purpose = {
        p: {
            "calls": round(sum(g[p].calls for g in guesses) / len(guesses), 1),
            "tokens_in": round(sum(g[p].tokens_in for g in guesses) / len(guesses)),
            "tokens_out": round(sum(g[p].tokens_out for g in guesses) / len(guesses)),
        }
        for p in BASIS
    }
    tokens = sum(v["tokens_in"] + v["tokens_out"] for v in by_purpose.values())
    memory = sum(by_purpose[p]["tokens_in"] + by_purpose[p]["tokens_out"] for p in MEMORY_PURPOSES)
    seconds = [
        m.wall_s / max(1.0, sum(m.calls.values()) / m.shape.lanes) for m in history if m.wall_s > 0 and m.calls
    ] or [DEFAULT_SECONDS_PER_CALL]
    path = [total(g, "calls") / shape.lanes for g in guesses]
    wall = _range([c * s for c in path for s in seconds], spread, high)

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
