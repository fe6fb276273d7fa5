"""Whether a text carries what its author asked of it: each instruction (of a regenerate or a
selection rewrite) and each key point (added to the plan in review), item by item, ``covered``
(quoting where), ``missing`` or ``unchecked``.

Rules decide alone where they can: a key point or an instruction naming a person, a place or a
year that the text never names is missing, whatever a judge would say; a key point whose words
all stand in one sentence of the text is covered there. The rest is the judge's: its structured
answer is validated against the text (a ``covered`` verdict must quote the text, word for word),
and an item it cannot answer validly stays ``unchecked``, never covered.

Pure: ``activities.coverage`` asks the judge, stores the verdicts and retries what is missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from core.sentences import sentences
from core.text import count_words, paragraphs

VERDICTS = ("covered", "missing", "unchecked")
SOURCES = ("instruction", "key_point")
DETECTORS = ("rule", "judge", "none")
SUBTYPES = {"instruction": "instruction_not_followed", "key_point": "key_point_not_covered"}
JUDGE_WINDOW_WORDS = 5000  # a longer text is judged window by window (paragraphs kept whole)
QUOTE_MIN_WORDS = 3

_NAME_WORD = r"[A-Z][\w'’.-]*[\w]"
_NAME = re.compile(rf"{_NAME_WORD}(?:\s+(?:(?:of|de|la|le|du|van|von|da|del|der|bin|ibn)\s+)?{_NAME_WORD})*")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_STOP = frozenset(
    "a an the and or but of to in on at by for with from as is was are were be been being that this these those "
    "his her its their our your my he she it they we you not no it's into onto over under about than then there "
    "here also more most less very make makes made have has had do does did will would should could can may "
    "must shall which who whom what when where why how all any each every some such text passage chapter "
    "section part story write written mention mentions tell tells say says show shows keep".split()
)
# An instruction to take something away is followed when a name is gone: no rule says "missing" then.
_REMOVAL = re.compile(
    r"\b(?:remove|delete|drop|cut|omit|avoid|without|no longer|don'?t|do not|never|less|fewer|shorten|"
    r"leave out|take out|get rid)\b",
    re.I,
)
_ENDING = re.compile(r"\b(?:end|ending|ends|last|close|closing|final|finale|conclusion)\b", re.I)
_OPENING = re.compile(r"\b(?:start|opening|opens|beginning|begin|first|introduction)\b", re.I)


@dataclass(frozen=True)
class Item:
    """What the text should carry: an author's instruction or a key point of the plan."""

    source: str  # instruction | key_point
    text: str


@dataclass
class Verdict:
    item: Item
    verdict: str  # covered | missing | unchecked
    detector: str  # rule | judge | none
    quote: str = ""
    why: str = ""
    llm_call_ids: list[int] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "source": self.item.source,
            "item": self.item.text,
            "verdict": self.verdict,
            "detector": self.detector,
            "quote": self.quote[:500],
            "why": self.why[:500],
            "llm_calls": self.llm_call_ids,
        }


# -- rules ---------------------------------------------------------------------------------------


def names(text: str) -> list[str]:
    """The proper names in ``text``: runs of capitalised words, a run's first word only when it
    does not just open a sentence ("Harbour walls" is no name; "Elias Thorne" is)."""
    out: list[str] = []
    for s in sentences(" ".join(text.split())) or [text]:
        for m in _NAME.finditer(s):
            run = m.group(0)
            opens = m.start() == len(s) - len(s.lstrip(" \"'“‘(")) or not s[: m.start()].strip(" \"'“‘(")
            if opens:
                words = run.split()
                if len(words) == 1 or words[0].lower() in _STOP:
                    run = " ".join(words[1:])
                    if not run or not run[0].isupper():
                        continue
            run = run.rstrip(".")
            if run and run not in out and run.lower() not in _STOP:
                out.append(run)
    return out


def numbers(text: str) -> list[str]:
    """The numbers in ``text`` (years, figures), as written without thousands separators."""
    out = []
    for m in _NUMBER.finditer(text):
        n = m.group(0).replace(",", "").rstrip(".")
        if n and n not in out:
            out.append(n)
    return out


def _has_name(name: str, text: str) -> bool:
    pat = r"\s+".join(re.escape(w) for w in name.split())
    return re.search(rf"(?<![\w]){pat}(?![\w])", text) is not None


def _stems(text: str) -> set[str]:
    return {w.lower()[:5] for w in _WORD.findall(text) if len(w) >= 4 and w.lower() not in _STOP}


def by_rule(item: Item, text: str) -> Verdict | None:
    """The rules' verdict, where they can decide alone: a name or a number of the item that the
    text never has (missing); every word of a key point in one sentence of the text (covered)."""
    if item.source == "instruction" and _REMOVAL.search(item.text):
        return None
    gone = [n for n in names(item.text) if not _has_name(n, text)]
    text_numbers = set(numbers(text))
    gone += [n for n in numbers(item.text) if n not in text_numbers]
    if gone:
        listed = ", ".join(repr(g) for g in gone[:6])
        return Verdict(item, "missing", "rule", why=f"the text never has {listed}")
    if item.source != "key_point":
        return None
    want = _stems(item.text)
    if not want:
        return None
    for para in paragraphs(text):
        for s in sentences(para):
            if want <= _stems(s):
                return Verdict(item, "covered", "rule", quote=s, why="every word of the key point is in this sentence")
    return None


# -- the judge -------------------------------------------------------------------------------------


class _JudgeItem(BaseModel):
    item: int
    covered: bool
    quote: str = ""
    why: str = ""


class _JudgeAnswer(BaseModel):
    items: list[_JudgeItem]


def _plain(text: str) -> str:
    t = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(t.lower().split())


def judged(raw: str, items: list[Item], text: str) -> tuple[dict[int, Verdict], list[str]]:
    """The judge's answer read: a verdict per item it answered validly (numbered from 1), and what
    was wrong with the rest (the retry is told). ``covered`` stands only with a quote of the text."""
    try:
        answer = _JudgeAnswer.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        return {}, [f"not the JSON object asked for ({str(exc).splitlines()[0][:200]})"]
    out: dict[int, Verdict] = {}
    errors: list[str] = []
    plain = _plain(text)
    for a in answer.items:
        if not 1 <= a.item <= len(items) or a.item in out:
            errors.append(f"item {a.item} is not one of 1..{len(items)}, or is answered twice")
            continue
        it = items[a.item - 1]
        if not a.covered:
            out[a.item] = Verdict(it, "missing", "judge", why=a.why.strip())
        elif count_words(a.quote) < QUOTE_MIN_WORDS or _plain(a.quote).strip("\"' .") not in plain:
            errors.append(f"item {a.item}: its quote is not {QUOTE_MIN_WORDS}+ words copied exactly from the text")
        else:
            out[a.item] = Verdict(it, "covered", "judge", quote=a.quote.strip(), why=a.why.strip())
    errors += [f"item {i} has no verdict" for i in range(1, len(items) + 1) if i not in out and not _named(errors, i)]
    return out, errors


def _named(errors: list[str], i: int) -> bool:
    return any(e.startswith(f"item {i}:") for e in errors)


def windows(text: str, max_words: int = JUDGE_WINDOW_WORDS) -> list[str]:
    """``text`` in consecutive windows of whole paragraphs, each at most ``max_words`` words (a
    longer paragraph is a window of its own)."""
    out: list[list[str]] = [[]]
    n = 0
    for p in paragraphs(text):
        w = count_words(p)
        if out[-1] and n + w > max_words:
            out.append([])
            n = 0
        out[-1].append(p)
        n += w
    return ["\n\n".join(x) for x in out if x]


def merge(per_window: list[dict[int, Verdict]], items: list[Item]) -> list[Verdict]:
    """One verdict per item over the windows of a text: covered in any window; missing when every
    window answered no; otherwise unchecked (a window the judge never answered could hold it)."""
    out = []
    for i, it in enumerate(items, start=1):
        got = [w[i] for w in per_window if i in w]
        covered = next((v for v in got if v.verdict == "covered"), None)
        if covered is not None:
            out.append(covered)
        elif got and len(got) == len(per_window):
            out.append(Verdict(it, "missing", "judge", why="; ".join(v.why for v in got if v.why)[:500]))
        else:
            out.append(Verdict(it, "unchecked", "none", why="the judge gave no valid answer for part of the text"))
    return out


# -- where a retry writes ----------------------------------------------------------------------------


def repair_target(paras: list[str], items: list[Item]) -> int:
    """The paragraph a retry rewrites to carry ``items``: the ending for an instruction about the
    ending, the opening for one about the opening, else the paragraph sharing most words with the
    items (the last on a tie)."""
    if not paras:
        return 0
    asked = " ".join(i.text for i in items)
    if any(i.source == "instruction" for i in items):
        if _ENDING.search(asked):
            return len(paras) - 1
        if _OPENING.search(asked):
            return 0
    want = _stems(asked)
    scores = [len(want & _stems(p)) for p in paras]
    best = max(scores)
    return max(i for i, s in enumerate(scores) if s == best)
