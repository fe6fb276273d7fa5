"""The story memory: what each accepted passage tells the rest of the document (who and what it
names, with their attributes and the sentence that establishes each; events on the timeline;
threads opened and resolved; facts not to contradict), as the model writes it (validated JSON)
or, when it cannot, as a deterministic extractor finds it; the ledger those deltas fold into; and
how the ledger is cut to a token budget for a chunk's prompt, by rules.

Pure: no I/O. ``activities/memory.py`` asks the model and stores the ledger; the continuity
checks that read it are ``core/continuity.py``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.text import paragraphs

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
SUMMARY_WORDS = 80


def norm(text: str) -> str:
    """Text compared for quotes and keys: NFKC, curly quotes and dashes made plain, lower case,
    whitespace collapsed, outer punctuation stripped."""
    t = unicodedata.normalize("NFKC", text)
    t = t.translate(_PLAIN).lower()
    t = " ".join(t.split())
    return t.strip(" .,;:!?\"'()[]…-")


_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def key_of(name: str) -> str:
    """An entity's or thread's key: its normalised name without a leading article."""
    k = norm(name)
    return re.sub(r"^(?:the|a|an) ", "", k)


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

    @field_validator(
        "entities", "events", "threads_opened", "threads_resolved", "facts", "contradictions", mode="before"
    )
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _lenient_list(v)


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
    if total and len(dropped) * 2 > total:
        raise ValueError(f"{len(dropped)} of {total} items quote words that are not in the passage: {dropped[0]}")
    return Parsed(mem, dropped)


def _label(it: Any) -> str:
    for attr in ("name", "attribute", "what", "thread", "fact", "known"):
        if hasattr(it, attr):
            return str(getattr(it, attr))[:60]
    return "?"


# -- the deterministic extractor ----------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n+")
_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Mt|Jr|Sr|Capt|Col|Gen|Lt|Sgt|Prof|Rev|vs|No)\.\s", re.I)
_TOKEN = re.compile(r"[\w'’-]+|[^\w\s]")
_CONNECTORS = {"of", "the", "de", "van", "von", "la", "le", "du", "da", "del", "di", "al", "bin", "y"}
_PERSON_TITLES = {
    "mr", "mrs", "ms", "miss", "dr", "doctor", "captain", "capt", "lady", "lord", "sir", "dame", "king",
    "queen", "prince", "princess", "professor", "prof", "father", "mother", "sister", "brother", "uncle",
    "aunt", "colonel", "general", "lieutenant", "sergeant", "madame", "monsieur", "señor", "herr",
}  # fmt: skip
# Words that start sentences capitalised without being names; a name is never one of them alone.
_COMMON = set(
    """a about above after again against all also although am an and another any are as at be because been
    before being below between both but by can could did do does doing down during each either even every
    few for from further had has have having he her here hers herself him himself his how however i if in
    into is it its itself just let me meanwhile might more most much must my myself neither never no nor
    not now of off often on once only or other our ours ourselves out over own perhaps rather same she
    should since so some still such than that the their theirs them themselves then there therefore these
    they this those though through thus to too under until up upon us very was we were what whatever when
    where whether which while who whom whose why will with within without would yes yet you your yours
    yourself one two three four five six seven eight nine ten first second third last next later soon
    today tomorrow yesterday tonight morning evening night day chapter part section oh ah well indeed
    instead besides finally suddenly slowly quickly outside inside behind beyond across along around
    nothing something everything anything someone everyone nobody somebody everybody many several
    only""".split()
)


def sentences(text: str) -> list[str]:
    """Sentences of a passage (abbreviations such as "Mr." do not end one)."""
    protected = _ABBREV.sub(lambda m: m.group(0).replace(". ", ".\u2060"), text)
    out = [s.replace("\u2060", " ").strip() for s in _SENTENCE_END.split(protected)]
    return [s for s in out if s]


def _cap(tok: str) -> bool:
    return tok[:1].isupper() and any(ch.isalpha() for ch in tok) and tok not in ("I", "I'm", "I'd", "I'll", "I've")


def proper_names(text: str) -> list[tuple[str, str, str]]:
    """Every proper name in ``text`` with the first sentence that has it and a guessed type:
    (name, sentence, type), in order of first appearance. A name is a run of capitalised words
    (inner "of", "de", "van"... allowed) that is no common word; one capitalised word inside a
    sentence is a name even when it appears once. Every sentence's first word is capitalised, so
    a lone word there is a name only if the passage also capitalises it inside a sentence, or it
    runs into more capitalised words ("Captain Mara Quell checked...")."""
    sents = [_TOKEN.findall(s) for s in sentences(text)]
    inner = {t for toks in sents for i, t in enumerate(toks) if i > 0 and _cap(t) and re.match(r"\w", toks[i - 1])}
    found: dict[str, tuple[str, str, str]] = {}
    for sent, toks in zip(sentences(text), sents, strict=True):
        i = 0
        while i < len(toks):
            if not _cap(toks[i]):
                i += 1
                continue
            start = i
            run = [toks[i]]
            j = i + 1
            while j < len(toks):
                if _cap(toks[j]):
                    run.append(toks[j])
                    j += 1
                elif toks[j].lower() in _CONNECTORS and j + 1 < len(toks) and _cap(toks[j + 1]):
                    run += [toks[j], toks[j + 1]]
                    j += 2
                else:
                    break
            i = j
            opens = all(not re.match(r"\w", t) for t in toks[:start])
            while run and run[0].lower() in _COMMON:
                run, opens = run[1:], False
            while run and run[-1].lower() in _CONNECTORS:
                run = run[:-1]
            if not run or (opens and len(run) == 1 and run[0] not in inner):
                continue
            name = " ".join(run).strip("'’-")
            if len(name) < 2 or key_of(name) in found:
                continue
            prev = toks[start - 1].lower().rstrip(".") if start > 0 else ""
            kind = "person" if run[0].lower().rstrip(".") in _PERSON_TITLES or prev in _PERSON_TITLES else "other"
            found[key_of(name)] = (name, sent[:600], kind)
    # "Mara" alone, after "Mara Quell": the same person, not a new name.
    keys = list(found)
    return [found[k] for k in keys if not any(k != o and f" {k} " in f" {o} " for o in keys)]


def extract(passage: str) -> ChunkMemory:
    """The deterministic delta: an extractive summary and every proper name with the sentence
    that introduced it. What the model would add (attributes, events, threads, facts) it cannot
    know, so it claims none."""
    sents = sentences(" ".join(paragraphs(passage)))
    picked = sents[:1] + (sents[-1:] if len(sents) > 1 else [])
    summary = " ".join(" ".join(picked).split()[:SUMMARY_WORDS]) or "(empty passage)"
    ents = [Entity(name=n, type=t, quote=s) for n, s, t in proper_names(passage)[:40]]
    return ChunkMemory(summary=summary, entities=ents)


def merge(model: ChunkMemory, passage: str) -> tuple[ChunkMemory, list[str]]:
    """The model's delta with every proper name it left out added from the extractor (a valid
    answer that misses what the text plainly establishes is incomplete, not authoritative).
    Returns the merged delta and the names added."""
    have = {key_of(e.name) for e in model.entities}
    added: list[str] = []
    for name, sent, kind in proper_names(passage):
        k = key_of(name)
        if k in have or any(f" {k} " in f" {h} " or f" {h} " in f" {k} " for h in have):
            continue
        if len(model.entities) >= 40:
            break
        model.entities.append(Entity(name=name, type=kind, quote=sent))
        have.add(k)
        added.append(name)
    return model, added


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


# -- the memory in a prompt, to a budget --------------------------------------------------------


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
    blob = f" {norm(named)} "
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
    named_keys = {v.key for v in ents if f" {v.key} " in blob}
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
        t = f" {norm(e.value)} "
        return any(f" {k} " in t for k in named_keys)

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


def open_threads_after(ledger: Ledger, mem: ChunkMemory, limit: int = 12) -> list[str]:
    """The threads still open after a passage: the ledger's, minus what it resolves, plus what it opens."""
    still = [t.value for t in ledger.open_threads.values()]
    for r in mem.threads_resolved:
        still = [t for t in still if not thread_match(t, r.thread)]
    return (still + [t.thread for t in mem.threads_opened])[-limit:]
