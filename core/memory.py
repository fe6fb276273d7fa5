"""The story memory: what each accepted passage tells the rest of the document (who and what it
names, with their attributes and the sentence that establishes each; events on the timeline;
threads opened and resolved; facts not to contradict), as the model writes it (validated JSON),
and the ledger those deltas fold into.

Pure: no I/O. When the model cannot answer, ``core/extractor.py`` makes the delta; how the ledger
is cut to a prompt's budget is ``core/recall.py``; the continuity checks that read it are
``core/continuity.py``; ``activities/memory.py`` asks the model and ``db/memory.py`` stores it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.names import name_words

# ConStory-Bench's error categories (arXiv 2603.05890): every finding names one.
CATEGORIES = ("characters", "facts", "timeline", "plot", "style")
CATEGORY_NAMES = {
    "characters": "characters",
    "facts": "facts and world",
    "timeline": "timeline",
    "plot": "plot and threads",
    "style": "style and terms",
}
ENTITY_TYPES = ("person", "place", "object", "organisation", "term", "other")
Category = Literal["characters", "facts", "timeline", "plot", "style"]

_QUOTE_MIN_WORDS = 3  # a shorter "quote" matches anything


def norm(text: str) -> str:
    """Text compared for quotes and keys: NFKC, curly quotes and dashes made plain, lower case,
    whitespace collapsed, outer punctuation stripped."""
    t = unicodedata.normalize("NFKC", text)
    t = t.translate(_PLAIN).lower()
    t = " ".join(t.split())
    return t.strip(" .,;:!?\"'()[]…-")


_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def key_of(name: str) -> str:
    """An entity's or thread's key: its words (``core.names``) without a leading article."""
    return " ".join(name_words(name))


def quoted_in(quote: str, passage_norm: str) -> bool:
    """Whether ``quote`` is words of the passage (``passage_norm`` = ``norm(passage)``); an
    ellipsis inside a quote may stand for words left out, each piece must then be there."""
    pieces = [norm(p) for p in re.split(r"\.\.\.|…", quote) if norm(p)]
    if not pieces or sum(len(p.split()) for p in pieces) < _QUOTE_MIN_WORDS:
        return False
    return all(p in passage_norm for p in pieces)


def _lenient_list(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, dict):
        return [v]
    return v


class Attribute(BaseModel):
    attribute: str = Field(min_length=1, max_length=80)
    value: str = Field(min_length=1, max_length=300)
    quote: str = Field(min_length=1, max_length=600)


class Entity(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    type: str = "other"
    description: str = Field(default="", max_length=300)
    quote: str = Field(min_length=1, max_length=600)
    attributes: list[Attribute] = Field(default_factory=list, max_length=10)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        t = str(v or "other").lower().strip()
        t = {"organization": "organisation", "character": "person", "location": "place", "thing": "object"}.get(t, t)
        return t if t in ENTITY_TYPES else "other"

    @field_validator("attributes", mode="before")
    @classmethod
    def _attrs(cls, v: Any) -> Any:
        if isinstance(v, dict) and "attribute" not in v:  # {"eyes": "grey"}: no quotes, refused below
            return [{"attribute": k, "value": str(x), "quote": ""} for k, x in v.items()]
        return _lenient_list(v)


class Event(BaseModel):
    what: str = Field(min_length=1, max_length=300)
    when: str = Field(default="", max_length=120)
    quote: str = Field(min_length=1, max_length=600)


class Thread(BaseModel):
    thread: str = Field(min_length=1, max_length=300)
    quote: str = Field(min_length=1, max_length=600)


class Fact(BaseModel):
    fact: str = Field(min_length=1, max_length=300)
    quote: str = Field(min_length=1, max_length=600)


class Contradiction(BaseModel):
    """A place where the passage contradicts a ledger entry the judge was shown (by its ref)."""

    category: Category
    known: str = Field(min_length=1, max_length=20)
    quote: str = Field(min_length=1, max_length=600)
    explanation: str = Field(default="", max_length=400)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v: Any) -> Any:
        t = str(v or "").lower()
        for c in CATEGORIES:
            if t.startswith(c[:4]) or t == CATEGORY_NAMES[c]:
                return c
        return "plot" if "thread" in t else "facts" if "world" in t else "style" if "term" in t else v


class ChunkMemory(BaseModel):
    """One passage's delta, as the memory call answers it (and as the fallback makes it)."""

    summary: str = Field(min_length=1, max_length=1500)
    entities: list[Entity] = Field(default_factory=list, max_length=40)
    events: list[Event] = Field(default_factory=list, max_length=20)
    threads_opened: list[Thread] = Field(default_factory=list, max_length=12)
    threads_resolved: list[Thread] = Field(default_factory=list, max_length=12)
    facts: list[Fact] = Field(default_factory=list, max_length=20)
    contradictions: list[Contradiction] = Field(default_factory=list, max_length=12)
    # The refs of entries the judge says the passage states again, consistently: what the rules
    # cannot decide is "the same" only on the judge's word, never by its silence.
    agrees: list[str] = Field(default_factory=list, max_length=40)

    @field_validator(
        "entities", "events", "threads_opened", "threads_resolved", "facts", "contradictions", mode="before"
    )
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _lenient_list(v)

    @field_validator("agrees", mode="before")
    @classmethod
    def _refs(cls, v: Any) -> Any:
        return [str(x).strip().strip("[]").upper() for x in _lenient_list(v) if isinstance(x, str | int)]

    @property
    def agreed(self) -> set[int]:
        """The ledger entry ids of ``agrees``."""
        return {int(r[1:]) for r in self.agrees if r[:1] == "E" and r[1:].isdigit()}


@dataclass
class Parsed:
    memory: ChunkMemory
    dropped: list[str] = field(default_factory=list)  # items refused (a quote not in the passage, ...)


def parse_memory(raw: str, passage: str, known_refs: Iterable[str] = ()) -> Parsed:
    """The model's answer, validated against the passage: a JSON object of the schema, every
    quote words of the passage, every contradiction naming a ref the judge was shown. Items that
    fail are dropped and listed; an answer that loses more than half its quoted items is not an
    answer (ValueError, with what is wrong, for the retry)."""
    m = re.search(r"\{.*\}", raw.strip(), re.S)
    if not m:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    try:
        mem = ChunkMemory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{exc.error_count()} schema error(s), first at {where}: {first['msg']}") from None
    text = norm(passage)
    refs = set(known_refs)
    dropped: list[str] = []
    total = 0

    def keep(items: list[Any], label: str, extra: Any = None) -> list[Any]:
        nonlocal total
        out = []
        for it in items:
            total += 1
            if not quoted_in(it.quote, text):
                dropped.append(f"{label} {_label(it)!r}: its quote is not in the passage")
            elif extra is not None and not extra(it):
                dropped.append(f"{label} {_label(it)!r}: names {getattr(it, 'known', '')!r}, not a ref it was shown")
            else:
                out.append(it)
        return out

    for e in mem.entities:
        e.attributes = keep(e.attributes, f"attribute of {e.name}")
    mem.entities = keep(mem.entities, "entity")
    mem.events = keep(mem.events, "event")
    mem.threads_opened = keep(mem.threads_opened, "thread")
    mem.threads_resolved = keep(mem.threads_resolved, "resolved thread")
    mem.facts = keep(mem.facts, "fact")
    mem.contradictions = keep(mem.contradictions, "contradiction", lambda c: c.known.strip().upper() in refs)
    dropped += [f"agrees {r!r}: not a ref it was shown" for r in mem.agrees if r not in refs]
    mem.agrees = [r for r in dict.fromkeys(mem.agrees) if r in refs]
    if total and len(dropped) * 2 > total:
        raise ValueError(f"{len(dropped)} of {total} items quote words that are not in the passage: {dropped[0]}")
    return Parsed(mem, dropped)


def _label(it: Any) -> str:
    for attr in ("name", "attribute", "what", "thread", "fact", "known"):
        if hasattr(it, attr):
            return str(getattr(it, attr))[:60]
    return "?"


# -- the ledger ---------------------------------------------------------------------------------


@dataclass
class NewEntry:
    """A ledger row to write, from one delta."""

    kind: str
    key: str
    name: str
    value: str
    quote: str
    attribute: str | None = None
    etype: str | None = None
    when: str | None = None


def entries_of(mem: ChunkMemory) -> list[NewEntry]:
    """A delta as ledger rows (the summary goes on the coherence state, contradictions are findings)."""
    out: list[NewEntry] = []
    for e in mem.entities:
        k = key_of(e.name)
        out.append(NewEntry("entity", k, e.name, e.description, e.quote, etype=e.type))
        for a in e.attributes:
            out.append(NewEntry("attribute", k, e.name, a.value, a.quote, attribute=key_of(a.attribute)))
    for ev in mem.events:
        out.append(NewEntry("event", key_of(ev.what)[:200], ev.what, ev.what, ev.quote, when=ev.when or None))
    for t in mem.threads_opened:
        out.append(NewEntry("thread", key_of(t.thread)[:200], t.thread, t.thread, t.quote))
    for t in mem.threads_resolved:
        out.append(NewEntry("resolved", key_of(t.thread)[:200], t.thread, t.thread, t.quote))
    for f in mem.facts:
        out.append(NewEntry("fact", key_of(f.fact)[:200], f.fact, f.fact, f.quote))
    return out


@dataclass
class Entry:
    """A ledger row as read back: where it was set (``doc_order``: its chunk's ordinal, -1 for
    the plan) and by which chunk version."""

    id: int
    kind: str
    key: str
    name: str
    value: str
    quote: str
    doc_order: int
    attribute: str | None = None
    etype: str | None = None
    when: str | None = None
    chunk_version_id: int | None = None
    source: str = "model"

    @property
    def ref(self) -> str:
        return f"E{self.id}"


def as_entry(e: NewEntry, id: int, doc_order: int, source: str = "model") -> Entry:
    """A ledger row not stored yet, as one read back (a chapter's own entries, at its seam)."""
    return Entry(id, e.kind, e.key, e.name, e.value, e.quote, doc_order, e.attribute, e.etype, e.when, None, source)


@dataclass
class EntityView:
    name: str
    key: str
    etype: str
    intro: Entry
    description: str
    attributes: dict[str, Entry] = field(default_factory=dict)  # latest value of each attribute
    last_seen: int = -1


@dataclass
class Ledger:
    """The ledger as one chunk sees it: the entries set before it in document order, folded."""

    entities: dict[str, EntityView] = field(default_factory=dict)
    open_threads: dict[str, Entry] = field(default_factory=dict)
    resolved: dict[str, Entry] = field(default_factory=dict)
    facts: list[Entry] = field(default_factory=list)
    events: list[Entry] = field(default_factory=list)
    size: int = 0

    def by_ref(self) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for v in self.entities.values():
            out[v.intro.ref] = v.intro
            for a in v.attributes.values():
                out[a.ref] = a
        for e in [*self.open_threads.values(), *self.resolved.values(), *self.facts, *self.events]:
            out[e.ref] = e
        return out


def thread_match(a: str, b: str) -> bool:
    """Two statements of one thread: the same key, or most of their words shared."""
    ka, kb = key_of(a), key_of(b)
    if ka == kb:
        return True
    wa, wb = set(re.findall(r"\w{3,}", ka)), set(re.findall(r"\w{3,}", kb))
    return bool(wa and wb) and len(wa & wb) / min(len(wa), len(wb)) >= 0.6


def fold(entries: Iterable[Entry]) -> Ledger:
    """Entries (in document order, then id) folded into what holds after them: each entity with
    its first mention and the latest value of each attribute, threads still open, facts, events."""
    led = Ledger()
    for e in sorted(entries, key=lambda x: (x.doc_order, x.id)):
        led.size += 1
        if e.kind in ("entity", "attribute"):
            view = led.entities.get(e.key)
            if view is None:
                intro = e if e.kind == "entity" else Entry(**{**e.__dict__, "kind": "entity", "value": ""})
                view = led.entities[e.key] = EntityView(e.name, e.key, e.etype or "other", intro, intro.value)
            if e.kind == "attribute" and e.attribute:
                view.attributes[e.attribute] = e
            elif e.value and not view.description:
                view.description = e.value
            if e.etype and e.etype != "other" and view.etype == "other":
                view.etype = e.etype
            view.last_seen = max(view.last_seen, e.doc_order)
        elif e.kind == "thread":
            led.open_threads[e.key] = e
        elif e.kind == "resolved":
            for k, t in list(led.open_threads.items()):
                if thread_match(t.value, e.value):
                    del led.open_threads[k]
            led.resolved[e.key] = e
        elif e.kind == "fact":
            led.facts.append(e)
        elif e.kind == "event":
            led.events.append(e)
    return led


def open_threads_after(ledger: Ledger, mem: ChunkMemory, limit: int = 12) -> list[str]:
    """The threads still open after a passage: the ledger's, minus what it resolves, plus what it opens."""
    still = [t.value for t in ledger.open_threads.values()]
    for r in mem.threads_resolved:
        still = [t for t in still if not thread_match(t, r.thread)]
    return (still + [t.thread for t in mem.threads_opened])[-limit:]


def plan_entries(glossary: dict[str, str]) -> list[NewEntry]:
    """The plan's glossary and cast as the ledger's first entries."""
    return [
        NewEntry("entity", key_of(term), term.strip()[:200], (definition or "").strip(), f"the plan: {definition}")
        for term, definition in glossary.items()
        if term.strip()
    ]
