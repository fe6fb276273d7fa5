"""Names found as words: the one way Quire tells whether a text names someone or something.

A text is cut into word tokens (NFKC, case-folded, curly apostrophes made plain, a possessive
"'s" stripped, every other punctuation mark a separator), and a name is there when its own tokens
(without a leading article) follow one another in the text. So "Mara.", "Mara's", "Mara," and
"“Mara”" all name Mara, at a line's start too, and "Mara Quell" is named only by those two words
in that order. The judge's selection of ledger entries, the prompt's named entities, the seam
judge's trigger and the continuity rules all ask here. Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
ARTICLES = frozenset({"the", "a", "an"})


@dataclass(frozen=True)
class Token:
    """A word of a text: its form for matching (``key``) and where it stands (the possessive left
    out of the span)."""

    key: str
    start: int
    end: int


def _key(word: str) -> tuple[str, int]:
    """A word's matching form, and how many characters of a possessive were stripped from it."""
    k = unicodedata.normalize("NFKC", word).casefold().replace("’", "'")
    if k.endswith("'s") and len(k) > 2:
        return k[:-2], 2
    return k, 0


def tokens(text: str) -> list[Token]:
    out = []
    for m in _WORD.finditer(text):
        k, cut = _key(m.group(0))
        out.append(Token(k, m.start(), m.end() - cut))
    return out


def words(text: str) -> list[str]:
    """``text``'s word tokens, as names are matched against them."""
    return [t.key for t in tokens(text)]


@lru_cache(maxsize=65536)  # a ledger's names are asked about again and again
def name_words(name: str) -> tuple[str, ...]:
    """A name's tokens without a leading article ("the Harbour Board" -> harbour, board)."""
    w = words(name)
    while len(w) > 1 and w[0] in ARTICLES:
        w = w[1:]
    return tuple(w)


class Mentions:
    """A text indexed for name lookups: ``has(name)`` and ``spans(name)`` in time proportional to
    the name's occurrences, however many names are asked about."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokens(text)
        self._at: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(self.tokens):
            self._at[t.key].append(i)

    def _starts(self, name: str | tuple[str, ...]) -> list[int]:
        want = name_words(name) if isinstance(name, str) else name
        if not want:
            return []
        n = len(want)
        return [i for i in self._at.get(want[0], ()) if tuple(t.key for t in self.tokens[i : i + n]) == want]

    def has(self, name: str | tuple[str, ...]) -> bool:
        return bool(self._starts(name))

    def spans(self, name: str) -> list[tuple[int, int]]:
        """Where the name stands in the text: (start, end) character offsets, article excluded."""
        n = len(name_words(name))
        return [(self.tokens[i].start, self.tokens[i + n - 1].end) for i in self._starts(name)]


def mentions(name: str, text: str | Mentions) -> bool:
    """Whether ``text`` names ``name`` (see the module's docstring)."""
    return (text if isinstance(text, Mentions) else Mentions(text)).has(name)


def contains(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether the words ``inner`` follow one another inside ``outer`` ("mara quell" in "captain
    mara quell")."""
    n = len(inner)
    return bool(inner) and any(outer[i : i + n] == inner for i in range(len(outer) - n + 1))


def same_thing(a: str, b: str) -> bool:
    """Two names of one entity by their words: equal, or one inside the other ("Mara Quell",
    "Captain Mara Quell")."""
    wa, wb = name_words(a), name_words(b)
    return contains(wa, wb) or contains(wb, wa)


def resolve(name: str, keys: Iterable[str]) -> list[str]:
    """The keys (of a ledger's entities) that ``name`` names: its own key when the ledger has it,
    else the one key whose words hold the name's, or that the name's words hold; none when that
    is ambiguous."""
    keys = list(keys)
    own = " ".join(name_words(name))
    if own in keys:
        return [own]
    found = [k for k in keys if same_thing(k, name)]
    return found if len(found) == 1 else []
