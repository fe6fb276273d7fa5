"""Whether two statements of one attribute say the same: ``same``, ``different`` or ``unknown``.

Rules decide what rules can see: a negation on one side only ("blue" / "not blue"), other
numbers (digits or number words: "two fingers" / "ten fingers"), other proper names ("born in
Lisbon" / "born in Porto"), words from one listed set of alternatives that do not meet ("brass" /
"silver", "left" / "right", "red" / "blue"). A value that
only adds detail to the other ("grey" / "grey, like the sea") is the same. Anything else is
``unknown``: the judge decides it, never a rule, and never "same" by default. Pure.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from core.extractor import COMMON_WORDS

Verdict = Literal["same", "different", "unknown"]

_WORD = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|[^\W_]+(?:['’][^\W_]+)*")
NEGATIONS = frozenset("not no never without none nobody nothing neither nor lacks lacking lost missing".split())
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ORDINALS = {
    w: i + 1
    for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())
}
_SPECIAL = {"dozen": 12, "single": 1, "once": 1, "twice": 2, "thrice": 3, "pair": 2, "both": 2, "half": 0.5}

# Sets of alternatives: two values that name members of one set, none in common, disagree.
_SYNONYMS = {
    "gray": "grey", "golden": "gold", "wooden": "wood", "silvery": "silver", "iron-grey": "grey",
    "brazen": "brass", "steely": "steel", "leathern": "leather", "ebony": "black", "crimson": "red",
    "scarlet": "red", "azure": "blue", "navy": "blue", "emerald": "green", "violet": "purple",
    "older": "old", "elder": "old", "eldest": "old", "oldest": "old", "younger": "young", "youngest": "young",
    "taller": "tall", "shorter": "short", "bigger": "big", "smaller": "small", "larger": "large",
    "dead": "dead", "deceased": "dead", "living": "alive", "shut": "closed", "locked": "closed",
    "unlocked": "open", "opened": "open", "wed": "married", "unmarried": "single", "lefthanded": "left",
    "righthanded": "right",
}  # fmt: skip
ALTERNATIVES: tuple[frozenset[str], ...] = tuple(
    frozenset(s.split())
    for s in (
        "red blue green yellow black white grey brown purple orange pink silver gold amber auburn blond blonde "
        "hazel ginger copper bronze teal cyan turquoise ivory cream tan beige maroon",
        "brass silver gold iron steel copper bronze tin pewter platinum wood stone glass leather bone ivory "
        "clay porcelain paper cloth wool silk linen cotton oak pine ash elm birch walnut mahogany marble granite",
        "left right",
        "north south east west",
        "up down",
        "old young new",
        "tall short",
        "long short",
        "big small large little tiny huge",
        "wide narrow",
        "thick thin",
        "fat thin",
        "heavy light",
        "light dark",
        "rich poor",
        "full empty",
        "hot cold warm cool",
        "wet dry",
        "early late",
        "first last",
        "alive dead",
        "open closed",
        "married single widowed divorced",
        "male female",
        "man woman boy girl",
        "day night",
        "spring summer autumn winter",
        "monday tuesday wednesday thursday friday saturday sunday",
        "january february april june july august september october november december",
        "straight curly wavy",
        "clean dirty",
        "broken intact whole cracked",
        "blind sighted",
        "sharp blunt dull",
        "smooth rough",
        "loud quiet silent",
        "happy sad",
        "true false",
        "clear cloudy cracked",
    )
)
_FILLER = frozenset(
    """a an the of on in at to and or with her his its their my your our is was were are be been has had
    have which that this these those by for from as one's like very quite rather some any""".split()
)


_NUMERIC = frozenset([*_UNITS, *_TENS, *_SCALES, *_ORDINALS, *_SPECIAL])


def _words(text: str) -> list[str]:
    t = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    out = []
    for w in _WORD.findall(t):
        if w.endswith("n't"):
            out += [w[:-3], "not"]
        elif w.endswith("'s"):
            out.append(w[:-2])
        else:
            out.append(w)
    return [_SYNONYMS.get(w, w) for w in out]


def numbers(words: list[str]) -> list[float]:
    """The numbers a value states, in digits or in words ("twenty-two", "a dozen", "third")."""
    out: list[float] = []
    run: float | None = None
    current = 0.0
    for w in [*words, ""]:
        if w[:1].isdigit():
            if run is not None:
                out.append(run + current)
                run, current = None, 0.0
            out.append(float(w.replace(",", "")))
            continue
        if w in _UNITS or w in _TENS:
            run = 0.0 if run is None else run
            current += _UNITS.get(w, 0) + _TENS.get(w, 0)
        elif w in _SCALES:
            run = 0.0 if run is None else run
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                run, current = run + current, 0.0
        elif w == "and" and run is not None:
            continue
        else:
            if run is not None:
                out.append(run + current)
                run, current = None, 0.0
            if w in _ORDINALS:
                out.append(float(_ORDINALS[w]))
            elif w in _SPECIAL:
                out.append(float(_SPECIAL[w]))
    return out


def _names(text: str) -> set[str]:
    """The proper names a value states: its capitalised words that are no common word, number or
    listed alternative ("born in Lisbon" -> lisbon; "Blue" -> none)."""
    t = unicodedata.normalize("NFKC", text).replace("’", "'")
    out = set()
    for w in _WORD.findall(t):
        k = _SYNONYMS.get(w.casefold().removesuffix("'s"), w.casefold().removesuffix("'s"))
        if w[:1].isupper() and w != "I" and k not in COMMON_WORDS and k not in _NUMERIC and k not in _FILLER:
            if not any(k in group for group in ALTERNATIVES):
                out.add(k)
    return out


def _mostly(names: set[str], words: set[str]) -> bool:
    """Whether names are at least half of what a value says (beyond filler): "born in Lisbon" is
    about a place; "captain, serving under Mara" is not about Mara."""
    return 2 * len(names) >= len(words - _FILLER)


def _negated(words: list[str]) -> bool:
    return any(w in NEGATIONS for w in words)


def compare(a: str, b: str) -> Verdict:
    """Whether values ``a`` and ``b`` of one attribute agree (see the module's docstring)."""
    wa, wb = _words(a), _words(b)
    if wa == wb:
        return "same"
    if _negated(wa) != _negated(wb):
        return "different"
    na, nb = numbers(wa), numbers(wb)
    if na and nb and sorted(na) != sorted(nb):
        return "different"
    sa, sb = set(wa), set(wb)
    names_a, names_b = _names(a), _names(b)
    if names_a and names_b and not names_a & names_b and _mostly(names_a, sa) and _mostly(names_b, sb):
        return "different"  # other places, people, ships: "born in Lisbon" / "born in Porto"
    for group in ALTERNATIVES:
        ga, gb = sa & group, sb & group
        if ga and gb and not ga & gb:
            return "different"
    ca, cb = sa - _FILLER - _NUMERIC, sb - _FILLER - _NUMERIC
    ca, cb = {w for w in ca if not w[:1].isdigit()}, {w for w in cb if not w[:1].isdigit()}
    if (na or nb) and sorted(na) != sorted(nb):
        ca, cb = ca | {"#"}, cb  # a number on one side only is detail the other may lack
    if ca <= cb or cb <= ca:
        return "same"  # one says what the other does, and maybe more
    return "unknown"
