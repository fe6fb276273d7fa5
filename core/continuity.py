"""Continuity checks that can fail: a passage (and the delta the memory call made of it) against
the ledger of everything before it.

Deterministic checks find what rules can see: a known name written in other letter case (names
found as words, ``core.names``), an attribute the ledger holds stated with a value that differs
(``core.values``), a resolved thread opened again, an event dated otherwise than before, a
chapter's opening that repeats the ending before it. The model judge (the memory call,
``core.memory.Contradiction``) finds what rules cannot, with quotes; both become ``Finding``s with
a ConStory-Bench category. What is repaired, and on what evidence, is ``core/repair.py``; the
report they add up to ``core/coherence.py``. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from core.memory import ChunkMemory, EntityView, Entry, Ledger, key_of, norm, thread_match
from core.names import ARTICLES, Mentions, name_words, resolve, tokens
from core.text import count_words, normalize_paragraph, paragraphs
from core.values import compare

SEVERITIES = ("minor", "major")
REPAIR_AT = "major"  # findings at or above this are repaired; the rest are reported
FINDING_STATUSES = ("open", "repaired")
# Attributes that change as a story moves (where someone is, how they feel): a new value is news,
# not a contradiction.
MUTABLE = {
    "location", "place", "where", "whereabouts", "position", "mood", "feeling", "emotion", "activity",
    "doing", "state", "condition", "status", "health", "plan", "goal", "current", "now", "currently",
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
    tried: str = ""  # open after a repair: what was tried and why it is not repaired

    def data(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


def _starts_sentence(text: str, at: int) -> bool:
    """Whether offset ``at`` begins a sentence (the text's start, a line's, or after . ! ? …,
    opening quotes and brackets between)."""
    i = at - 1
    while i >= 0 and (text[i] in " \t\"'“‘([" or text[i] == "\u00a0"):
        i -= 1
    return i < 0 or text[i] in ".!?…\n" or "\n" in text[i + 1 : at]


def _bare(name: str) -> str:
    """A name as established, without a leading article ("the Harbour Board" -> "Harbour Board")."""
    words = name.split()
    while len(words) > 1 and words[0].lower() in ARTICLES:
        words = words[1:]
    return " ".join(words)


def _as_written(text: str, start: int, bare: str) -> str:
    """How ``bare`` should read at ``start``: as established, its first letter capitalised at a
    sentence's start when the text has it so (a sentence start never changes case)."""
    if _starts_sentence(text, start) and text[start : start + 1].isupper():
        return bare[:1].upper() + bare[1:]
    return bare


def _variants(text: str, bare: str, said: Mentions | None = None) -> list[tuple[int, int, str, str]]:
    """Each place ``text`` (``said``: its words, when indexed already) writes the name ``bare``
    with other letter case than established: (start, end, as written, as it should read). A
    difference other than case (another word, other punctuation) is not a spelling for a rule to
    put right."""
    out = []
    for start, end in (said or Mentions(text)).spans(bare):
        found = " ".join(text[start:end].split())
        right = _as_written(text, start, bare)
        if found != right and found.lower() == right.lower():
            out.append((start, end, found, right))
    return out


def name_variants(passage: str, ledger: Ledger) -> list[Finding]:
    """A known name of two or more words written with other letter case ("harbor lantern council"
    for the "Harbor Lantern Council" the ledger holds). Names are found as words (``core.names``);
    a sentence's first letter and an article are never a variant."""
    out: list[Finding] = []
    said = Mentions(passage)
    for v in ledger.entities.values():
        bare = _bare(v.name)
        if len(name_words(bare)) < 2:
            continue  # one-word names are ordinary words too ("Hope", "Marsh"): not a rule's call
        seen: set[str] = set()
        for start, _, found, _right in _variants(passage, bare, said):
            if found in seen:
                continue
            seen.add(found)
            out.append(
                Finding(
                    category="style",
                    subtype="name_variant",
                    severity="major",
                    detector="rule:name_variant",
                    message=f"“{found}” is written for the established name “{bare}”",
                    quote=_sentence_with(passage, start),
                    entry_id=v.intro.id,
                    quote_there=v.intro.quote,
                    doc_order_there=v.intro.doc_order,
                    fix=(found, bare),
                )
            )
    return out


def near_misses(passage: str, ledger: Ledger) -> list[Finding]:
    """A new capitalised name one letter away from a known one of six letters or more ("Elspath"
    beside "Elspeth"): likely a misspelling, reported (not repaired: it may be a new person)."""
    known = {k: v for k, v in ledger.entities.items() if len(v.name) >= 6 and len(name_words(v.name)) == 1}
    if not known:
        return []
    out: list[Finding] = []
    seen: set[str] = set()
    # Every capitalised word, sentence openers too: one letter from a known name is evidence enough.
    for t in tokens(passage):
        k = t.key
        if len(k) < 5 or not passage[t.start].isupper() or k in ledger.entities or k in seen:
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
                        message=f"“{passage[t.start : t.end]}” is one letter from the established “{v.name}”",
                        quote=_sentence_with(passage, t.start),
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


def _stem(words: tuple[str, ...]) -> set[str]:
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}


def _attribute_of(view: EntityView, attr: str) -> tuple[Entry | None, bool]:
    """The ledger's value of an entity's attribute: (entry, exact?). Not the same key, an
    attribute whose words hold the other's ("eyes", "eye colour") is the same attribute, inexactly."""
    if attr in view.attributes:
        return view.attributes[attr], True
    mine = _stem(name_words(attr))
    close = [e for k, e in view.attributes.items() if mine <= _stem(name_words(k)) or _stem(name_words(k)) <= mine]
    return (close[0], False) if len(close) == 1 else (None, False)


def changed_attributes(mem: ChunkMemory, ledger: Ledger) -> list[Finding]:
    """An attribute the ledger holds for an entity, stated with another value in this passage
    (``core.values``: a value that differs by negation, number, proper name or a listed
    alternative). A value the rules cannot tell from the established one is the judge's: unless
    the judge says the passage agrees with that entry (``mem.agrees``), it is reported (minor),
    never "the same"."""
    out: list[Finding] = []
    for e in mem.entities:
        found = resolve(e.name, ledger.entities)
        if not found:
            continue
        view = ledger.entities[found[0]]
        for a in e.attributes:
            attr = key_of(a.attribute)
            if set(name_words(attr)) & MUTABLE:
                continue
            old, exact = _attribute_of(view, attr)
            if old is None:
                continue
            verdict = compare(old.value, a.value)
            if verdict == "same" or (verdict == "unknown" and (not exact or old.id in mem.agreed)):
                continue
            major = verdict == "different"
            out.append(
                Finding(
                    category="characters" if view.etype == "person" else "facts",
                    subtype="attribute_changed" if major else "attribute_unsure",
                    severity="major" if major else "minor",
                    detector="rule:attribute",
                    message=f"{view.name}'s {old.attribute or attr} is “{a.value}” here, “{old.value}” before"
                    + ("" if major else ": the rules cannot tell these apart and the judge did not say they agree"),
                    quote=a.quote,
                    entry_id=old.id,
                    quote_there=old.quote,
                    doc_order_there=old.doc_order,
                )
            )
    return out


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
    One finding per problem: the judge's quote of what a rule already found is that finding, and
    a value the rules could not decide is the judge's when it named it."""
    found = [
        *name_variants(passage, ledger),
        *near_misses(passage, ledger),
        *changed_attributes(mem, ledger),
        *reopened_threads(mem, ledger),
        *timeline_breaks(mem, ledger),
    ]
    by_judge = judged(mem, ledger.by_ref())
    quoted = {norm(f.quote)[:200] for f in found}
    named = {f.entry_id for f in by_judge}
    out = [f for f in found if not (f.subtype == "attribute_unsure" and f.entry_id in named)]
    out += [f for f in by_judge if norm(f.quote)[:200] not in quoted]  # a rule has it already, with its fix
    return out


def needs_repair(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if SEVERITIES.index(f.severity) >= SEVERITIES.index(REPAIR_AT)]


def apply_fixes(passage: str, findings: Iterable[Finding]) -> tuple[str, list[Finding]]:
    """The passage with every rule's fix applied (a name's letter case as established, wherever
    the name is written otherwise, never a sentence's first letter nor an article); returns it and
    the findings so fixed."""
    fixed: list[Finding] = []
    for f in findings:
        if f.fix is None:
            continue
        new = passage
        for start, end, found, right in reversed(_variants(passage, f.fix[1])):
            if found == f.fix[0]:
                new = new[:start] + right + new[end:]
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
    """The sentence of ``passage`` that holds offset ``at``."""
    marks = (". ", "! ", "? ", "\n")
    start = max([i + len(m) for m in marks if (i := passage.rfind(m, 0, at)) >= 0], default=0)
    ends = [i + 1 for i in (passage.find(m, at) for m in marks) if i >= 0]
    return " ".join(passage[start : min(ends, default=len(passage))].split())[:600]


# -- inside a chapter: the stitch's text-level rules ---------------------------------------------

_REF = re.compile(r"\b(?:Section|Chapter|Part)\s+(\d{1,4})\b")
BROKEN_SEAM = "broken_seam"  # a passage that stops mid-sentence where the next one begins


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
            issues.append({"type": BROKEN_SEAM, "chunk": a, "next_chunk": b, "text": ta.strip()[-80:]})
    return issues


def broken_seam_finding(issue: dict[str, Any], tried: str) -> Finding:
    """A broken seam the stitch left broken, as an open finding of the passage that stops
    mid-sentence: its last words quoted, ``tried`` saying what was tried and why it stands."""
    return Finding(
        "style",
        BROKEN_SEAM,
        "major",
        "rule:stitch",
        f"chunk {issue['chunk'] + 1} stops mid-sentence where chunk {issue['next_chunk'] + 1} begins",
        issue["text"],
        tried=tried,
    )


def remove_paragraph(text: str, snippet: str) -> str:
    return "\n\n".join(p for p in paragraphs(text) if not p.startswith(snippet))
