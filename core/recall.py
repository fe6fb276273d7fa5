"""The story memory in a prompt, to a budget, by rules: the book so far in summaries, the
ledger's entities, open threads and facts for a chunk's prompt (``build_context``), and the
entries a judge is shown beside a passage (``judge_entries``). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.memory import EntityView, Entry, Ledger
from core.names import Mentions

JUDGE_TOKENS = 600  # ledger entries shown to the judge with a passage


def tokens(text: str) -> int:
    """A model-agnostic token estimate (about four characters a token), for budgets."""
    return (len(text) + 3) // 4


@dataclass
class Summary:
    """A summary of a stretch of the document before the chunk: a part, a chapter or a chunk."""

    level: str
    title: str
    text: str
    order: int  # document order (position of the node, or the chunk's ordinal)
    id: int | None = None  # its row (node_summaries) when it has one
    planned: bool = False  # a plan synopsis standing in for a summary not written yet


@dataclass
class MemoryContext:
    """What the memory puts into one chunk's prompt, and the record of it (ids, what was left out)."""

    summaries: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    entry_ids: list[int] = field(default_factory=list)
    summary_ids: list[int] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
    tokens: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "entries": self.entry_ids,
            "summaries": self.summary_ids,
            "omitted": {k: v for k, v in self.omitted.items() if v},
            "tokens": self.tokens,
        }


def entity_line(v: EntityView, limit_words: int = 40) -> str:
    """One entity for a prompt: its name, type, what it is, its attributes' latest values; the
    sentence that introduced it when there is nothing else (the extractor's entities)."""
    bits = [f"{v.name} ({v.etype})"]
    what = v.description
    attrs = [f"{a.attribute}: {a.value}" for a in v.attributes.values()]
    if not what and not attrs:
        what = "“" + " ".join(v.intro.quote.split()[:limit_words]) + "”"
    if what:
        bits.append(what)
    bits += attrs
    return " - ".join([bits[0], "; ".join(bits[1:])]) if len(bits) > 1 else bits[0]


def build_context(ledger: Ledger, summaries: Sequence[Summary], *, named: str, budget: int) -> MemoryContext:
    """The memory for one chunk's prompt within ``budget`` tokens, by rules:

    - summaries (the book so far, one line per stretch at the coarsest level that covers it,
      oldest first): the two newest always, then newer before older until 40% of the budget;
    - entities: all of them while they fit; beyond that, those ``named`` (their name appears in
      this passage's brief, its section's and chapter's plan, the plan path), then the most
      recently active, shown in the order they were introduced;
    - open threads, then facts: those that mention a named entity first, then the most recent.
    Nothing is cut mid-entry; what is left out is counted by kind."""
    ctx = MemoryContext()
    blob = Mentions(named)
    left = budget
    taken: list[Summary] = []
    used, cap = 0, int(budget * 0.4)
    for i, s in enumerate(reversed(summaries)):
        cost = tokens(_summary_line(s))
        if i >= 2 and used + cost > cap:
            break
        taken.append(s)
        used += cost
    ctx.omitted["summaries"] = len(summaries) - len(taken)
    for s in reversed(taken):
        ctx.summaries.append(_summary_line(s))
        if s.id is not None:
            ctx.summary_ids.append(s.id)
    left -= used

    ents = list(ledger.entities.values())
    named_keys = {v.key for v in ents if blob.has(v.key)}
    lines = {v.key: entity_line(v) for v in ents}
    thr, fac = list(ledger.open_threads.values()), ledger.facts
    room = int(left * 0.75) if (thr or fac) else left
    if sum(tokens(x) + 1 for x in lines.values()) <= room:
        chosen = ents
    else:
        ranked = sorted(ents, key=lambda v: (v.key not in named_keys, -v.last_seen, v.intro.doc_order))
        chosen, spent = [], 0
        for v in ranked:
            c = tokens(lines[v.key]) + 1
            if spent + c <= room:
                chosen.append(v)
                spent += c
        chosen.sort(key=lambda v: (v.intro.doc_order, v.intro.id))
    ctx.omitted["entities"] = len(ents) - len(chosen)
    for v in chosen:
        ctx.entities.append(lines[v.key])
        ctx.entry_ids += [v.intro.id, *(a.id for a in v.attributes.values())]
        left -= tokens(lines[v.key]) + 1

    def about_named(e: Entry) -> bool:
        said = Mentions(e.value)
        return any(said.has(k) for k in named_keys)

    for items, out, label in ((thr, ctx.threads, "threads"), (fac, ctx.facts, "facts")):
        kept = 0
        for e in sorted(items, key=lambda e: (not about_named(e), -e.doc_order, -e.id)):
            c = tokens(e.value) + 1
            if c <= left:
                out.append(e.value)
                ctx.entry_ids.append(e.id)
                left -= c
                kept += 1
        ctx.omitted[label] = len(items) - kept
    ctx.entry_ids = [i for i in ctx.entry_ids if i > 0]
    ctx.tokens = budget - left
    return ctx


def prompt_budget(chunk_words: int) -> int:
    """Tokens of memory in a chunk's prompt: about its own length in words, within bounds, so
    that what a chunk is told stays in proportion to what it writes."""
    return max(400, min(1500, int(chunk_words * 1.2)))


def _summary_line(s: Summary) -> str:
    label = {"part": "Part", "chapter": "Chapter", "section": "Section", "chunk": "Just before"}.get(s.level, "")
    head = f"{label} {s.title}".strip() if s.level != "chunk" else label
    return f"{head}{' (planned)' if s.planned else ''}: {' '.join(s.text.split())}"


def judge_entries(
    ledger: Ledger, passage: str, budget: int = JUDGE_TOKENS, must: Sequence[int] = ()
) -> list[tuple[str, str]]:
    """The ledger entries a judge sees beside a passage, with their refs: the entities the passage
    names (``core.names``) and their attributes, most recently active first, then the open
    threads and facts, within ``budget`` tokens; the entries in ``must`` (those a repair is
    checked against) always, and first."""
    said = Mentions(passage)
    owed = {f"E{i}" for i in must}
    groups: list[tuple[bool, int, list[tuple[str, str]]]] = []
    for v in ledger.entities.values():
        lines = [(v.intro.ref, entity_line(v))]
        lines += [(a.ref, f"{v.name}'s {a.attribute}: {a.value}") for a in v.attributes.values()]
        if said.has(v.key) or owed & {ref for ref, _ in lines}:
            groups.append((not owed & {ref for ref, _ in lines}, -v.last_seen, lines))
    rest = [
        (e.ref not in owed, 0, [(e.ref, ("open thread: " if e.kind == "thread" else "fact: ") + e.value)])
        for e in [*ledger.open_threads.values(), *reversed(ledger.facts)]
    ]
    ranked = sorted(groups, key=lambda g: g[:2]) + sorted(rest, key=lambda g: g[0])
    out: list[tuple[str, str]] = []
    left = budget
    for _, _, lines in ranked:
        for ref, line in lines:
            cost = tokens(line) + 3
            if cost <= left or ref in owed:
                out.append((ref, line))
                left -= cost
    return out
