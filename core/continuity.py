"""Continuity checks that can fail: a passage (and the delta the memory call made of it) against
the ledger of everything before it, and the coherence report a job's findings add up to.

Deterministic checks find what rules can see: a known name spelled another way, an attribute the
ledger holds stated differently, a resolved thread opened again, an event dated otherwise than
before, a chapter's opening that repeats the ending before it. The model judge (the memory call,
``core.memory.Contradiction``) finds what rules cannot, with quotes; both become ``Finding``s with
a ConStory-Bench category. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.memory import CATEGORIES, CATEGORY_NAMES, ChunkMemory, Entry, Ledger, key_of, norm, thread_match
from core.text import count_words, normalize_paragraph, paragraphs

SEVERITIES = ("minor", "major")
REPAIR_AT = "major"  # findings at or above this are repaired; the rest are reported
FINDING_STATUSES = ("open", "repaired", "unresolved")
# Attributes that change as a story moves (where someone is, how they feel): a new value is news,
# not a contradiction.
MUTABLE = {
    "location", "place", "where", "whereabouts", "position", "mood", "feeling", "emotion", "activity",
    "doing", "state", "condition", "status", "health", "plan", "goal", "current", "now", "occupation now",
}  # fmt: skip
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")


@dataclass
class Finding:
    """One continuity problem: what, where (a quote of this passage), against what (a ledger
    entry and its quote), how bad, found by which check, and how to fix it when a rule can."""

    category: str
    subtype: str
    severity: str
    detector: str  # "rule:<name>" or "judge"
    message: str
    quote: str
    entry_id: int | None = None
    quote_there: str = ""
    doc_order_there: int | None = None
    fix: tuple[str, str] | None = None  # (wrong, right): a spelling a rule can put right

    def data(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


def _words_re(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + r"\s+".join(re.escape(w) for w in phrase.split()) + r"(?![\w-])", re.I)


def name_variants(passage: str, ledger: Ledger) -> list[Finding]:
    """A known name of two or more words written otherwise ("harbor lantern council" for the
    "Harbor Lantern Council" the ledger holds)."""
    out: list[Finding] = []
    for v in ledger.entities.values():
        name = v.name
        if len(name.split()) < 2:
            continue  # one-word names are ordinary words too ("Hope", "Marsh"): not a rule's call
        seen: set[str] = set()
        for m in _words_re(name).finditer(passage):
            found = " ".join(m.group(0).split())
            if found == name or found in seen:
                continue
            seen.add(found)
            out.append(
                Finding(
                    category="style",
                    subtype="name_variant",
                    severity="major",
                    detector="rule:name_variant",
                    message=f"“{found}” is written for the established name “{name}”",
                    quote=_sentence_with(passage, m.start()),
                    entry_id=v.intro.id,
                    quote_there=v.intro.quote,
                    doc_order_there=v.intro.doc_order,
                    fix=(found, name),
                )
            )
    return out


def near_misses(passage: str, ledger: Ledger) -> list[Finding]:
    """A new capitalised name one letter away from a known one of six letters or more ("Elspath"
    beside "Elspeth"): likely a misspelling, reported (not repaired: it may be a new person)."""
    known = {k: v for k, v in ledger.entities.items() if len(v.name) >= 6 and " " not in v.name}
    if not known:
        return []
    out: list[Finding] = []
    seen: set[str] = set()
    # Every capitalised word, sentence openers too: one letter from a known name is evidence enough.
    for m in re.finditer(r"(?<![\w'’-])[A-Z][\w'’-]{4,}", passage):
        name = m.group(0)
        k = key_of(name)
        if k in ledger.entities or k in seen:
            continue
        seen.add(k)
        for kk, v in known.items():
            if kk[0] == k[:1] and _one_edit(k, kk):
                out.append(
                    Finding(
                        category="style",
                        subtype="name_spelling",
                        severity="minor",
                        detector="rule:near_miss",
                        message=f"“{name}” is one letter from the established “{v.name}”",
                        quote=_sentence_with(passage, m.start()),
                        entry_id=v.intro.id,
                        quote_there=v.intro.quote,
                        doc_order_there=v.intro.doc_order,
                    )
                )
                break
    return out


def _one_edit(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def changed_attributes(mem: ChunkMemory, ledger: Ledger) -> list[Finding]:
    """An attribute the ledger holds for an entity, stated with another value in this passage."""
    out: list[Finding] = []
    for e in mem.entities:
        view = ledger.entities.get(key_of(e.name))
        if view is None:
            continue
        for a in e.attributes:
            attr = key_of(a.attribute)
            old = view.attributes.get(attr)
            if old is None or attr in MUTABLE or _same_value(old.value, a.value):
                continue
            out.append(
                Finding(
                    category="characters" if view.etype == "person" else "facts",
                    subtype="attribute_changed",
                    severity="major",
                    detector="rule:attribute",
                    message=f"{view.name}'s {attr} is “{a.value}” here, “{old.value}” before",
                    quote=a.quote,
                    entry_id=old.id,
                    quote_there=old.quote,
                    doc_order_there=old.doc_order,
                )
            )
    return out


def _same_value(a: str, b: str) -> bool:
    na, nb = norm(a), norm(b)
    if na == nb or na in nb or nb in na:
        return True
    wa, wb = set(re.findall(r"\w+", na)), set(re.findall(r"\w+", nb))
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= 0.6


def reopened_threads(mem: ChunkMemory, ledger: Ledger) -> list[Finding]:
    out: list[Finding] = []
    for t in mem.threads_opened:
        for r in ledger.resolved.values():
            if thread_match(t.thread, r.value):
                out.append(
                    Finding(
                        category="plot",
                        subtype="thread_reopened",
                        severity="major",
                        detector="rule:thread",
                        message=f"the thread “{r.value}” was resolved before and is opened again",
                        quote=t.quote,
                        entry_id=r.id,
                        quote_there=r.quote,
                        doc_order_there=r.doc_order,
                    )
                )
                break
    return out


def timeline_breaks(mem: ChunkMemory, ledger: Ledger) -> list[Finding]:
    """An event the ledger dates (a year) dated to another year here."""
    dated = {e.key: e for e in ledger.events if e.when and _YEAR.search(e.when)}
    out: list[Finding] = []
    for ev in mem.events:
        new_year = _YEAR.search(ev.when or "")
        if new_year is None:
            continue
        for k, old in dated.items():
            old_year = _YEAR.search(old.when or "")
            if old_year and thread_match(k, ev.what) and old_year.group(1) != new_year.group(1):
                out.append(
                    Finding(
                        category="timeline",
                        subtype="event_redated",
                        severity="major",
                        detector="rule:timeline",
                        message=f"“{old.value}” happened in {old_year.group(1)} before, {new_year.group(1)} here",
                        quote=ev.quote,
                        entry_id=old.id,
                        quote_there=old.quote,
                        doc_order_there=old.doc_order,
                    )
                )
                break
    return out


def judged(mem: ChunkMemory, by_ref: dict[str, Entry]) -> list[Finding]:
    """The judge's contradictions, each tied to the ledger entry it names."""
    out: list[Finding] = []
    for c in mem.contradictions:
        e = by_ref.get(c.known.strip().upper())
        if e is None:
            continue
        out.append(
            Finding(
                category=c.category,
                subtype="judged",
                severity="major",
                detector="judge",
                message=c.explanation or f"contradicts {e.name}",
                quote=c.quote,
                entry_id=e.id,
                quote_there=e.quote,
                doc_order_there=e.doc_order,
            )
        )
    return out


def repeated_opening(before: str, after: str) -> list[Finding]:
    """A chapter whose opening paragraph repeats one of the last paragraphs before it."""
    ending = {normalize_paragraph(p): p for p in paragraphs(before)[-3:]}
    opening = paragraphs(after)[:1]
    if opening and count_words(opening[0]) >= 8 and normalize_paragraph(opening[0]) in ending:
        return [
            Finding(
                category="plot",
                subtype="repeated_opening",
                severity="major",
                detector="rule:repeated_opening",
                message="the chapter opens by repeating the paragraph that ends the one before it",
                quote=opening[0][:600],
                quote_there=ending[normalize_paragraph(opening[0])][:600],
            )
        ]
    return []


def check(passage: str, mem: ChunkMemory, ledger: Ledger) -> list[Finding]:
    """Every check of a passage and its delta against the ledger before it, the judge's included.
    One finding per (subtype, quote): two checks seeing the same thing report it once."""
    found = [
        *name_variants(passage, ledger),
        *near_misses(passage, ledger),
        *changed_attributes(mem, ledger),
        *reopened_threads(mem, ledger),
        *timeline_breaks(mem, ledger),
        *judged(mem, ledger.by_ref()),
    ]
    seen: set[tuple[str | None, str]] = set()
    out: list[Finding] = []
    for f in found:
        k = (f.entry_id, norm(f.quote)[:200])
        if k in seen and f.detector == "judge":
            continue  # a rule already has it, with its fix
        seen.add(k)
        out.append(f)
    return out


def needs_repair(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if SEVERITIES.index(f.severity) >= SEVERITIES.index(REPAIR_AT)]


def apply_fixes(passage: str, findings: Iterable[Finding]) -> tuple[str, list[Finding]]:
    """The passage with every rule's fix applied; returns it and the findings so fixed."""
    fixed: list[Finding] = []
    for f in findings:
        if f.fix is None:
            continue
        new = _words_re(f.fix[0]).sub(
            lambda m, fx=f.fix: fx[1] if " ".join(m.group(0).split()) == fx[0] else m.group(0), passage
        )
        if new != passage:
            passage = new
            fixed.append(f)
    return passage, fixed


def paragraph_of(passage: str, quote: str) -> int | None:
    """The index of the paragraph holding ``quote`` (normalised), or None."""
    q = norm(quote)
    for i, p in enumerate(paragraphs(passage)):
        if q and q[:120] in norm(p):
            return i
    return None


def _sentence_with(passage: str, at: int) -> str:
    start = max(passage.rfind(". ", 0, at), passage.rfind("\n", 0, at)) + 1
    end_dot = passage.find(". ", at)
    end = len(passage) if end_dot < 0 else end_dot + 1
    return " ".join(passage[start:end].split())[:600]


# -- inside a chapter: the stitch's text-level rules ---------------------------------------------

_REF = re.compile(r"\b(?:Section|Chapter|Part)\s+(\d{1,4})\b")


def seam_issues(chunks: list[tuple[int, str]], sections_total: int, seen_paragraphs: set[str]) -> list[dict[str, Any]]:
    """What the seams between chunks of a chapter get wrong as text, in the given (ordinal, text)
    chunks in order: paragraphs repeated from earlier text, references to sections that do not
    exist, passages that stop mid-sentence. ``seen_paragraphs`` (normalised paragraphs of earlier
    chunks) is extended in place."""
    issues: list[dict[str, Any]] = []
    for ordinal, text in chunks:
        for p in paragraphs(text):
            n = normalize_paragraph(p)
            if count_words(p) >= 8 and n in seen_paragraphs:
                issues.append({"type": "repeated_paragraph", "chunk": ordinal, "text": p[:120]})
            seen_paragraphs.add(n)
        for m in _REF.finditer(text):
            if int(m.group(1)) > sections_total:
                issues.append({"type": "dangling_reference", "chunk": ordinal, "text": m.group(0)})
    for (a, ta), (b, _) in zip(chunks, chunks[1:], strict=False):
        if ta.strip() and not re.search(r"[.!?…\"')\]]\s*$", ta.strip()):
            issues.append({"type": "broken_seam", "chunk": a, "next_chunk": b, "text": ta.strip()[-80:]})
    return issues


def remove_paragraph(text: str, snippet: str) -> str:
    return "\n\n".join(p for p in paragraphs(text) if not p.startswith(snippet))


# -- the report ---------------------------------------------------------------------------------


@dataclass
class ReportInput:
    words: int
    findings: Sequence[dict[str, Any]]  # rows: category, severity, status, ...
    ledger_entries: int
    ledger_entities: int
    states_by_source: dict[str, int] = field(default_factory=dict)
    seams: dict[str, int] = field(default_factory=dict)


def report(r: ReportInput) -> dict[str, Any]:
    """A job's coherence in numbers: findings per 10,000 words by category, found / repaired /
    open, the ledger's size, the share of states the model wrote vs the fallback."""
    per10k = 10_000 / r.words if r.words else 0.0
    by_cat = Counter(f["category"] for f in r.findings)
    status = Counter(f["status"] for f in r.findings)
    states = sum(r.states_by_source.values())
    fallback = r.states_by_source.get("fallback", 0)
    return {
        "words": r.words,
        "findings": len(r.findings),
        "found": len(r.findings),
        "repaired": status.get("repaired", 0),
        "open": status.get("open", 0) + status.get("unresolved", 0),
        "per_10k_words": round(len(r.findings) * per10k, 3),
        "open_per_10k_words": round((status.get("open", 0) + status.get("unresolved", 0)) * per10k, 3),
        "by_category": {
            c: {
                "name": CATEGORY_NAMES[c],
                "found": by_cat.get(c, 0),
                "per_10k_words": round(by_cat.get(c, 0) * per10k, 3),
                "open": sum(1 for f in r.findings if f["category"] == c and f["status"] != "repaired"),
            }
            for c in CATEGORIES
        },
        "ledger": {"entries": r.ledger_entries, "entities": r.ledger_entities},
        "states": {
            "total": states,
            "model": r.states_by_source.get("model", 0),
            "fallback": fallback,
            "fallback_share": round(fallback / states, 3) if states else 0.0,
        },
        "seams": dict(r.seams),
    }


def summary_line(rep: dict[str, Any]) -> str:
    """The report in one line (the CLI, the final audit event's message)."""
    n = rep["found"]
    return (
        f"{n} continuity finding{'' if n == 1 else 's'} ({rep['per_10k_words']} per 10,000 words): "
        f"{rep['repaired']} repaired, {rep['open']} open; ledger {rep['ledger']['entries']} entries; "
        f"memory by the model in {rep['states']['model']} of {rep['states']['total']} states"
    )


def brief(rep: dict[str, Any]) -> dict[str, Any]:
    """The report's counts in a few fields: what the final audit event and the webhook carry."""
    return {
        "found": rep["found"],
        "repaired": rep["repaired"],
        "open": rep["open"],
        "per_10k_words": rep["per_10k_words"],
        "fallback_share": rep["states"]["fallback_share"],
        "ledger_entries": rep["ledger"]["entries"],
        "seams": rep["seams"],
        "summary": summary_line(rep),
    }
