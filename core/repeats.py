"""Repeats across a document: its paragraphs and sentences by fingerprint, so that one already in
the document (any chunk, any chapter) is cut from an answer that says it again; and its paragraphs
by shingles (their runs of ``SHINGLE_WORDS`` words), so that one said again with a few words changed
is cut too (rule ``near_repeat``).

The marks of a job are kept in the database (``text_marks``, claimed per chunk attempt by
``activities.gating``); here, what they are and how an answer is cut by them. Of a paragraph's
shingles one in ``SHINGLE_SAMPLE`` is a mark (those whose hash is a multiple of it: the same ones
wherever the words stand), so that a document of N words keeps about N / 4 of them; the share of a
paragraph's sampled shingles already in the document estimates the share of its runs of words.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from core.junk import Cut
from core.sentences import sentences
from core.text import count_words, normalize_paragraph, paragraphs

DOCUMENT_REPEAT_MIN_WORDS = 8  # a paragraph or sentence this long already in the document is a repeat
SHINGLE_WORDS = 4  # a run of this many words: shorter runs ("one of the") recur in any prose
SHINGLE_SAMPLE = 4  # one shingle in this many is a mark of the document
NEAR_REPEAT_MIN_WORDS = 30  # shorter paragraphs are judged word for word only
NEAR_REPEAT_MIN_SHINGLES = 6  # sampled shingles a paragraph needs to be judged against the document
NEAR_REPEAT_SHARE = 0.5  # of a paragraph's runs of words already said: a repeat; real prose stays under 0.2


@dataclass(frozen=True)
class Mark:
    """A paragraph, sentence or shingle of the document, by fingerprint (its normalised words, hashed)."""

    fingerprint: int
    kind: str  # "paragraph" | "sentence" | "shingle"
    words: int


def fingerprint(kind: str, text: str) -> int:
    return _hash(f"{kind}:{normalize_paragraph(text)}")


def _hash(s: str) -> int:
    digest = hashlib.blake2b(s.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # a Postgres bigint


def runs(text: str) -> set[str]:
    """``text``'s runs of ``SHINGLE_WORDS`` words (normalised): its shingles within one answer."""
    w = normalize_paragraph(text).split()
    return {" ".join(w[i : i + SHINGLE_WORDS]) for i in range(len(w) - SHINGLE_WORDS + 1)}


def shingles(text: str) -> set[int]:
    """The marks of ``text``'s shingles: the fingerprints of its runs, one in ``SHINGLE_SAMPLE``."""
    out = (_hash("shingle:" + r) for r in runs(text))
    return {h for h in out if h % SHINGLE_SAMPLE == 0}


def near_share(para: str, said: set[str]) -> float:
    """The share of ``para``'s runs of words in ``said`` (0 for a paragraph too short to judge)."""
    if count_words(para) < NEAR_REPEAT_MIN_WORDS:
        return 0.0
    own = runs(para)
    return len(own & said) / len(own) if own else 0.0


def _near_share_marked(para: str, taken: set[int]) -> float:
    """``near_share`` against the document's marks: of ``para``'s sampled shingles, those taken."""
    if count_words(para) < NEAR_REPEAT_MIN_WORDS:
        return 0.0
    own = shingles(para)
    return len(own & taken) / len(own) if len(own) >= NEAR_REPEAT_MIN_SHINGLES else 0.0


def fingerprints(text: str) -> list[Mark]:
    """The marks of ``text``: each paragraph and each sentence of at least
    ``DOCUMENT_REPEAT_MIN_WORDS`` words, and the sampled shingles of its paragraphs, once each."""
    out: dict[int, Mark] = {}
    for para in paragraphs(text):
        units = [("paragraph", para), *(("sentence", s) for s in sentences(para))]
        for kind, unit in units:
            n = len(normalize_paragraph(unit).split())
            if n >= DOCUMENT_REPEAT_MIN_WORDS:
                fp = fingerprint(kind, unit)
                out.setdefault(fp, Mark(fp, kind, n))
        for fp in shingles(para):
            out.setdefault(fp, Mark(fp, "shingle", SHINGLE_WORDS))
    return list(out.values())


def drop_repeats(text: str, taken: set[int]) -> tuple[str, list[Cut]]:
    """``text`` without the paragraphs and sentences whose fingerprints are ``taken`` (the
    document has them already: rule ``repeat``), nor the paragraphs most of whose sampled shingles
    are taken (said again with a few words changed: rule ``near_repeat``), and those cuts."""
    if not taken:
        return text, []
    cuts: list[Cut] = []
    kept = []
    for para in paragraphs(text):
        if fingerprint("paragraph", para) in taken:
            cuts.append(Cut("repeat", para, count_words(para)))
            continue
        if _near_share_marked(para, taken) >= NEAR_REPEAT_SHARE:
            cuts.append(Cut("near_repeat", para, count_words(para)))
            continue
        parts = []
        for s in sentences(para):
            if fingerprint("sentence", s) in taken:
                cuts.append(Cut("repeat", s, count_words(s)))
            else:
                parts.append(s)
        if parts:
            kept.append(" ".join(parts) if len(parts) != len(sentences(para)) else para)
    return "\n\n".join(kept), cuts
