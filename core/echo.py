"""Echoes of the prompt in a model's answer: found so that instructions never become document.

Small models repeat what they were given: a prompt line word for word, one of its sentences,
or a paraphrase or fragment of the one-line request that ends the prompt ("(Continue from where
it stopped, with about 830 words.)"). An ``EchoIndex`` is built from a prompt; ``strip_line``
takes one line of an answer and returns what is left of it and what it removed.
"""

from __future__ import annotations

import re
from collections import Counter
from difflib import SequenceMatcher
from functools import lru_cache

# The shape of Quire's own requests, whatever the prompt: "Continue ... about 830 (more) words",
# "(Rewrite this source passage ...", "Finish that sentence in about 12 words".
_REQUEST = re.compile(
    r"^\W*(?:please\s+)?(?:continue|rewrite|write|finish)\b.{0,240}?"
    r"(?:\b\d+\s+(?:more\s+)?words?\b"
    r"|\bwhere\s+(?:it|this(?:\s+text|\s+passage)?|the\s+(?:text|passage|document))\s+(?:stops|stopped|ends|ended)\b)",
    re.I | re.S,
)
_ABOUT_N_WORDS = re.compile(r"\b(?:about|around|roughly|some)\s+\d+\s+(?:more\s+)?words?\b", re.I)
_BRACKETED = re.compile(r"[(\[]([^()\[\]\n]{3,600})[)\]]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？)\]])\s+")
MIN_ECHO_WORDS = 3  # shorter runs are too common in prose to call echoes
PARTIAL_REQUEST_WORDS = 4  # a fragment of the request this long is an echo of it


def words_of(text: str) -> list[str]:
    return re.sub(r"\W+", " ", text.lower()).split()


@lru_cache(maxsize=1024)  # ~10 KB an entry: 10 MiB at most
def _line(line: str) -> tuple[str, list[list[str]]]:
    """A prompt line's words, and the words of it and each of its sentences long enough to be
    echoed (an echo may repeat either). Cached: a job's prompts share most of their lines (the
    book's brief, the outline), and every answer's gate reads them."""
    key = " ".join(words_of(line))
    if not key:
        return "", []
    sentences = [s for s in _SENTENCE_END.split(line.strip()) if s]
    units = [words_of(u) for u in ([line, *sentences] if len(sentences) > 1 else [line])]
    return key, [w for w in units if len(w) >= MIN_ECHO_WORDS]


class EchoIndex:
    """The prompt's lines and sentences (``source``, text given to rewrite, is not an echo)."""

    def __init__(self, prompt: str, source: str = "") -> None:
        if source.strip():
            prompt = prompt.replace(source, "\n")
        self.exact: set[str] = set()
        self.units: list[list[str]] = []
        # Word -> the units holding it: a segment is matched against the units that share most of
        # its words, found from its own words, not by scanning every unit of the prompt.
        self.holding: dict[str, list[int]] = {}
        self.request: list[str] = []  # the one-line request that ends the prompt: its fragments echo too
        for ln in prompt.splitlines():
            key, units = _line(ln)
            if key:
                self.exact.add(key)
            for w in units:
                for t in set(w):
                    self.holding.setdefault(t, []).append(len(self.units))
                self.units.append(w)
            if len(key.split()) >= MIN_ECHO_WORDS:
                self.request = key.split()

    def __bool__(self) -> bool:
        return bool(self.exact)

    def line_echoes(self, line: str) -> bool:
        return " ".join(words_of(line)) in self.exact

    def echoes(self, segment: str) -> bool:
        """Is this sentence or bracketed aside a request, or mostly a prompt line or sentence?"""
        if _REQUEST.match(segment):
            return True
        w = words_of(segment)
        if not self or len(w) < MIN_ECHO_WORDS:
            return False
        if self.request and _matched(w, self.request) >= max(PARTIAL_REQUEST_WORDS, 0.8 * len(w)):
            return True
        # Cheap bounds first: most of the segment's words must be in the unit, and be half of it.
        shared: Counter[int] = Counter()
        for t, times in Counter(w).items():
            for u in self.holding.get(t, ()):
                shared[u] += times
        for u, n in shared.items():
            unit = self.units[u]
            if n < 0.8 * len(w) or len(unit) > 2 * len(w):
                continue
            m = _matched(w, unit)
            if m >= 0.8 * len(w) and m >= 0.5 * len(unit):
                return True
        return False

    def strip_line(self, line: str) -> tuple[str, list[str]]:
        """``line`` without the echoes in it (bracketed asides, then sentences), and those echoes."""
        removed: list[str] = []

        def aside(m: re.Match[str]) -> str:
            inner = m.group(1)
            if _ABOUT_N_WORDS.search(inner) or self.echoes(inner):
                removed.append(m.group(0))
                return ""
            return m.group(0)

        text = _BRACKETED.sub(aside, line)
        kept = []
        for s in _SENTENCE_END.split(text):
            if s.strip() and self.echoes(s):
                removed.append(s)
            else:
                kept.append(s)
        text = " ".join(kept)
        if not removed:
            return line, []
        return re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", text).strip(), removed


def _matched(a: list[str], b: list[str]) -> int:
    """Words of ``a`` found in ``b`` in the same order (matching blocks: a lower bound of the LCS)."""
    return sum(blk.size for blk in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
