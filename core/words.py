"""The gate's rules that read a paragraph word by word: runs of numbers, words in another script,
words of another language, words run together. Each takes a paragraph and gives back what is left
of it and what it removed; ``core.gate`` records the removals under the rule's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from core.lexicon import (
    LATIN,
    LATIN_LETTER,
    OTHER_LETTER,
    PLAIN_WORD,
    QUOTED_RUN,
    foreign,
    foreign_function_words,
    lexicon,
    splits,
)

NUMBER_RUN_TOKENS = 8  # consecutive tokens without a letter...
NUMBER_RUN_NUMBERS = 4  # ...of which this many hold a digit
OTHER_SCRIPT_SHARE = 0.25  # at most this share of a paragraph's letters in another script: those are strays

_TOKEN = re.compile(r"\S+")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_OTHER_RUN = re.compile(rf"\S*[^\W\d_{LATIN}]\S*(?:\s+\S*[^\W\d_{LATIN}]\S*)*")
# A word that ends a sentence (or a bracketed one: "year.)"), and one that opens the next.
_ENDS = re.compile(r"[.!?…][\"'”’)\]]*$")
_ABBREVIATION = re.compile(r"^(?:[a-z]\.){2,}$|^(?:etc|cf|vs|approx|ca|incl|esp|viz|fig|vol|no|pp)\.$", re.I)
_BARE = re.compile(r"[a-z]+[.,;:!?]?")

Removed = tuple[str, list[str]]


def tidy(s: str) -> str:
    """Spaces left where words were cut out of a line."""
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", s)).strip()


def number_runs(para: str) -> Removed:
    """Runs of tokens without a letter: "( 75 ) - ( 76 ) - ( 77 )", "1, 2, 3, 4, 5, 6, 7, 8"."""
    if para.lstrip().startswith("|"):  # a table row is the document's own
        return para, []
    if len(_DIGIT.findall(para)) < NUMBER_RUN_NUMBERS:  # most prose: no run can be there
        return para.strip(), []
    toks = list(_TOKEN.finditer(para))
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(toks):
        j = i
        while j < len(toks) and not _LETTER.search(toks[j].group()):
            j += 1
        run = toks[i:j]
        if len(run) >= NUMBER_RUN_TOKENS and sum(bool(_DIGIT.search(t.group())) for t in run) >= NUMBER_RUN_NUMBERS:
            spans.append((run[0].start(), run[-1].end()))
        i = j + 1
    removed = []
    for a, b in reversed(spans):
        removed.insert(0, para[a:b])
        para = para[:a].rstrip() + " " + para[b:].lstrip()
    return para.strip(), removed


def foreign_script(para: str) -> Removed:
    """In a paragraph written in the Latin script, unquoted runs of words in another script (a
    single word too: "The bees пчелы came home")."""
    latin, other = len(LATIN_LETTER.findall(para)), len(OTHER_LETTER.findall(para))
    if not other or other > OTHER_SCRIPT_SHARE * (latin + other):
        return para, []
    return _cut(_OTHER_RUN, para, lambda m: not QUOTED_RUN.match(m.group(0)))


def glued(para: str) -> Removed:
    """Two words run together: an unknown word that is a function word and an English word, or an
    English word and a word of another language ("vertretenmodel")."""
    en = lexicon("en")
    return _cut(PLAIN_WORD, para, lambda m: len(w := m.group(1)) >= 7 and w not in en and splits(w, en))


def _cut(pattern: re.Pattern[str], para: str, junk: Callable[[re.Match[str]], bool]) -> Removed:
    """``para`` without the matches of ``pattern`` that are ``junk``, and those matches."""
    removed: list[str] = []

    def one(m: re.Match[str]) -> str:
        if junk(m):
            removed.append(m.group(0))
            return ""
        return m.group(0)

    out = pattern.sub(one, para)
    return (tidy(out), removed) if removed else (para, [])


def foreign_words(para: str) -> Removed:
    """Single words of another language inside English, unquoted: one English does not have that
    stands outside the sentences, between a sentence's end and the next one's start ("planning next
    year.) mendatang (In April"), or one of another language's function words between two English
    words ("the seedlings und the cuttings"). Loanwords inside a sentence ("gelato", "varroa") and
    foreign phrases ("joie de vivre") stay."""
    en = lexicon("en")
    toks = list(_TOKEN.finditer(para))
    spans: list[tuple[int, int]] = []
    for i, t in enumerate(toks):
        tok = t.group()
        if not _BARE.fullmatch(tok) or (w := tok.rstrip(".,;:!?")) in en or len(w) < 3:
            continue
        prev = toks[i - 1].group() if i else ""
        nxt = toks[i + 1].group() if i + 1 < len(toks) else ""
        outside = (
            (prev or nxt)
            and (not prev or (_ENDS.search(prev) and not _ABBREVIATION.match(prev)))
            and (not nxt or _opens(nxt))
        )
        lone = (
            w in foreign_function_words()
            and tok == w
            and all(_english(x, en) for x in (prev, nxt))
            and not any(foreign(x.lower()) and x.lower() not in en for x in (prev, nxt))
        )
        if outside or lone:
            spans.append(t.span())
    removed = []
    for a, b in reversed(spans):
        removed.insert(0, para[a:b])
        para = para[:a] + para[b:]
    return (tidy(para), removed) if removed else (para, [])


def _opens(tok: str) -> bool:
    """Does ``tok`` open a sentence or an aside: a capital, or a bracket?"""
    t = tok.lstrip("\"'“‘")
    return tok[:1] in "([" or (t[:1].isupper())


def _english(tok: str, en: frozenset[str]) -> bool:
    m = PLAIN_WORD.fullmatch(tok.lower())
    return m is not None and m.group(1) in en
