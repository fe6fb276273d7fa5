"""The layout: how a target becomes a tree of parts, chapters, sections and chunks with budgets,
how a short document is topped up, and how finished chunks become one document with headings.
The only place sizes are decided.

The tree's depth follows the target: short documents are sections of chunks; longer ones chapters
of sections; very long ones parts of chapters of sections. Budgets are deterministic; titles and
content are planned by the model, lazily, one level at a time (see ``core.plan``). Rewrites use
the same tree, cut along the input's own headings and paragraphs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.text import count_words, paragraphs, split_parts, tail_words, trim_to_words

CHUNKS_PER_SECTION = 4
CHAPTER_WORDS = 5_000  # a chapter's budget: what one writer does while five others write theirs
CHAPTERS_PER_PART = 10
SECTIONS_ONLY_UP_TO = 10_000  # above this, chapters
CHAPTERS_ONLY_UP_TO = 120_000  # above this, parts of chapters
HEADINGS_FROM_WORDS = 300  # below this, headings would crowd out the text the user asked for
HEADROOM = 1.03  # plan a little over target: stitch may remove repeated paragraphs
CHUNK_SLACK = 1.05  # a chunk may run this far past its budget before it is trimmed at a sentence end
TOP_UP_MARGIN = 1.1  # a top-up aims this far over the deficit (stitch may remove text)
STITCH_WINDOW_CHUNKS = 3 * CHUNKS_PER_SECTION  # earlier text a section's stitch compares against
LEVELS = ("book", "part", "chapter", "section")
MAX_TOP_LEVEL = 24  # top-level nodes of a book: its skeleton lists them all in one planning call


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
class NodePlan:
    """A node of the plan tree: the book, a part, a chapter or a section (sections hold chunks)."""

    level: str
    budget: int
    title: str | None = None  # from the input's headings (rewrites); else planned by the model
    children: list[NodePlan] = field(default_factory=list)
    chunks: list[ChunkPlan] = field(default_factory=list)

    def walk(self) -> Iterator[NodePlan]:
        """This node and every node below it, in document order."""
        yield self
        for c in self.children:
            yield from c.walk()

    @property
    def depth(self) -> int:
        """Levels below this node, counting sections (a book of sections has depth 1)."""
        return 0 if not self.children else 1 + self.children[0].depth


def budgets(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` near-equal parts that sum to it exactly."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def levels_for(target_words: int) -> tuple[str, ...]:
    """The levels below the book for a document of ``target_words``."""
    if target_words <= SECTIONS_ONLY_UP_TO:
        return ("section",)
    if target_words <= CHAPTERS_ONLY_UP_TO:
        return ("chapter", "section")
    return ("part", "chapter", "section")


def tree_levels(tree: NodePlan) -> tuple[str, ...]:
    """The levels below the book that a laid-out tree has."""
    present = {n.level for n in tree.walk()}
    return tuple(lv for lv in LEVELS[1:] if lv in present)


def unit_level(levels: tuple[str, ...]) -> str:
    """The level whose nodes are written one at a time, strictly chained inside (the level just
    above sections): chapters, or the whole book when it is only sections."""
    return "chapter" if "chapter" in levels else "book"


def planned_words(target_words: int, max_words: int) -> int:
    """What the plan budgets: a little over the target, never over the maximum."""
    return min(max_words, max(target_words, math.ceil(target_words * HEADROOM)))


def section_words(chunk_words: int) -> int:
    return chunk_words * CHUNKS_PER_SECTION


def section_count(target_words: int, chunk_words: int) -> int:
    """Sections of about ``CHUNKS_PER_SECTION`` chunks each, at least one."""
    return max(1, math.ceil(target_words / section_words(chunk_words)))


def _chunks(budget: int, chunk_words: int) -> list[ChunkPlan]:
    n = max(1, round(budget / chunk_words)) if budget >= 1 else 1
    return [ChunkPlan(t) for t in budgets(max(1, budget), n) if t > 0] or [ChunkPlan(1)]


def _count(total: int, size: int) -> int:
    return max(1, round(total / size))


def generate_tree(total: int, chunk_words: int) -> NodePlan:
    """The tree of a generated document: budgets at every level summing to ``total``."""
    levels = levels_for(total)
    if levels == ("section",):
        sections = budgets(total, section_count(total, chunk_words))
        return NodePlan("book", total, children=[subtree("section", b, chunk_words) for b in sections])
    top = levels[0]
    size = CHAPTER_WORDS if top == "chapter" else CHAPTER_WORDS * CHAPTERS_PER_PART
    return NodePlan("book", total, children=[subtree(top, b, chunk_words) for b in budgets(total, _count(total, size))])


def subtree(level: str, budget: int, chunk_words: int, source: str | None = None) -> NodePlan:
    """One node of ``level`` with ``budget`` words and everything below it: a part's chapters, a
    chapter's sections, a section's chunks (a node added or re-budgeted when a plan is reviewed
    is laid out exactly as the planner lays out its own). With ``source`` (a rewrite's input for
    the node) the chunks rewrite it, cut along its paragraphs."""
    if level == "section":
        if source:
            return NodePlan(
                "section", budget, chunks=[c for s in _rewrite_sections(source, budget, chunk_words) for c in s.chunks]
            )
        return NodePlan("section", budget, chunks=_chunks(budget, chunk_words))
    if level == "chapter":
        if source:
            return NodePlan("chapter", budget, children=_rewrite_sections(source, budget, chunk_words))
        sections = budgets(budget, _count(budget, section_words(chunk_words)))
        return NodePlan("chapter", budget, children=[subtree("section", b, chunk_words) for b in sections])
    chapters = budgets(budget, _count(budget, CHAPTER_WORDS))
    texts = _in_turns(source, len(chapters)) if source else [None] * len(chapters)
    return NodePlan(
        "part", budget, children=[subtree("chapter", b, chunk_words, t) for b, t in zip(chapters, texts, strict=True)]
    )


def _in_turns(text: str, n: int) -> list[str | None]:
    """``text`` cut at paragraphs into ``n`` consecutive shares of about equal words (None: no text left)."""
    paras = paragraphs(text)
    total = max(1, sum(count_words(p) for p in paras))
    out: list[list[str]] = [[] for _ in range(n)]
    seen = 0
    for p in paras:
        out[min(n - 1, seen * n // total)].append(p)
        seen += count_words(p)
    return ["\n\n".join(x) or None for x in out]


# -- rewrites ----------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,3})\s+(.+?)\s*#*\s*$")


@dataclass
class _Segment:
    title: str | None
    text: str

    @property
    def words(self) -> int:
        return count_words(self.text)


def _segments(source: str) -> list[_Segment]:
    """The input cut at its highest heading level that occurs at least twice (the text before
    the first heading joins the first segment); one untitled segment if it has none."""
    lines = source.splitlines()
    found = [(m.group(1), m.group(2).strip()) for ln in lines if (m := _HEADING.match(ln))]
    for marks in ("#", "##", "###"):
        if sum(1 for h, _ in found if h == marks) >= 2:
            break
    else:
        return [_Segment(None, source)]
    segs: list[_Segment] = []
    title: str | None = None
    body: list[str] = []
    for ln in lines:
        m = _HEADING.match(ln)
        if m and m.group(1) == marks:
            if any(x.strip() for x in body):
                segs.append(_Segment(title, "\n".join(body)))
            title, body = m.group(2).strip(), []  # a heading with no text of its own: the next one wins
        else:  # lower headings stay in the text: sections take their titles from them
            body.append(ln)
    if any(x.strip() for x in body):
        segs.append(_Segment(title, "\n".join(body)))
    return segs or [_Segment(None, source)]


def _regroup(segs: list[_Segment], size: int) -> list[_Segment]:
    """Segments of about ``size`` input words: small neighbours merged, big ones split at
    paragraphs. A merged group keeps its first title; pieces of a split one are untitled."""
    out: list[_Segment] = []
    for s in segs:
        if s.words > 2 * size:
            pieces = split_parts(s.text, size)
            out.extend(_Segment(s.title if i == 0 else None, p) for i, p in enumerate(pieces))
        elif out and out[-1].words + s.words <= size and (out[-1].words < size / 2 or s.words < size / 2):
            out[-1] = _Segment(out[-1].title or s.title, out[-1].text + "\n\n" + s.text)
        else:
            out.append(s)
    return out


def rewrite_tree(source: str, total: int, chunk_words: int) -> NodePlan:
    """The tree of a rewrite: the same depth rule as a generated document, cut along the
    input's headings and paragraphs; budgets follow each passage's share of the input."""
    levels = levels_for(total)
    input_words = max(1, count_words(source))
    scale = total / input_words  # output words per input word
    book = NodePlan("book", total)
    unit_input = max(100, round(CHAPTER_WORDS / scale))  # input words that make a chapter
    if levels == ("section",):
        units = [(book, source)]
    else:
        chapters = _regroup(_segments(source), unit_input)
        while levels == ("chapter", "section") and len(chapters) > MAX_TOP_LEVEL:  # one planning call lists them
            unit_input = round(unit_input * 1.5)
            chapters = _regroup(chapters, unit_input)
        if levels == ("part", "chapter", "section"):
            per = max(1, math.ceil(len(chapters) / _count(total, CHAPTER_WORDS * CHAPTERS_PER_PART)))
            groups = [chapters[i : i + per] for i in range(0, len(chapters), per)]
            for g in groups:
                part = NodePlan("part", 0, children=[NodePlan("chapter", 0, s.title) for s in g])
                book.children.append(part)
            units = [
                (ch, s.text)
                for part, g in zip(book.children, groups, strict=True)
                for ch, s in zip(part.children, g, strict=True)
            ]
        else:
            book.children = [NodePlan("chapter", 0, s.title) for s in chapters]
            units = [(ch, s.text) for ch, s in zip(book.children, chapters, strict=True)]
    shares = budgets(total, 1) if len(units) == 1 else _shares(total, [count_words(t) for _, t in units])
    for (unit, text), budget in zip(units, shares, strict=True):
        unit.budget = budget
        unit.children = _rewrite_sections(text, budget, chunk_words)
    for part in book.children:
        if part.level == "part":
            part.budget = sum(ch.budget for ch in part.children)
    return book


def _shares(total: int, weights: list[int]) -> list[int]:
    """``total`` shared in proportion to ``weights``, summing to at least ``total``."""
    wsum = max(1, sum(max(1, w) for w in weights))
    return [max(1, math.ceil(total * max(1, w) / wsum)) for w in weights]


def _rewrite_sections(text: str, budget: int, chunk_words: int) -> list[NodePlan]:
    """A unit's input rewritten in chunks of about ``chunk_words`` output words, grouped into
    sections of ``CHUNKS_PER_SECTION`` chunks, titled by the input's own headings where it has them."""
    unit_words = max(1, count_words(text))
    # Input part size chosen so each chunk's output is about chunk_words.
    part_words = max(100, min(2500, round(chunk_words * unit_words / max(1, budget))))
    parts = split_parts(text, part_words)
    chunks: list[ChunkPlan] = []
    for p, share in zip(parts, _shares(budget, [count_words(p) for p in parts]), strict=True):
        n = max(1, math.ceil(share / (chunk_words * 1.5)))  # expanding a lot: several chunks per part
        for j, t in enumerate(budgets(share, n)):
            brief = "" if n == 1 else f"part {j + 1} of {n} of the rewrite of this source passage"
            chunks.append(ChunkPlan(max(1, t), brief, p))
    sections = []
    for si in range(0, len(chunks), CHUNKS_PER_SECTION):
        group = chunks[si : si + CHUNKS_PER_SECTION]
        heading = next(
            (m.group(2).strip() for c in group for ln in (c.source or "").splitlines() if (m := _HEADING.match(ln))),
            None,
        )
        sections.append(NodePlan("section", sum(c.target for c in group), heading, chunks=group))
    return sections


# -- top-ups and assembly ----------------------------------------------------------------------


def top_up(target_words: int, max_words: int, words: int, chunk_words: int) -> tuple[int, list[ChunkPlan]]:
    """A top-up for a document of ``words`` short of its target: (deficit, the chunks to add).

    Aims a little over the deficit without passing ``max_words``."""
    deficit = max(1, target_words - words)
    budget = min(math.ceil(deficit * TOP_UP_MARGIN) + 10, max(deficit, max_words - words))
    n = max(1, math.ceil(budget / chunk_words))
    return deficit, [ChunkPlan(max(1, t)) for t in budgets(budget, n)]


@dataclass(frozen=True)
class Block:
    """A node of the finished document, in order: its heading (level 1 = ``#``) and its text."""

    heading_level: int
    title: str | None  # None: no heading of its own (the book's title is the document's, top-ups)
    texts: list[str]
    node: int | None = None  # its plan node
    chunks: tuple[int, ...] = ()  # the ordinal of the chunk each text is, when known


@dataclass(frozen=True)
class Piece:
    """One part of the document in order: its title, a node's heading or one chunk's text. The job
    page shows a document as its pieces (each chunk its own anchor); joined, they are the file."""

    text: str
    heading: int = 0  # 1 = ``#``; 0: text
    node: int | None = None
    chunk: int | None = None  # the chunk's ordinal

    @property
    def markdown(self) -> str:
        return f"{'#' * self.heading} {self.text}" if self.heading else self.text


def pieces(title: str | None, target_words: int, blocks: list[Block]) -> list[Piece]:
    """The document's pieces from its nodes' chunk texts, in order. Headings (``#`` the title,
    ``##`` and below the hierarchy) only where the document is long enough for them."""
    headings = target_words >= HEADINGS_FROM_WORDS
    out = [Piece(title, 1)] if headings and title else []
    for b in blocks:
        if headings and b.title:
            out.append(Piece(b.title, b.heading_level, node=b.node))
        for i, t in enumerate(b.texts):
            if t and t.strip():
                out.append(Piece(t.strip(), node=b.node, chunk=b.chunks[i] if i < len(b.chunks) else None))
    return out


def assemble(title: str | None, target_words: int, blocks: list[Block]) -> str:
    """The document: its pieces as Markdown, a blank line apart."""
    return "\n\n".join(p.markdown for p in pieces(title, target_words, blocks)) + "\n"


@dataclass(frozen=True)
class Trim:
    """What finalize cut from the end of a document longer than the job's maximum: the words before
    and cut, the chunks (ordinals) it took words from, the last words kept and the first cut."""

    words_before: int
    words_cut: int
    chunks: tuple[int, ...]
    after: str  # the last words kept
    cut: str  # the beginning of what was cut

    @property
    def at(self) -> str:
        """Where the cut began, in words."""
        where = f"in chunk {self.chunks[0] + 1}" if self.chunks else "in the headings"
        more = f" (and chunks {self.chunks[1] + 1}-{self.chunks[-1] + 1})" if len(self.chunks) > 1 else ""
        return f"{where}, after '…{self.after}'{more}"

    def record(self) -> dict[str, object]:
        return {
            "words_before": self.words_before,
            "words_cut": self.words_cut,
            "words_after": self.words_before - self.words_cut,
            "chunks": list(self.chunks),
            "after": self.after,
            "cut": self.cut,
            "at": self.at,
        }


def assemble_within(
    title: str | None, target_words: int, blocks: list[Block], max_words: int
) -> tuple[str, Trim | None]:
    """The document (``assemble``), cut to ``max_words`` when it has more (``core.text.trim_to_words``:
    at a sentence end where one falls between the target and the maximum, never below the target),
    and what that cut (None: nothing)."""
    ps = pieces(title, target_words, blocks)
    doc = "\n\n".join(p.markdown for p in ps) + "\n"
    before = count_words(doc)
    if before <= max_words:
        return doc, None
    kept = trim_to_words(doc, max_words, target_words).rstrip()
    chunks, at = [], 0
    for p in ps:
        at += len(p.markdown)
        if at > len(kept) and p.chunk is not None:
            chunks.append(p.chunk)
        at += 2
    gone = " ".join(doc[len(kept) :].split())
    trim = Trim(before, before - count_words(kept), tuple(chunks), tail_words(kept, 8), gone[:200])
    return kept + "\n", trim
