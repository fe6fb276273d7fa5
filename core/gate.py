"""The degeneration gate: what a model wrote that a reader would call junk is cut before a word counts.

One pipeline, pure rules, each cut recorded as (rule, text, words). ``gate`` runs on every answer a
model gives for the document (chunks, extensions, seam repairs, bridges); what it keeps is what
``core.text.count_words`` counts. The rules, in the order they run:

- ``template_token``: chat-template and special tokens (``<start_of_image>``, ``<end_of_turn>``, ``</s>``);
- ``markup``: markup that is not the document's: HTML tags, LaTeX commands and math (``\\subsubsection{..}``,
  ``$\\mathrm{n}$``), code fences in prose;
- ``heading``: ``#`` and ``##`` headings (Quire writes the document's headings itself);
- ``echo``: the prompt said back (its lines, sentences, the request that ends it: ``core.echo``);
- ``list_junk``: list markers with nothing after them ("1) 2) 3)", a lone "-");
- ``repeat``: a line, paragraph or sentence said again (in the answer, or already in the chunk), a
  word said five times in a row;
- ``number_run``: runs of tokens without a letter ("( 75 ) - ( 76 ) - ( 77 )");
- ``meta``: talk about the text or the task ("Note: This text contains...", "Here is the rewritten
  passage:", "As an AI...");
- ``foreign_script``: words in another script inside text of the Latin script, unquoted;
- ``glued``: two words run together ("vertretenmodel", "thelighthouse");
- ``stray_line``: a short line standing alone that is no sentence ("penduduk"), or a short line of
  words that are not the document's language;
- ``loop``: a paragraph that compresses to almost nothing against what precedes it (a loop
  rephrased), or an answer that is mostly the same few words;
- ``unfinished``: the words after the last sentence end (a passage ending mid-sentence, "A good").

Calibrated on real prose (tests/fixtures/prose: dialogue, anaphora, lists, numbers in sentences,
quoted foreign words), from which it cuts nothing. Repeats of paragraphs and sentences already in
*other* chunks of the document are cut with ``core.repeats`` (the database keeps their fingerprints).
What junk looks like is in ``core.junk`` (the patterns), which language a word is in ``core.lexicon``,
where a sentence ends in ``core.sentences``.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

from core import junk
from core.echo import EchoIndex
from core.lexicon import (
    ENGLISH_SHARE,
    FUNCTION_WORDS,
    LATIN,
    LATIN_LETTER,
    OTHER_LETTER,
    PLAIN_WORD,
    QUOTED_RUN,
    english_share,
    lexicon,
    splits,
)
from core.sentences import ENDS_SENTENCE, SENTENCE_END, sentences
from core.text import count_words, normalize_paragraph, paragraphs

CUT_TEXT_CHARS = 200  # of each cut, in the record (the whole answer is kept with its model call)

_TOKEN = re.compile(r"\S+")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_BLOCK_START = re.compile(r"^\s*(?:[-*+>#|]|\d+[.)])")

# -- thresholds (tests/test_gate.py shows each cutting junk and sparing real prose) ------------------------
NUMBER_RUN_TOKENS = 8  # consecutive tokens without a letter...
NUMBER_RUN_NUMBERS = 4  # ...of which this many hold a digit
REPEAT_MIN_WORDS = 5  # a sentence this long said again in one answer is a repeat
STRAY_MAX_WORDS = 4  # a line alone, no sentence, at most this long
FOREIGN_LINE_MAX_WORDS = 12
LOOP_MIN_CHARS = 160
LOOP_RATIO = 0.18  # compressed size / size of a paragraph given what precedes it; prose is ~0.35-0.6
UNFINISHED_MAX_WORDS = 80  # a longer tail without a sentence end is a run-on, not a cut-off


@dataclass(frozen=True)
class Cut:
    rule: str
    text: str
    words: int

    def record(self) -> dict[str, object]:
        s = " ".join(self.text.split())
        return {
            "rule": self.rule,
            "words": self.words,
            "text": s if len(s) <= CUT_TEXT_CHARS else s[: CUT_TEXT_CHARS - 1] + "…",
        }


@dataclass(frozen=True)
class Gated:
    """What the gate kept of an answer, what it cut (in order), and the answer's own word count."""

    text: str
    cuts: list[Cut] = field(default_factory=list)
    words_in: int = 0

    @property
    def words_cut(self) -> int:
        return sum(c.words for c in self.cuts)

    def by_rule(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.cuts:
            out[c.rule] += c.words
        return dict(out)

    def records(self) -> list[dict[str, object]]:
        return [c.record() for c in self.cuts]


class _Cuts(list[Cut]):
    def add(self, rule: str, text: str) -> None:
        if text.strip():
            self.append(Cut(rule, text.strip(), count_words(text)))

    def sub(self, rule: str, pattern: re.Pattern[str], text: str, keep: str = "") -> str:
        def one(m: re.Match[str]) -> str:
            self.add(rule, m.group(0))
            return m.expand(keep)

        return pattern.sub(one, text)


def gate(answer: str, *, prompt: str = "", source: str = "", before: str = "", fragment: bool = False) -> Gated:
    """``answer`` without its junk, and what was cut. ``prompt`` is what the model was asked (its
    echoes go); ``source``, text the prompt gives to rewrite, may be kept word for word; ``before``,
    the text the answer continues (its sentences said again go, and loops are judged against it);
    ``fragment``: the answer finishes a sentence (a bridge), so the rules about whole lines and
    sentence ends do not apply."""
    cuts = _Cuts()
    text = cuts.sub("template_token", junk.SPECIAL_TOKEN, answer)
    text = cuts.sub("markup", junk.CODE_FENCE, text)
    for markup in (junk.HTML_BLOCK, junk.HTML_TAG, junk.LATEX_MATH, junk.LATEX_COMMAND):
        text = cuts.sub("markup", markup, text)
    text = cuts.sub("list_junk", junk.LIST_JUNK, text)
    text = _lines(text, EchoIndex(prompt, source), cuts)
    text = cuts.sub("list_junk", junk.LONE_MARKERS, text)
    text = cuts.sub("repeat", junk.REPEATED_WORD, text, r"\1")
    text = _unwrap(text)
    english = english_share(text) >= ENGLISH_SHARE
    seen = {_key(s) for p in paragraphs(before) for s in sentences(p)}
    kept: list[str] = []
    paras = paragraphs(text)
    for i, para in enumerate(paras):
        # The last line's end is _finish's to judge: a passage cut off ("A good") is unfinished.
        whole = not fragment and i < len(paras) - 1
        para = _paragraph(para, cuts, english=english, seen=seen, whole=whole)
        if para and _is_loop(para, "\n\n".join([before[-32768:], *kept])):
            cuts.add("loop", para)
            continue
        if para:
            kept.append(para)
    text = "\n\n".join(kept)
    if not fragment:
        text = _finish(text, cuts)
    if _degenerate(text):
        cuts.add("loop", text)
        text = ""
    return Gated(text, list(cuts), count_words(answer))


# -- lines ---------------------------------------------------------------------------------------------------


def _lines(text: str, echoes: EchoIndex, cuts: _Cuts) -> str:
    kept: list[str] = []
    seen: set[str] = set()
    lines = text.splitlines()
    # A line said again is a loop, not prose; a short one ("Yes." in dialogue) only from its third time.
    times = Counter(normalize_paragraph(ln) for ln in lines)
    for line in lines:
        if junk.HEADING.match(line):
            cuts.add("heading", line)
            continue
        if echoes.line_echoes(line):
            cuts.add("echo", line)
            continue
        line, echoed = echoes.strip_line(line)
        for e in echoed:
            cuts.add("echo", e)
        key = normalize_paragraph(line)
        if key and key in seen and (len(key.split()) >= REPEAT_MIN_WORDS or times[key] >= 3):
            cuts.add("repeat", line)
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept)


def _unwrap(text: str) -> str:
    """Rejoin prose that a model hard-wrapped at ~80 columns; lists, quotes and headings stay."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        if line.strip() and prev.strip() and not _BLOCK_START.match(line) and not _BLOCK_START.match(prev):
            out[-1] = prev.rstrip() + " " + line.strip()
        else:
            out.append(line)
    text = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", "\n".join(out))  # where something was cut out
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# -- paragraphs ----------------------------------------------------------------------------------------------


def _key(s: str) -> str:
    return normalize_paragraph(s)


def _paragraph(para: str, cuts: _Cuts, *, english: bool, seen: set[str], whole: bool) -> str:
    """One paragraph through the rules that read words and sentences; '' if nothing is left."""
    para = _foreign_script(_number_runs(para, cuts), cuts)
    if english:
        para = _glued(para, cuts)
    if not _BLOCK_START.match(para):
        parts, kept = sentences(para), []
        for s in parts:
            key = _key(s)
            if junk.META.search(s):
                cuts.add("meta", s)
            elif len(key.split()) >= REPEAT_MIN_WORDS and key in seen:
                cuts.add("repeat", s)
            else:
                seen.add(key)
                kept.append(s)
        if len(kept) != len(parts):
            para = " ".join(kept)
    if whole and _stray(para, english):
        cuts.add("stray_line", para)
        return ""
    return para.strip()


def _number_runs(para: str, cuts: _Cuts) -> str:
    """Cut runs of tokens without a letter: "( 75 ) - ( 76 ) - ( 77 )", "1, 2, 3, 4, 5, 6, 7, 8"."""
    if para.lstrip().startswith("|"):  # a table row is the document's own
        return para
    if len(_DIGIT.findall(para)) < NUMBER_RUN_NUMBERS:  # most prose: no run can be there
        return para.strip()
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
    for a, b in reversed(spans):
        cuts.add("number_run", para[a:b])
        para = para[:a].rstrip() + " " + para[b:].lstrip()
    return para.strip()


def _foreign_script(para: str, cuts: _Cuts) -> str:
    """In a paragraph written in the Latin script, unquoted runs of words in another script go."""
    latin, other = len(LATIN_LETTER.findall(para)), len(OTHER_LETTER.findall(para))
    if not other or latin < 9 * other:
        return para

    def run(m: re.Match[str]) -> str:
        if QUOTED_RUN.match(m.group(0)):
            return m.group(0)
        cuts.add("foreign_script", m.group(0))
        return ""

    out = re.sub(rf"\S*[^\W\d_{LATIN}]\S*(?:\s+\S*[^\W\d_{LATIN}]\S*)*", run, para)
    return _tidy(out) if out != para else para


def _tidy(s: str) -> str:
    """Spaces left where words were cut out of a line."""
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", s)).strip()


def _glued(para: str, cuts: _Cuts) -> str:
    """Two words run together: an unknown word that is a function word and an English word, or an
    English word and a word of another language ("vertretenmodel")."""
    en = lexicon("en")

    def check(m: re.Match[str]) -> str:
        w = m.group(1)
        if len(w) < 7 or w in en or not splits(w, en):
            return m.group(0)
        cuts.add("glued", m.group(0))
        return ""

    out = PLAIN_WORD.sub(check, para)
    return _tidy(out) if out != para else para


def _stray(para: str, english: bool) -> bool:
    """A line standing alone that is no sentence of the document: a few words with no sentence end
    ("penduduk", "penduduk で購入する"), or a short line of words foreign to an English document."""
    if not para or _BLOCK_START.match(para):
        return False
    words = para.split()
    if len(words) <= STRAY_MAX_WORDS and not ENDS_SENTENCE.search(para) and not para.rstrip().endswith((":", ",")):
        title_case = all(w[:1].isupper() or w.lower() in FUNCTION_WORDS for w in words)
        return not title_case
    if english and len(words) <= FOREIGN_LINE_MAX_WORDS and not QUOTED_RUN.match(para):
        return english_share(para) < 0.5
    return False


def _is_loop(para: str, context: str) -> bool:
    """A paragraph that compresses to almost nothing, alone or after what precedes it: it says
    again what was said (a loop, whether word for word or rephrased with a counter)."""
    raw = para.encode()
    if len(raw) < LOOP_MIN_CHARS:
        return False
    alone = len(zlib.compress(raw, 9)) / len(raw)
    if alone < LOOP_RATIO:
        return True
    if not context.strip():
        return False
    c = zlib.compressobj(9, zdict=context.encode()[-32768:])
    return len(c.compress(raw) + c.flush()) / len(raw) < LOOP_RATIO


def _finish(text: str, cuts: _Cuts) -> str:
    """Cut what follows the last sentence end of the last paragraph (a passage cut off mid-sentence)."""
    paras = text.split("\n\n")
    last = paras[-1].rstrip() if paras else ""
    if not last or ENDS_SENTENCE.search(last) or _BLOCK_START.match(last):
        return text
    ends = list(SENTENCE_END.finditer(last))
    tail = last[ends[-1].end() :] if ends else last
    if count_words(tail) > UNFINISHED_MAX_WORDS or not re.search(r"[^\W\d_]", tail.split()[-1]):
        return text  # a run-on, or a list or table ending on a number ("In all ... $28.12")
    cuts.add("unfinished", tail)
    paras[-1] = last[: ends[-1].end()] if ends else ""
    return "\n\n".join(p for p in paras if p.strip()).strip()


def _degenerate(text: str) -> bool:
    """Text that is mostly the same few words again: a model stuck in a loop."""
    toks = [t.lower() for t in text.split()]
    if len(toks) < 40:
        return False
    grams = [tuple(toks[i : i + 4]) for i in range(len(toks) - 3)]
    return len(set(grams)) / len(grams) < 0.5  # prose rarely repeats a 4-word run; loops do nothing else
