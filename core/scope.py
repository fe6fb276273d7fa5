"""What an edit proves about its scope, as rules: a passage starts and ends on sentence
boundaries, a spliced selection leaves every byte around it as it was (with the hashes that show
it), and a model's rewrite of a selection stays inside it.

Pure: ``activities.edits`` (selection rewrites, regenerated passages), ``activities.coverage``
(a paragraph rewritten to carry a missing point), the API's check of a hand edit and any repair
that replaces part of a text call the same functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.gate import Cut
from core.sentences import ENDS_SENTENCE, sentences
from core.text import count_words, normalize_paragraph, sha256


class EditError(StrEnum):
    """Why an edit failed: stored on the edit (``edits.error_code``), shown by the API and the CLI."""

    SCOPE = "E_EDIT_SCOPE"  # the model's answer never stayed inside the selection, or the splice changed more


_OPENERS = "\"'“‘(«[*_—–-¿¡"
_BLOCK_LINE = re.compile(r"^\s*(?:[-*+>|]|\d+[.)]\s)")  # a list, quote or table line: not prose
_FIRST_WORD = re.compile(r"[^\W\d_][\w'’-]*")
# Capitalised words that open a sentence and hardly ever a clause inside one: a rewrite that
# starts with one where its selection ran on from the words before it begins a new sentence there.
_OPENING_WORDS = frozenset(
    "a an the this that these those it its he she they we you i there here in on at as but and so "
    "when while after before then however meanwhile yet".split()
)
# Words about the task rather than the document: an answer that talks about "the passage" or "the
# author's question" is commentary, unless the document itself uses such words around it.
_TASK_TALK = re.compile(
    r"\b(?:(?:the|this|that|my|your|above|following|original)\s+(?:passage|selection|rewrite|rewritten\s+\w+|"
    r"instruction|prompt|excerpt|original\s+text)|the\s+author'?s?\s+(?:question|request|instruction)|"
    r"rewritten\s+(?:passage|version|text)|the\s+(?:main|central)\s+(?:purpose|point|idea)\s+of\s+the\s+\w+)\b",
    re.I,
)
SELECTION_GROWTH = 2.0  # a selection's rewrite has at most this many times its words...
SELECTION_SLACK = 30  # ...or this many more, whichever allows more
OUTSIDE_MIN_WORDS = 6  # a sentence this long from around the selection, said again: a whole-passage rewrite


# -- sentence boundaries ---------------------------------------------------------------------------


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends at a sentence end (or with a list or table line, which ends nothing)."""
    t = text.rstrip()
    if not t:
        return True
    last = t.rsplit("\n", 1)[-1]
    return bool(ENDS_SENTENCE.search(t)) or bool(_BLOCK_LINE.match(last))


def start_problem(text: str) -> str | None:
    """Why ``text`` starts in the middle of a sentence (a lowercase word, a comma, a bracket it
    never opened: "2500 BC) is a complex structure..."), or None."""
    t = text.lstrip()
    if not t or _BLOCK_LINE.match(t):
        return None
    head = t[:60].split("\n", 1)[0]
    if t[0] in ",;:.)]}!?…" or t[0] in "”’»」』）】":
        return f"starts with {t[0]!r}, in the middle of a sentence ({head!r})"
    body = t.lstrip(_OPENERS + " ")
    m = _FIRST_WORD.match(body)
    if m is not None and m.group(0)[0].islower():
        return f"starts with a lowercase word, in the middle of a sentence ({head!r})"
    first = sentences(t.split("\n", 1)[0])[:1]
    s = first[0] if first else t
    for open_, close in ("()", "[]"):
        depth = 0
        for ch in s:
            depth += (ch == open_) - (ch == close)
            if depth < 0:
                return f"closes a {open_}{close} it never opened: it starts in the middle of a sentence ({head!r})"
    return None


def end_problem(text: str) -> str | None:
    """Why ``text`` ends in the middle of a sentence, or None."""
    if ends_sentence(text):
        return None
    tail = " ".join(text.split()[-8:])
    return f"ends in the middle of a sentence (…{tail!r})"


def boundary_problems(text: str) -> list[str]:
    """A passage starts and ends on sentence boundaries: what is wrong with ``text``'s, if anything."""
    return [p for p in (start_problem(text), end_problem(text)) if p]


def whole_sentences(text: str, *, start: bool = True, end: bool = True) -> tuple[str, list[Cut]]:
    """``text`` without a leading fragment (through its first sentence end) when it starts in the
    middle of a sentence, and without what follows its last sentence end when it ends in the
    middle of one; and those cuts (rules ``mid_sentence_start``, ``unfinished``). For model text
    only: an author's words are checked (``boundary_problems``), never cut."""
    cuts: list[Cut] = []
    t = text.strip()
    if start and t and start_problem(t):
        para = t.split("\n\n", 1)[0]
        ends = _sentence_ends(para)
        head = para[: ends[0]] if ends else para  # no sentence end in it: the whole paragraph
        cuts.append(Cut("mid_sentence_start", head, count_words(head)))
        t = t[len(head) :].strip()
    if end and t and not ends_sentence(t):
        body, _, last = t.rpartition("\n\n")
        ends = _sentence_ends(last)
        keep = last[: ends[-1]].rstrip() if ends else ""
        cut = last[len(keep) :].strip()
        cuts.append(Cut("unfinished", cut, count_words(cut)))
        t = "\n\n".join(p for p in (body, keep) if p.strip()).strip()
    return t, cuts


def _sentence_ends(para: str) -> list[int]:
    """Where each sentence of ``para`` that ends a sentence ends (character offsets)."""
    out, pos = [], 0
    for s in sentences(para):
        i = para.find(s, pos)
        if i < 0:
            break
        pos = i + len(s)
        if ends_sentence(s):
            out.append(pos)
    return out


# -- a selection spliced, and the proof that nothing else changed ----------------------------------------


@dataclass(frozen=True)
class Splice:
    """A text with its selection ``start``:``end`` replaced by ``new``: what it was, what it is."""

    before: str
    start: int
    end: int
    new: str

    @property
    def old(self) -> str:
        return self.before[self.start : self.end]

    @property
    def after(self) -> str:
        return self.before[: self.start] + self.new + self.before[self.end :]

    def proof(self) -> dict[str, Any]:
        """What the audit event carries: the selection before and after, and the hashes of the
        text before and after it, the same on both sides (anyone holding the two versions can
        check them)."""
        prefix, suffix = self.before[: self.start], self.before[self.end :]
        return {
            "selection_before": self.old,
            "selection_after": self.new,
            "selection_before_sha256": sha256(self.old),
            "selection_after_sha256": sha256(self.new),
            "prefix_chars": len(prefix),
            "suffix_chars": len(suffix),
            "prefix_sha256": sha256(prefix),
            "suffix_sha256": sha256(suffix),
            "text_before_sha256": sha256(self.before),
            "text_after_sha256": sha256(self.after),
        }


def splice(text: str, start: int, end: int, answer: str) -> Splice:
    """``text`` with ``answer`` in place of its selection, keeping the whitespace the selection
    began and ended with (a rewrite's answer comes trimmed: the words around keep their spacing)."""
    old = text[start:end]
    lead = old[: len(old) - len(old.lstrip())]
    trail = old[len(old.rstrip()) :] if old.strip() else ""
    return Splice(text, start, end, lead + answer.strip() + trail)


def prove(before: str, after: str, start: int, end: int, new: str) -> list[str]:
    """What differs from ``before`` in ``after`` outside the selection ``start``:``end`` (which
    ``new`` replaced): empty when every byte before and after the selection is as it was."""
    problems = []
    if after[:start] != before[:start]:
        at = next((i for i, (a, b) in enumerate(zip(after[:start], before[:start], strict=False)) if a != b), None)
        at = at if at is not None else min(len(after), start)
        problems.append(f"the text before the selection changed (from character {at})")
    tail = len(before) - end
    if after[start : start + len(new)] != new:
        problems.append("the selection's new text is not where it was put")
    if len(after) - (start + len(new)) != tail or after[start + len(new) :] != before[end:]:
        problems.append("the text after the selection changed")
    return problems


# -- a model's rewrite of a selection --------------------------------------------------------------


def growth_limit(words: int) -> int:
    """The most words a rewrite of a ``words``-word selection may have."""
    return max(int(words * SELECTION_GROWTH), words + SELECTION_SLACK)


def _is_sentence_start(prefix: str) -> bool:
    before = prefix.rstrip(" \t")
    return not before.strip() or before.endswith("\n") or ends_sentence(before)


def _opens_sentence(text: str) -> bool:
    m = _FIRST_WORD.match(text.lstrip().lstrip(_OPENERS))
    return m is not None and m.group(0)[0].isupper() and m.group(0).lower() in _OPENING_WORDS


def selection_problems(answer: str, *, prefix: str, old: str, suffix: str, raw: str = "") -> list[str]:
    """What is wrong with a model's rewrite ``answer`` of the selection ``old`` between ``prefix``
    and ``suffix``: empty, longer than the selection allows, the text around it said again (the
    whole passage rewritten), talk about the task, or joins that break a sentence (a new sentence
    where the selection ran on, a sentence left unfinished where it ended one). ``raw``: the
    answer as the model wrote it, before the gate: a model that said the text around the
    selection again, or talked about its task, is not trusted with the rest of its answer either."""
    new = answer.strip()
    if not new:
        return ["the answer is empty"]
    out = []
    if normalize_paragraph(new) == normalize_paragraph(old):
        out.append("the answer is the selection unchanged")
    words, limit = count_words(new), growth_limit(count_words(old))
    if words > limit:
        out.append(f"the answer has {words} words for a selection of {count_words(old)} (at most {limit})")
    own = {normalize_paragraph(s) for s in sentences(" ".join(old.split()))}
    around = {normalize_paragraph(s) for s in sentences(" ".join((prefix + " " + suffix).split()))}
    said = [
        s
        for s in sentences(" ".join(f"{new} {raw}".split()))
        if len(normalize_paragraph(s).split()) >= OUTSIDE_MIN_WORDS
        and normalize_paragraph(s) in around
        and normalize_paragraph(s) not in own
    ]
    if said:
        out.append(f"the answer repeats text from around the selection ({said[0][:80]!r}): rewrite only the selection")
    talk = _TASK_TALK.search(f"{new} {raw}")
    if talk and not _TASK_TALK.search(prefix + old + suffix):
        out.append(f"the answer talks about the task ({talk.group(0)!r}): write only the new text")
    elif new.rstrip().endswith(":") and not old.rstrip().endswith(":"):
        out.append("the answer ends with a colon, as an introduction to something it does not give")
    if _is_sentence_start(prefix):
        problem = start_problem(new)
        if problem:
            out.append(f"the selection starts a sentence, but the answer {problem}")
    elif _opens_sentence(new) and not _opens_sentence(old):
        ran = " ".join(prefix.split()[-4:])
        out.append(f"the selection runs on from {ran!r}, but the answer starts a new sentence")
    ends_here = ends_sentence(old) or not suffix.strip() or suffix.startswith(("\n", " \n"))
    if ends_here and not ends_sentence(new):
        out.append(f"the selection ends a sentence, but the answer {end_problem(new)}")
    elif not ends_here and ENDS_SENTENCE.search(new.rstrip()):
        out.append(f"the selection runs on into {' '.join(suffix.split()[:4])!r}, but the answer ends a sentence")
    return out


def changed_region(before: str, after: str) -> tuple[int, int, str, str]:
    """Where two texts differ: (unchanged characters at the start, unchanged at the end, the part
    of ``before`` between them, the part of ``after`` between them)."""
    n = min(len(before), len(after))
    p = 0
    while p < n and before[p] == after[p]:
        p += 1
    q = 0
    while q < n - p and before[len(before) - 1 - q] == after[len(after) - 1 - q]:
        q += 1
    return p, q, before[p : len(before) - q], after[p : len(after) - q]


def document_proof(before: str, after: str, old: str, new: str) -> dict[str, Any]:
    """A document before and after an edit of one selection (``old`` -> ``new``): what changed lies
    inside the selection, before and after, or ``problems`` says what else did."""
    p, q, gone, came = changed_region(before, after)
    problems = []
    if gone not in old or came not in new:
        problems.append(
            f"the document changed outside the selection (at character {p}: {gone[:80]!r} became {came[:80]!r})"
        )
    return {
        "before_sha256": sha256(before),
        "after_sha256": sha256(after),
        "unchanged_prefix_chars": p,
        "unchanged_suffix_chars": q,
        "prefix_sha256": sha256(before[:p]),
        "suffix_sha256": sha256(before[len(before) - q :] if q else ""),
        "problems": problems,
    }
