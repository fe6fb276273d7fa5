"""The author's edits as rules: a node's text and how a hand-edited text goes back into its
chunks, where a selection lies, and which later passages relied on what an edit changed.

Pure: ``activities.edits`` reads and writes; the API checks a request with the same functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.extractor import sentences
from core.memory import ChunkMemory, Entry, key_of, norm
from core.text import count_words, paragraphs

JOIN = "\n\n"  # between the chunks of a node's text
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s", re.M)


def node_text(chunks: Sequence[str]) -> str:
    """A node's text as its author reads and edits it: its chunks' latest versions, in order."""
    return JOIN.join(t.strip() for t in chunks if t.strip())


def heading_problem(text: str) -> str | None:
    """Headings belong to the plan: a node's text has none (its title is edited in the plan)."""
    m = _HEADING.search(text)
    if m is None:
        return None
    line = text[m.start() :].split("\n", 1)[0]
    return f"the text has a heading ({line[:60]!r}): headings are the plan's; send the body text only"


def split_text(text: str, shares: Sequence[int]) -> list[str]:
    """``text`` cut at paragraphs into ``len(shares)`` consecutive pieces that follow the chunks'
    earlier word counts (``shares``): a text given back unchanged is cut exactly where it was,
    and an edited one where its words reach each chunk's old share of the whole. A piece may be
    empty (the text got shorter than the chunks before it)."""
    paras = paragraphs(text)
    n = len(shares)
    if n == 1:
        return [JOIN.join(paras)]
    total_old = max(1, sum(shares))
    total_new = sum(count_words(p) for p in paras)
    bounds, acc = [], 0
    for s in shares[:-1]:
        acc += s
        bounds.append(acc * total_new / total_old)  # where, in the new text's words, each chunk ends
    out: list[list[str]] = [[] for _ in range(n)]
    seen = 0
    for p in paras:
        i = sum(1 for b in bounds if seen >= b - 1e-9)  # the chunk this paragraph starts in
        out[min(i, n - 1)].append(p)
        seen += count_words(p)
    return [JOIN.join(x) for x in out]


@dataclass(frozen=True)
class Span:
    """The part of one chunk a selection covers: chunk ``index`` in the node, ``start``:``end`` in its text."""

    index: int
    start: int
    end: int


def locate(text: str, *, quote: str | None = None, start: int | None = None, end: int | None = None) -> tuple[int, int]:
    """A selection in a node's text, by its quoted words (found once, whitespace aside) or its
    offsets; ValueError saying what is wrong."""
    if quote is not None:
        words = quote.split()
        if not words:
            raise ValueError("the quote is empty")
        pat = re.compile(r"\s+".join(re.escape(w) for w in words))
        found = list(pat.finditer(text))
        if not found:
            raise ValueError("the quote is not in the node's text (quote its words exactly)")
        if len(found) > 1:
            raise ValueError(
                f"the quote occurs {len(found)} times in the node's text: quote more of it, or send offsets"
            )
        return found[0].start(), found[0].end()
    if start is None or end is None:
        raise ValueError("send the selection as quote, or as start and end")
    if not 0 <= start < end <= len(text):
        raise ValueError(f"start and end must satisfy 0 <= start < end <= {len(text)} (the text's length)")
    return start, end


def spans(chunks: Sequence[str], start: int, end: int) -> list[Span]:
    """Which chunks a selection of ``node_text(chunks)`` covers, and where in each."""
    out: list[Span] = []
    pos = 0
    for i, raw in enumerate(chunks):
        t = raw.strip()
        if not t:
            continue
        s, e = max(start, pos), min(end, pos + len(t))
        if s < e:
            out.append(Span(i, s - pos, e - pos))
        pos += len(t) + len(JOIN)
    return out


# -- what later passages relied on ---------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """An entity (or fact) an edit changed: what the ledger said before, and after (None: gone)."""

    key: str
    name: str
    before: Entry
    after: str | None
    category: str  # characters | facts


def changed(before: Iterable[Entry], after: Iterable[Entry]) -> list[Change]:
    """What a node's old memory established that its new memory no longer does, or says otherwise:
    an entity gone, an attribute with another value or gone, a fact gone."""
    new = list(after)
    new_attrs = {(e.key, e.attribute): e.value for e in new if e.kind == "attribute"}
    new_entities = {e.key for e in new if e.kind in ("entity", "attribute")}
    new_facts = {norm(e.value) for e in new if e.kind == "fact"}
    out: dict[tuple[str, str], Change] = {}
    for e in before:
        cat = "characters" if e.etype == "person" else "facts"
        if e.kind == "attribute":
            now = new_attrs.get((e.key, e.attribute))
            if now is None or norm(now) != norm(e.value):
                out.setdefault((e.key, e.attribute or ""), Change(e.key, e.name, e, now, cat))
        elif e.kind == "entity" and e.key not in new_entities:
            out.setdefault((e.key, ""), Change(e.key, e.name, e, None, cat))
        elif e.kind == "fact" and norm(e.value) not in new_facts:
            out.setdefault((e.key, "fact"), Change(e.key, e.value, e, None, "facts"))
    return list(out.values())


def mention(text: str, change: Change) -> str | None:
    """The first sentence of ``text`` that names what changed (an entity by its name, a fact by its
    words), or None: a later passage that relied on it."""
    if change.before.kind == "fact":
        needle = norm(change.before.value)
        return next((s for s in sentences(text) if needle and needle in norm(s)), None)
    key = f" {key_of(change.name)} "
    return next((s for s in sentences(text) if key.strip() and key in f" {norm(s)} "), None)


def memory_of(entries: Iterable[Entry], summary: str) -> ChunkMemory:
    """A passage's delta as its ledger entries hold it (for the rule checks of a passage checked
    again, whose memory call was made when it was written)."""
    ents: dict[str, dict] = {}
    out: dict[str, list] = {"events": [], "threads_opened": [], "threads_resolved": [], "facts": []}
    for e in entries:
        quote = (e.quote or e.value or e.name)[:600]
        if e.kind in ("entity", "attribute"):
            ent = ents.setdefault(
                e.key,
                {"name": e.name[:100], "type": e.etype or "other", "description": "", "quote": quote, "attributes": []},
            )
            if e.kind == "entity":
                ent.update(description=e.value[:300], quote=quote)
            elif e.attribute and e.value:
                ent["attributes"].append({"attribute": e.attribute[:80], "value": e.value[:300], "quote": quote})
        elif e.kind == "event":
            out["events"].append({"what": e.name[:300], "when": (e.when or "")[:120], "quote": quote})
        elif e.kind in ("thread", "resolved"):
            out["threads_opened" if e.kind == "thread" else "threads_resolved"].append(
                {"thread": e.value[:300], "quote": quote}
            )
        elif e.kind == "fact":
            out["facts"].append({"fact": e.value[:300], "quote": quote})
    for ent in ents.values():
        ent["attributes"] = ent["attributes"][:10]
    limits = {"events": 20, "threads_opened": 12, "threads_resolved": 12, "facts": 20}
    return ChunkMemory.model_validate(
        {"summary": summary or "-", "entities": list(ents.values())[:40], **{k: v[: limits[k]] for k, v in out.items()}}
    )
