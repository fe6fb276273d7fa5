"""Repeats across a document: its paragraphs and sentences by fingerprint, so that one already in
the document (any chunk, any chapter) is cut from an answer that says it again.

The fingerprints of a job are kept in the database (``text_marks``, claimed per chunk attempt by
``activities.gating``); here, what they are and how an answer is cut by them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from core.gate import Cut
from core.sentences import sentences
from core.text import count_words, normalize_paragraph, paragraphs

DOCUMENT_REPEAT_MIN_WORDS = 8  # a paragraph or sentence this long already in the document is a repeat


@dataclass(frozen=True)
class Mark:
    """A paragraph or sentence of the document, by fingerprint (its normalised words, hashed)."""

    fingerprint: int
    kind: str  # "paragraph" | "sentence"
    words: int


def fingerprint(kind: str, text: str) -> int:
    digest = hashlib.blake2b(f"{kind}:{normalize_paragraph(text)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # a Postgres bigint


def fingerprints(text: str) -> list[Mark]:
    """The marks of ``text``: each paragraph and each sentence of at least
    ``DOCUMENT_REPEAT_MIN_WORDS`` words, once each."""
    out: dict[int, Mark] = {}
    for para in paragraphs(text):
        units = [("paragraph", para), *(("sentence", s) for s in sentences(para))]
        for kind, unit in units:
            n = len(normalize_paragraph(unit).split())
            if n >= DOCUMENT_REPEAT_MIN_WORDS:
                fp = fingerprint(kind, unit)
                out.setdefault(fp, Mark(fp, kind, n))
    return list(out.values())


def drop_repeats(text: str, taken: set[int]) -> tuple[str, list[Cut]]:
    """``text`` without the paragraphs and sentences whose fingerprints are ``taken`` (the
    document has them already), and those cuts (rule ``repeat``)."""
    if not taken:
        return text, []
    cuts: list[Cut] = []
    kept = []
    for para in paragraphs(text):
        if fingerprint("paragraph", para) in taken:
            cuts.append(Cut("repeat", para, count_words(para)))
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
