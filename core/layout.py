"""The layout: how a target becomes sections and chunks, how a short document is topped up, and
how the finished chunks become one document. The only place chunk sizing is decided."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.plan import PlanModel
from core.text import count_words, split_parts

CHUNKS_PER_SECTION = 4
HEADINGS_FROM_WORDS = 300  # below this, headings would crowd out the text the user asked for
HEADROOM = 1.03  # plan a little over target: stitch may remove repeated paragraphs
CHUNK_SLACK = 1.05  # a chunk may run this far past its budget before it is trimmed at a sentence end
TOP_UP_MARGIN = 1.1  # a top-up aims this far over the deficit (stitch may remove text)
STITCH_WINDOW_CHUNKS = 3 * CHUNKS_PER_SECTION  # earlier text a seam check compares against


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk: a model call's worth of text, with the words it must have."""

    target: int
    brief: str = ""
    source: str | None = None  # the input passage it rewrites

    @property
    def min_words(self) -> int:
        return self.target

    @property
    def max_words(self) -> int:
        return max(self.target, math.floor(self.target * CHUNK_SLACK))


@dataclass
class SectionPlan:
    title: str
    summary: str = ""
    key_points: list[str] = field(default_factory=list)
    chunks: list[ChunkPlan] = field(default_factory=list)

    @property
    def target_words(self) -> int:
        return sum(c.target for c in self.chunks)


def budgets(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` near-equal parts that sum to it exactly."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def section_count(target_words: int, chunk_words: int) -> int:
    """Sections of about ``CHUNKS_PER_SECTION`` chunks each, at least one."""
    return max(1, math.ceil(target_words / (chunk_words * CHUNKS_PER_SECTION)))


def planned_words(target_words: int, max_words: int) -> int:
    """What the plan budgets: a little over the target, never over the maximum."""
    return min(max_words, max(target_words, math.ceil(target_words * HEADROOM)))


def generate_layout(total: int, chunk_words: int, n_sections: int, plan: PlanModel) -> list[SectionPlan]:
    """Sections with budgets summing to ``total``, titled from the plan (repeated when the plan
    has fewer sections than the layout needs), each cut into chunks of about ``chunk_words``."""
    planned = plan.sections
    out = []
    for si, budget in enumerate(budgets(total, n_sections)):
        base = planned[si * len(planned) // n_sections]
        repeat = n_sections > len(planned)
        part = si - (si * len(planned) // n_sections) * n_sections // len(planned)
        title = base.title + (f" ({part + 1})" if repeat and part > 0 else "")
        n_chunks = max(1, round(budget / chunk_words)) if budget >= 1 else 1
        targets = [t for t in budgets(budget, n_chunks) if t > 0] or [1]
        points = base.key_points
        chunks = [ChunkPlan(t, points[ci % len(points)] if points else "") for ci, t in enumerate(targets)]
        out.append(SectionPlan(title, base.summary, list(points), chunks))
    return out


def rewrite_layout(source: str, total: int, chunk_words: int, plan: PlanModel) -> list[SectionPlan]:
    """The input cut into passages at paragraph boundaries, each rewritten into chunks whose
    budgets share ``total`` in proportion to the passage's words; sections follow the input's
    own headings where it has them."""
    input_words = max(1, count_words(source))
    # Input part size chosen so each chunk's output is about chunk_words.
    part_words = max(100, min(2500, round(chunk_words * input_words / max(1, total))))
    parts = split_parts(source, part_words)
    weights = [max(1, count_words(p)) for p in parts]
    wsum = sum(weights)
    chunks: list[ChunkPlan] = []
    for p, w in zip(parts, weights, strict=True):
        share = math.ceil(total * w / wsum)
        n = max(1, math.ceil(share / (chunk_words * 1.5)))  # expanding a lot: several chunks per part
        for j, t in enumerate(budgets(share, n)):
            brief = "" if n == 1 else f"part {j + 1} of {n} of the rewrite of this source passage"
            chunks.append(ChunkPlan(max(1, t), brief, p))
    planned = plan.sections
    out = []
    for si in range(0, len(chunks), CHUNKS_PER_SECTION):
        k = si // CHUNKS_PER_SECTION
        group = chunks[si : si + CHUNKS_PER_SECTION]
        heading = next(
            (ln.strip("# ").strip() for c in group for ln in (c.source or "").splitlines() if ln.startswith("#")),
            None,
        )
        if k < len(planned):
            base = planned[k]
            out.append(SectionPlan(heading or base.title, base.summary, list(base.key_points), group))
        else:
            out.append(SectionPlan(heading or f"Part {k + 1}", "", [], group))
    return out


def top_up(target_words: int, max_words: int, words: int, chunk_words: int) -> tuple[int, list[ChunkPlan]]:
    """A top-up for a document of ``words`` short of its target: (deficit, the chunks to add).

    Aims a little over the deficit without passing ``max_words``."""
    deficit = max(1, target_words - words)
    budget = min(math.ceil(deficit * TOP_UP_MARGIN) + 10, max(deficit, max_words - words))
    n = max(1, math.ceil(budget / chunk_words))
    return deficit, [ChunkPlan(max(1, t)) for t in budgets(budget, n)]


@dataclass(frozen=True)
class AssembledSection:
    title: str
    is_continuation: bool
    texts: list[str]


def assemble(title: str | None, target_words: int, sections: list[AssembledSection]) -> str:
    """The document from its sections' chunk texts, in order. Headings (``#`` title, ``##``
    sections) only where the document is long enough for them; top-ups have none of their own."""
    headings = target_words >= HEADINGS_FROM_WORDS
    out: list[str] = [f"# {title}"] if headings and title else []
    for s in sections:
        body = [t.strip() for t in s.texts if t and t.strip()]
        if headings and not s.is_continuation and body:
            out.append(f"## {s.title}")
        out.extend(body)
    return "\n\n".join(out) + "\n"
