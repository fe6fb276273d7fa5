"""Echoes of the prompt in a model's answer: found so that instructions never become document.

Small models repeat what they were given: a prompt line word for word, one of its sentences,
or a paraphrase or fragment of the one-line request that ends the prompt ("(Continue from where
it stopped, with about 830 words.)"), or a title of the prompt with numbers strung after it ("My
allotment year March bed 10,293.25m."). An ``EchoIndex`` is built from a prompt; ``strip_line``
takes one line of an answer and returns what is left of it and what it removed; ``title_line``
says whether a line is a title and numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from difflib import SequenceMatcher
from functools import lru_cache

from core.lexicon import FUNCTION_WORDS

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
# The prompt's titles: its Markdown headings, and the labelled lines of the chat prompts
# ("Document: ...", "Current section: <title>. <summary>").
_TITLE = re.compile(
    r"^\s*(?:#{1,6}\s+(?P<h>.+)|(?:document|title):\s*(?P<d>.+)"
    r"|(?:current section|part|chapter|section):\s*(?P<s>[^.]+))",
    re.I,
)
TITLE_LINE_MAX_WORDS = 16  # a title and numbers is short; a sentence naming the title runs on
TITLE_LINE_EXTRA_WORDS = 4  # words beside the title and its numbers, none of them a function word


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
        self.titles: list[list[str]] = []
        for ln in prompt.splitlines():
            if (t := _TITLE.match(ln)) and (title := words_of(t.group("h") or t.group("d") or t.group("s"))):
                self.titles.append(title)
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

    def title_line(self, line: str) -> bool:
        """Is ``line`` one of the prompt's titles with numbers strung about it, and at most a few
        other words that make no sentence ("My allotment year March bed 10,293.25m.")?"""
        w = words_of(line)
        if not self.titles or len(w) > TITLE_LINE_MAX_WORDS:
            return False
        for title in self.titles:
            n = len(title)
            for i in range(len(w) - n + 1):
                if w[i : i + n] != title:
                    continue
                rest = w[:i] + w[i + n :]
                words = [x for x in rest if not any(c.isdigit() for c in x)]
                if len(words) < len(rest) and len(words) <= TITLE_LINE_EXTRA_WORDS and not FUNCTION_WORDS & set(words):
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
