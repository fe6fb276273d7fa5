"""Which language a word is: English's words and those of six other languages (pyspellchecker's
frequency lists, read once, like a module), the scripts, and the judgments the gate makes with
them (how English an answer is, whether an unknown word is two run together).
"""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from importlib import resources

LATIN = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
LATIN_LETTER = re.compile(f"[{LATIN}]")
OTHER_LETTER = re.compile(rf"[^\W\d_{LATIN}]")
QUOTED_RUN = re.compile(r"^[\"'“‘(*_«\[].*[\"'”’)*_»\]][.,;:!?]*$", re.S)
# A plain lowercase word standing as a whole token (its quotes and stops around it).
PLAIN_WORD = re.compile(r"(?<!\S)[\"'“‘(*_]*([a-z]+)[\"'”’)*_.,;:!?]*(?!\S)")
ENGLISH_SHARE = 0.7  # of an answer's plain lowercase words known to English: the English-only rules apply
FUNCTION_WORDS = frozenset(
    "a an the and or but of to in on at by for with from as is was are were be that this these those "
    "his her its their our your my he she it they we you not".split()
)
FOREIGN_LEXICONS = ("de", "fr", "es", "it", "nl", "pt")
COMMON_MIN_FREQUENCY = 10_000  # an English word seen this often is a common one
# Words English ends other words with: a compound with one is a word, not two run together.
WORD_ENDINGS = frozenset(
    "ward wards land side wise ways work hood ship less like some ness ment able time where more most back down "
    "self selves fold free mark line wood weed fish worthy house room yard head hand".split()
)
FOREIGN_MIN_FREQUENCY = 500  # a foreign word this common at least (the lists are long-tailed and noisy)


def english_share(text: str) -> float:
    """The share of plain lowercase words known to English (1.0 when there are none to judge)."""
    plain = PLAIN_WORD.findall(text)
    if len(plain) < 3:
        return 1.0
    en = lexicon("en")
    return sum(w in en for w in plain) / len(plain)


def splits(w: str, en: frozenset[str]) -> bool:
    """Is ``w`` (unknown to English) two words run together: a function word and an English word,
    an English word and a foreign one, or two common English words ("populationmodel")?"""
    common = lexicon("en-common")
    for i in range(1, len(w)):
        left, right = w[:i], w[i:]
        if left in FUNCTION_WORDS and len(right) >= 4 and right in en:
            return True
        if right in FUNCTION_WORDS and len(left) >= 4 and left in en:
            return True
        if min(len(left), len(right)) >= 4 and (
            (left in en and right not in en and foreign(right)) or (right in en and left not in en and foreign(left))
        ):
            return True
        if min(len(left), len(right)) >= 4 and left in common and right in common and right not in WORD_ENDINGS:
            return True  # "populationmodel"; not "waterward", English builds words so
    return False


def foreign(word: str) -> bool:
    """Is ``word`` a common word of one of the other languages?"""
    return any(word in lexicon(lang) for lang in FOREIGN_LEXICONS)


# -- the lexicons (constant data shipped with pyspellchecker: read once, like a module) ----------------------


# One "word": count entry of a lexicon's JSON object (a word with escapes is decoded by json).
_LEXICON_ENTRY = re.compile(r'"((?:[^"\\]|\\.)*)":\s*(\d+)')


@cache
def lexicon(lang: str) -> frozenset[str]:
    """Words of ``lang`` from pyspellchecker's frequency lists: all of English; of other languages,
    those seen at least ``FOREIGN_MIN_FREQUENCY`` times (the lists are long-tailed, and memory counts).

    The lists are read entry by entry, never as a dict: the dicts of all seven languages (1.6 million
    entries) left a process 88 MiB bigger for good, for the 214,000 words it keeps (29 MiB)."""
    common = lang == "en-common"  # English words common enough that two run together is no word of its own
    lang = "en" if common else lang
    data = resources.files("spellchecker").joinpath("resources", f"{lang}.json.gz").read_bytes()
    floor = COMMON_MIN_FREQUENCY if common else 0 if lang == "en" else FOREIGN_MIN_FREQUENCY
    words = set()
    for m in _LEXICON_ENTRY.finditer(gzip.decompress(data).decode("utf-8")):
        if int(m.group(2)) >= floor:
            w = json.loads(f'"{m.group(1)}"') if "\\" in m.group(1) else m.group(1)
            if w.isalpha():
                words.add(w)
    return frozenset(words)
