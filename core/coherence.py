"""Coherence state as data: per-chunk deltas and seam checks, computed deterministically.

A delta (summary, new terms, open threads) is extracted from each accepted chunk and folded
into the next link of the job's coherence chain. Seam checks find what long documents written
in parts get wrong: paragraphs repeated across chunks, glossary terms drifting in spelling,
references to sections that do not exist, and passages that stop mid-sentence.
"""

from __future__ import annotations

import re
from typing import Any

from core.text import count_words, normalize_paragraph, paragraphs

SUMMARY_WORDS = 220
_SENT = re.compile(r"(?<=[.!?])\s+")
_TERM = re.compile(r"\b([A-Z][a-z]{2,}(?:\s+[A-Z][a-z]{2,}){1,3})\b")
_THREAD = re.compile(r"\b(will|later|next|remains? to be|open question|unresolved|we return)\b", re.I)
_LEADING = {
    "The",
    "This",
    "That",
    "These",
    "Those",
    "Our",
    "Their",
    "Its",
    "His",
    "Her",
    "When",
    "While",
    "Then",
    "And",
    "But",
    "For",
    "With",
    "From",
    "After",
    "Before",
    "Each",
    "Every",
    "Some",
    "Many",
}
_REF = re.compile(r"\b(?:Section|Chapter|Part)\s+(\d{1,4})\b")


def _first_sentence(p: str) -> str:
    return _SENT.split(p.strip(), maxsplit=1)[0][:300]


def delta(text: str, glossary: dict[str, str]) -> dict[str, Any]:
    """What a chunk adds: an extractive summary, new multi-word terms, open threads."""
    paras = paragraphs(text)
    summary = " ".join(_first_sentence(p) for p in paras[:4])
    known = {k.lower() for k in glossary}
    counts: dict[str, int] = {}
    for t in _TERM.findall(text):
        first, _, rest = t.partition(" ")
        if first in _LEADING and " " in rest:
            t = rest
        elif first in _LEADING:
            continue
        if t.lower() not in known:
            counts[t] = counts.get(t, 0) + 1
    new_terms = [t for t, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c >= 2][:5]
    threads = [s.strip()[:200] for s in _SENT.split(text) if _THREAD.search(s)][-3:]
    return {"summary": summary, "new_terms": new_terms, "open_threads": threads, "words": count_words(text)}


def fold(
    prev_summary: str, prev_glossary: dict[str, str], prev_threads: list[str], d: dict[str, Any], context_of: str
) -> tuple[str, dict[str, str], list[str]]:
    """The next coherence state from the previous one and a chunk's delta (bounded in size)."""
    summary = (prev_summary + " " + d["summary"]).strip()
    words = summary.split()
    if len(words) > SUMMARY_WORDS:
        summary = "… " + " ".join(words[-SUMMARY_WORDS:])
    glossary = dict(prev_glossary)
    for t in d["new_terms"]:
        glossary.setdefault(t, f"term introduced in {context_of}")
    glossary = dict(list(glossary.items())[-60:])
    threads = (prev_threads + d["open_threads"])[-6:]
    return summary, glossary, threads


def seam_issues(
    chunks: list[tuple[int, str]], glossary: dict[str, str], sections_total: int, seen_paragraphs: set[str]
) -> list[dict[str, Any]]:
    """Issues across the given (ordinal, text) chunks, in order.

    ``seen_paragraphs`` holds normalised paragraphs of earlier chunks (it is extended in place).
    """
    issues: list[dict[str, Any]] = []
    for ordinal, text in chunks:
        for p in paragraphs(text):
            norm = normalize_paragraph(p)
            if count_words(p) >= 8 and norm in seen_paragraphs:
                issues.append({"type": "repeated_paragraph", "chunk": ordinal, "text": p[:120]})
            seen_paragraphs.add(norm)
        for m in _REF.finditer(text):
            if int(m.group(1)) > sections_total:
                issues.append({"type": "dangling_reference", "chunk": ordinal, "text": m.group(0)})
        for term in [t for t in glossary if " " in t or "-" in t]:  # one-word terms are ordinary words too
            variants = {v for v in re.findall(re.escape(term), text, re.I) if v != term}
            for v in sorted(variants):
                issues.append({"type": "glossary_drift", "chunk": ordinal, "term": term, "found": v})
    for (a, ta), (b, _) in zip(chunks, chunks[1:], strict=False):
        if ta.strip() and not re.search(r"[.!?…\"')\]]\s*$", ta.strip()):
            issues.append({"type": "broken_seam", "chunk": a, "next_chunk": b, "text": ta.strip()[-80:]})
    return issues


def remove_paragraph(text: str, snippet: str) -> str:
    paras = paragraphs(text)
    kept = [p for p in paras if not p.startswith(snippet)]
    return "\n\n".join(kept)


def fix_term(text: str, term: str, found: str) -> str:
    return re.sub(rf"\b{re.escape(found)}\b", term, text)


def handoff(
    *,
    glossary: dict[str, str],
    planned: list[tuple[str, str, list[str], list[str]]],
    predecessor: tuple[str, str],
) -> dict[str, Any]:
    """The state a chapter starts from when its predecessor is still being written, derived from
    the plan alone: the book's glossary plus the entities the nodes before it introduce, their
    synopses as the running summary, the predecessor's key points as the open threads.

    ``planned``: (title, purpose, introduces, key points) of the nodes before it, in order."""
    gl = dict(glossary)
    for title, _purpose, introduces, _points in planned:
        for name in introduces:
            gl.setdefault(name, f"introduced in {title}")
    gl = dict(list(gl.items())[-60:])
    summary = " ".join(f"{t}: {p}" if p else t for t, p, _i, _k in planned[-6:])
    words = summary.split()
    if len(words) > SUMMARY_WORDS:
        summary = "… " + " ".join(words[-SUMMARY_WORDS:])
    threads = list(planned[-1][3])[-6:] if planned else []
    title, purpose = predecessor
    return {
        "summary": summary,
        "glossary": gl,
        "open_threads": threads,
        "note": f"{title}: {purpose}".strip(": ") if title or purpose else "",
    }


def _named(text: str) -> set[str]:
    return {t for t in _TERM.findall(text) if t.partition(" ")[0] not in _LEADING}


def seam_differences(
    real: dict[str, Any], used: dict[str, Any], before: str, after: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Compare the state a chapter was written from (``used``) with its predecessor's real end
    state (``real``), and the predecessor's text (``before``) with the chapter's first chunk
    (``after``). Returns (differences, conflicts): differences are what the handoff did not
    know; conflicts are what a reader would see as wrong at the seam (the opening repeats the
    ending; a term the predecessor established spelled differently)."""
    real_terms, used_terms = set(real.get("glossary") or {}), set(used.get("glossary") or {})
    before_paras, after_paras = paragraphs(before), paragraphs(after)
    differences: dict[str, Any] = {
        "terms_unknown_to_handoff": sorted(real_terms - used_terms)[:40],
        "terms_only_in_handoff": sorted(used_terms - real_terms)[:40],
        "threads_unknown_to_handoff": [
            t for t in real.get("open_threads") or [] if t not in (used.get("open_threads") or [])
        ],
        "entities_at_end": sorted(_named("\n\n".join(before_paras[-2:])))[:20],
        "entities_at_start": sorted(_named("\n\n".join(after_paras[:2])))[:20],
        "last_paragraph": before_paras[-1][:300] if before_paras else "",
    }
    conflicts: list[dict[str, Any]] = []
    ending = {normalize_paragraph(p) for p in before_paras[-3:]}
    if after_paras and count_words(after_paras[0]) >= 8 and normalize_paragraph(after_paras[0]) in ending:
        conflicts.append({"type": "repeated_opening", "text": after_paras[0][:120]})
    for term in sorted(t for t in real_terms if " " in t or "-" in t):
        variants = {v for v in re.findall(re.escape(term), after, re.I) if v != term}
        for v in sorted(variants):
            conflicts.append({"type": "term_drift", "term": term, "found": v})
    return differences, conflicts
