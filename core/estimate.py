"""What a job will cost before it runs: model calls, tokens in and out, money and wall time, each
with a range, from the plan's shape (``core.layout``), what this model did on finished jobs (calls
per chunk, section, chapter and job for every purpose, tokens per call, seconds of work), the
prices (``core.cost``) and how many chapters run at once.

Every kind of call is counted, the story memory's too (``memory`` and ``judge`` per passage,
``summary`` per chapter, ``repair`` when a check finds something): they are a large share of a
job's tokens. With no finished job of the model to learn from, a ``Profile``'s defaults answer (a
chat model's, or the local model's), with the wide range such a guess deserves.

The ranges are measured, not assumed: each figure's range is the expected value times
``exp(+-Z * sigma)``, where sigma is how far jobs of this model strayed from what the others
predicted of them (each finished job estimated from the rest), pooled with a prior that stands
for the jobs not yet seen; with no history, the profile's own sigma. ``bench/bench_estimate.py``
checks that over varied jobs at least 80% of actuals land inside. Pure: ``services.estimate``
reads the history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
OUTLINE_TOKENS = 8  # a chunk prompt's outline line per top-level node (a title)
FIGURES = ("calls", "tokens_in", "tokens_out", "wall_seconds")
Z = 1.645  # the range's half-width in sigmas: 90% of jobs if sigma is right (80% is what we promise)
PRIOR_WEIGHT = 2.0  # a profile's prior for learnt estimates counts as this many measured jobs


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
    rewrite: bool = False  # the input's parts ride in the prompts (a node's opening, a chunk's source)

    @property
    def seams(self) -> int:
        """Seams between chapters: the judge reads the chapter after each."""
        return max(0, self.units - 1)

    @property
    def passage(self) -> float:
        """The words a passage is planned at: ``chunk_words``, or fewer in a job smaller than that."""
        return self.words / max(1, self.chunks)

    @property
    def lag(self) -> float:
        """The chapters a passage has before it, on average: each is a summary line of its prompt."""
        return (self.units - 1) / 2

    def path(self, concurrency: int | None = None) -> float:
        """The share of the job's calls on its critical path: chapters run ``parallelism`` at a
        time (and no more than the worker's model slots), so ceil(units / lanes) of them in turn."""
        lanes = max(1, min(self.parallelism, self.units, concurrency or self.parallelism))
        return math.ceil(self.units / lanes) / self.units

    def data(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("words", "chunk_words", "chunks", "sections", "units", "parallelism")}


def shape_of(tree: NodePlan, chunk_words: int, parallelism: int, rewrite: bool = False) -> Shape:
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
        rewrite=rewrite,
    )


@dataclass
class Measured:
    """One finished job: its shape and, per kind of call, the calls and tokens it made; its wall time."""

    shape: Shape
    calls: dict[str, int] = field(default_factory=dict)
    tokens_in: dict[str, int] = field(default_factory=dict)
    tokens_out: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(frozen=True)
class Profile:
    """What a model with no finished job is taken to do: calls per basis, tokens per call (a + b x
    chunk words; a rewrite's prompts carry its source too), how long a job takes (a fixed part,
    then per call a fixed part and its tokens at a speed), and how far a real job may stray from
    that guess (sigma of ln(actual / expected), per figure)."""

    name: str
    rates: Mapping[str, float]
    tokens_in: Mapping[str, tuple[float, float]]
    tokens_out: Mapping[str, tuple[float, float]]
    job_s: float  # per job: starting it, planning's bookkeeping, assembling the document
    call_s: float  # per call: the endpoint's latency and Quire's own work around it
    out_per_s: float  # tokens written a second
    in_per_s: float  # prompt tokens read a second
    sigma: Mapping[str, float]
    # The spread of a later job around an estimate learnt from this model's history, before the
    # history shows its own (a job is estimated from the others once there are two).
    learnt: Mapping[str, float]


# Calls per basis; Quire's own prompts, measured (bench/bench_estimate.py): a passage's prompt is its
# brief, the outline, the story memory's cut and the previous passage's tail, whatever its size.
_RATES = {"plan": 1.1, "expand": 1.05, "write": 1.0, "extend": 0.8, "memory": 1.05, "judge": 1.0,
          "repair": 0.05, "summary": 1.0, "stitch": 0.05}  # fmt: skip
_IN = {"plan": (400, 0), "expand": (500, 0), "write": (600, 0.1), "extend": (750, 0.1), "memory": (200, 1.6),
       "judge": (250, 1.6), "repair": (350, 0), "summary": (300, 0), "stitch": (150, 0)}  # fmt: skip
_OUT = {"plan": (600, 0), "expand": (400, 0), "write": (0, 1.15), "extend": (0, 0.45), "memory": (200, 0),
        "judge": (80, 0), "repair": (250, 0), "summary": (100, 0), "stitch": (30, 0)}  # fmt: skip
SOURCE_IN = {"plan": 350.0, "write": 1.1}  # a rewrite: per top-level node (its opening), per chunk word
# A chat model of a hosted provider. Some write what they are asked, some stop short and are
# extended again and again (the scripted model's "fake-short" writes 30-60%): the extension rate
# sits between, and sigma spans both; so do its memory answers (a rich model's JSON or a terse one).
CHAT = Profile(
    name="defaults for a chat model",
    rates=_RATES,
    tokens_in=_IN,
    tokens_out=_OUT,
    job_s=6.0,
    call_s=1.0,
    out_per_s=100.0,  # hosted models write 30 to 300 tokens a second: sigma covers them
    in_per_s=2000.0,
    sigma={"calls": 0.4, "tokens_in": 0.45, "tokens_out": 0.5, "wall_seconds": 1.0},
    learnt={"calls": 0.2, "tokens_in": 0.2, "tokens_out": 0.2, "wall_seconds": 0.3},
)
# The local demo model (Gemma 3 270M on llama.cpp, one call at a time on 2 cores), measured
# (bench_estimate, 2026-12-07): a base model, so no memory, judge or summary calls (the extractor
# remembers for it) and short prompts (the document so far); most answers run to the prose cap
# (LOCAL_MAX_TOKENS) whatever the passage, so tokens a call are flat, and the gate's cuts cost about
# two extensions a passage (2 to 6 tokens written a word kept). Its speed is the machine's: 27 to
# 41 tokens a second on idle cores, a few on busy ones; 20 sits between, and sigma spans both.
LOCAL = replace(
    CHAT,
    name="defaults for the local model",
    rates={**_RATES, "extend": 2.1, "memory": 0.0, "judge": 0.0, "repair": 0.0, "summary": 0.0},
    tokens_in={**_IN, "plan": (65, 0), "expand": (100, 0), "write": (60, 0.1), "extend": (250, 0.2)},
    tokens_out={**_OUT, "plan": (60, 0), "expand": (300, 0), "write": (430, 0), "extend": (440, 0)},
    job_s=10.0,
    call_s=2.0,
    out_per_s=20.0,
    in_per_s=100.0,
    sigma={"calls": 0.45, "tokens_in": 0.5, "tokens_out": 0.5, "wall_seconds": 1.0},
    learnt={"calls": 0.25, "tokens_in": 0.3, "tokens_out": 0.3, "wall_seconds": 0.9},
)


@dataclass
class _Guess:
    calls: float
    tokens_in: float
    tokens_out: float


def _defaults(shape: Shape, profile: Profile) -> dict[str, _Guess]:
    out: dict[str, _Guess] = {}
    for p, basis in BASIS.items():
        n = profile.rates[p] * getattr(shape, basis)
        (ai, bi), (ao, bo) = profile.tokens_in[p], profile.tokens_out[p]
        per_in = ai + bi * shape.passage + _source_in(shape, p)
        out[p] = _Guess(n, n * per_in, n * (ao + bo * shape.passage))
    return out


def _learnt(shape: Shape, history: Sequence[Measured], profile: Profile) -> dict[str, _Guess]:
    """What ``history`` (its jobs pooled) says a job of ``shape`` makes, per kind of call. A chunk's
    prompt grows with the book before it (a summary line per earlier chapter, an outline line per
    top-level node), and a rewrite's carry its source: its tokens per call are moved by those."""
    total = {k: sum(getattr(m.shape, k) for m in history) for k in (*set(BASIS.values()), "chunks")}
    calls = {p: sum(m.calls.get(p, 0) for m in history) for p in BASIS}
    t_in = {p: sum(m.tokens_in.get(p, 0) - _source_in(m.shape, p) * m.calls.get(p, 0) for m in history) for p in BASIS}
    t_out = {p: sum(m.tokens_out.get(p, 0) for m in history) for p in BASIS}
    summary_tokens = t_out["summary"] / calls["summary"] if calls["summary"] else 0.0
    weight = max(1, total["chunks"])
    lag = sum(m.shape.lag * m.shape.chunks for m in history) / weight
    top = sum(m.shape.top * m.shape.chunks for m in history) / weight
    cw = sum(m.shape.words for m in history) / weight  # words a passage, over the history
    growth = summary_tokens * (shape.lag - lag) + OUTLINE_TOKENS * (shape.top - top)
    out: dict[str, _Guess] = {}
    fallback = _defaults(shape, profile)
    for p, basis in BASIS.items():
        if not total[basis]:  # the history had none of these (a book of sections, no chapters): the defaults
            out[p] = fallback[p]
            continue
        n = calls[p] / total[basis] * getattr(shape, basis)
        per_in = t_in[p] / calls[p] if calls[p] else 0.0
        per_out = t_out[p] / calls[p] if calls[p] else 0.0
        scale = shape.passage / max(1.0, cw)
        per_in = per_in * scale if p in SCALES_IN else per_in + (growth if p in ("write", "extend") else 0.0)
        per_in = max(0.0, per_in) + _source_in(shape, p)
        out[p] = _Guess(n, n * per_in, n * per_out * (scale if p in SCALES_OUT else 1))
    return out


def _source_in(shape: Shape, purpose: str) -> float:
    """A rewrite's source in a prompt of ``purpose``: a node's opening in the plan, a chunk's part in its write."""
    if not shape.rewrite or purpose not in SOURCE_IN:
        return 0.0
    return SOURCE_IN[purpose] * (shape.top if purpose == "plan" else shape.passage)


def _work(shape: Shape, guess: Mapping[str, _Guess], profile: Profile, concurrency: int | None) -> float:
    """Seconds by the profile's speeds (its calls on the critical path): what history's wall times rescale."""
    total = sum(
        g.calls * profile.call_s + g.tokens_out / profile.out_per_s + g.tokens_in / profile.in_per_s
        for g in guess.values()
    )
    return profile.job_s + total * shape.path(concurrency)


def _actual(m: Measured) -> dict[str, _Guess]:
    return {p: _Guess(m.calls.get(p, 0), m.tokens_in.get(p, 0), m.tokens_out.get(p, 0)) for p in BASIS}


def _figures(
    shape: Shape, history: Sequence[Measured], profile: Profile, concurrency: int | None
) -> tuple[dict[str, _Guess], dict[str, float]]:
    """Per kind of call, the calls and tokens expected; and the four figures' expected totals."""
    guess = _learnt(shape, history, profile) if history else _defaults(shape, profile)
    work = _work(shape, guess, profile, concurrency)
    timed = [m for m in history if m.wall_s > 0 and m.calls]
    if timed:  # seconds a unit of the profile's work took on this model's jobs
        work *= sum(m.wall_s for m in timed) / max(
            1e-9, sum(_work(m.shape, _actual(m), profile, concurrency) for m in timed)
        )
    totals = {k: sum(getattr(g, k) for g in guess.values()) for k in ("calls", "tokens_in", "tokens_out")}
    return guess, {**totals, "wall_seconds": work}


def spread(history: Sequence[Measured], profile: Profile, concurrency: int | None = None) -> dict[str, float]:
    """Sigma of ln(actual / expected) per figure: each finished job estimated from the others,
    pooled with the profile's ``learnt`` (as ``PRIOR_WEIGHT`` jobs); with no history, its ``sigma``."""
    if not history:
        return dict(profile.sigma)
    squares = {f: PRIOR_WEIGHT * profile.learnt[f] ** 2 for f in FIGURES}
    n = 0
    if len(history) > 1:
        for i, m in enumerate(history):
            _, predicted = _figures(m.shape, [*history[:i], *history[i + 1 :]], profile, concurrency)
            actual = {"calls": sum(m.calls.values()), "tokens_in": sum(m.tokens_in.values()),
                      "tokens_out": sum(m.tokens_out.values()), "wall_seconds": m.wall_s}  # fmt: skip
            for f in FIGURES:
                if actual[f] > 0 and predicted[f] > 0:
                    squares[f] += math.log(actual[f] / predicted[f]) ** 2
            n += 1
    return {f: math.sqrt(squares[f] / (PRIOR_WEIGHT + n)) for f in FIGURES}


def _range(expected: float, sigma: float) -> dict[str, int]:
    return {
        "expected": round(expected),
        "low": max(0, math.floor(expected * math.exp(-Z * sigma))),
        "high": math.ceil(expected * math.exp(Z * sigma)),
    }


def estimate(
    shape: Shape,
    history: Sequence[Measured],
    price: Price | None = None,
    compliance: float | None = None,
    *,
    profile: Profile = CHAT,
    concurrency: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The estimate: expected calls, tokens in and out, cost and wall time, each with a low..high
    range that later jobs of this model land in 90% of the time by its measured spread (see the
    module), by kind of call, the story memory's share of the tokens, and what it is based on."""
    guess, expected = _figures(shape, history, profile, concurrency)
    sigma = spread(history, profile, concurrency)
    ranges = {f: _range(expected[f], sigma[f]) for f in FIGURES}
    by_purpose = {
        p: {"calls": round(g.calls, 1), "tokens_in": round(g.tokens_in), "tokens_out": round(g.tokens_out)}
        for p, g in guess.items()
    }
    tokens = sum(v["tokens_in"] + v["tokens_out"] for v in by_purpose.values())
    memory = sum(by_purpose[p]["tokens_in"] + by_purpose[p]["tokens_out"] for p in MEMORY_PURPOSES)
    t_in, t_out = ranges["tokens_in"], ranges["tokens_out"]
    cost = {k: cost_micro_usd(price, t_in[k], 0, t_out[k]) for k in ("expected", "low", "high")}
    if history:
        based = f"{source or f'{len(history)} finished job(s) of this model'}; each range: " + (
            "how far each of them strayed from what the others predicted of it, with a prior for jobs not seen yet"
            if len(history) > 1
            else "a prior for how far a model's jobs stray from such an estimate (one job shows no spread yet)"
        )
    else:
        based = f"{profile.name} (no finished job of this model yet): a guess, so each range is wide"
    return {
        "basis": "history" if history else "defaults",
        "jobs_measured": len(history),
        "based_on": based,
        "sigma": {f: round(s, 3) for f, s in sigma.items()},
        "compliance": None if compliance is None else round(compliance, 3),
        "shape": shape.data(),
        **ranges,
        "cost": {
            "priced": price is not None,
            "micro_usd": cost if price is not None else None,
            "usd": {k: usd(v) for k, v in cost.items() if v is not None} if price is not None else None,
        },
        "by_purpose": by_purpose,
        "memory_share": round(memory / tokens, 3) if tokens else 0.0,
    }
