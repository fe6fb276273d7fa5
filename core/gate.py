"""The degeneration gate: what a model wrote that a reader would call junk is cut before a word counts.

One pipeline, pure rules, each cut recorded as (rule, text, words): the rule is the kind of junk,
and a job's word account sums the cuts by kind. ``gate`` runs on every answer a model gives for the
document (chunks, extensions, seam repairs, bridges); what it keeps is what ``core.text.count_words``
counts. The rules, in the order they run:

- ``template_token``: chat-template and special tokens (``<start_of_image>``, ``<end_of_turn>``, ``</s>``);
- ``markup``: markup that is not the document's: HTML tags, LaTeX commands and math (``\\subsubsection{..}``,
  ``$\\mathrm{n}$``), code fences in prose;
- ``doubled_markup``: a heading marker said twice or inside emphasis ("# # My allotment year");
- ``heading``: ``#`` and ``##`` headings (Quire writes the document's headings itself);
- ``echo``: the prompt said back (its lines, sentences, the request that ends it: ``core.echo``);
- ``keyword_list``: a label and a list of terms ("Key words: ..."), a line of hashtags;
- ``title_line``: one of the prompt's titles with numbers strung about it ("My allotment year March
  bed 10,293.25m.");
- ``list_junk``: list markers with nothing after them ("1) 2) 3)", a lone "-");
- ``repeat``: a line, paragraph or sentence said again (in the answer, or already in the chunk), a
  word said five times in a row;
- ``number_run``: runs of tokens without a letter ("( 75 ) - ( 76 ) - ( 77 )");
- ``meta``: talk about the text, the task or what the document does not have ("Note: This text
  contains...", "Here is the rewritten passage:", "As an AI...", "* 2365 more words than in the
  original text", "There are no images on this page", "(see photo 3)", "please contact us");
- ``foreign_script``: words in another script inside text of the Latin script, unquoted, one too;
- ``glued``: two words run together ("vertretenmodel", "thelighthouse");
- ``foreign_word``: a word of another language outside the sentences ("next year.) mendatang (In
  April"), or a lone function word of one between English words ("und");
- ``near_repeat``: a sentence or paragraph most of whose runs of words were said already (shingles);
- ``lowercase_start``: a sentence that starts lowercase after one that ended (the rest of a
  sentence whose start was cut);
- ``stray_line``: a short line standing alone that is no sentence ("penduduk"), or a short line of
  words that are not the document's language;
- ``loop``: a paragraph that compresses to almost nothing against what precedes it (a loop
  rephrased), or an answer that is mostly the same few words;
- ``unfinished``: the words after the last sentence end (a passage ending mid-sentence, "A good").

Calibrated on real prose (tests/fixtures/prose: dialogue, anaphora, lists, numbers in sentences,
quoted foreign words, and near misses of each kind above), from which it cuts nothing. Repeats and
near repeats of what *other* chunks of the document say are cut with ``core.repeats`` (the database
keeps their fingerprints). What junk looks like is in ``core.junk`` (the patterns), the rules that
read words in ``core.words``, which language a word is in ``core.lexicon``, where a sentence ends in
``core.sentences``.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from core import junk
from core.echo import EchoIndex
from core.junk import Cut
from core.lexicon import ENGLISH_SHARE, FUNCTION_WORDS, QUOTED_RUN, english_share, lexicon
from core.repeats import NEAR_REPEAT_SHARE, near_share, runs
from core.sentences import ENDS_SENTENCE, SENTENCE_END, sentences
from core.text import count_words, normalize_paragraph, paragraphs
from core.words import Removed, foreign_script, foreign_words, glued, number_runs

_BLOCK_START = re.compile(r"^\s*(?:[-*+>#|]|\d+[.)])")
_FIRST_WORD = re.compile(r"^[\"'“‘(\[*_]*([^\W\d_][\w'’-]*)\s*(\S*)")
_NAME_PARTICLES = frozenset("de da di du del della van von der den la le al el ibn bin ter ten dos das".split())
# What a sentence may go on after in lowercase: a question or a cry ("But look! here come more
# crowds", "Is it late?" he asked), an ellipsis, a dash, an abbreviation the sentence rule ends at ("e.g.").
_GOES_ON = re.compile(
    r"(?:[?!][\"'”’]*|…|\.\.\.|--|—|–|\b(?:[a-z]\.){2,}|\b(?:etc|cf|vs|approx|ca|incl|esp|viz|figs?|vols?|nos?|pp"
    r"|tsp|tbsp|oz|lbs?|hrs?|mins?|secs?|cm|mm|km|kg|ft|in|yd|ave|jr|sr|eds?|dept|govt|misc|al|ibid|op|cit)\.)$",
    re.I,
)

# -- thresholds (tests/test_gate.py shows each cutting junk and sparing real prose) ------------------------
REPEAT_MIN_WORDS = 5  # a sentence this long said again in one answer is a repeat
STRAY_MAX_WORDS = 4  # a line alone, no sentence, at most this long
FOREIGN_LINE_MAX_WORDS = 12
LOOP_MIN_CHARS = 160
LOOP_RATIO = 0.18  # compressed size / size of a paragraph given what precedes it; prose is ~0.35-0.6
UNFINISHED_MAX_WORDS = 80  # a longer tail without a sentence end is a run-on, not a cut-off
NEAR_SENTENCE_MIN_WORDS = 10  # a sentence this long most of whose runs of words were said is a near repeat...
NEAR_SENTENCE_SHARE = 0.6  # ...this share of them (real prose: 0.44 at most, a quotation of an earlier line)


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

    def sub(self, rule: str, pattern: re.Pattern[str], text: str, keep: str = "", keep_if: str = "") -> str:
        """``text`` without the matches of ``pattern`` (``keep`` in their place), but those that
        ``keep_if`` (a source to rewrite) has word for word."""

        def one(m: re.Match[str]) -> str:
            if keep_if and m.group(0).strip() in keep_if:
                return m.group(0)
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
    text = cuts.sub("meta", junk.POINTER_ASIDE, text, keep_if=source)
    echoes = EchoIndex(prompt, source)
    text = _lines(text, echoes, cuts)
    text = cuts.sub("list_junk", junk.LONE_MARKERS, text)
    text = _said_once(text, cuts)
    text = _unwrap(text)
    english = english_share(text) >= ENGLISH_SHARE
    seen = {_key(s) for p in paragraphs(before) for s in sentences(p)}
    said = runs(before[-32768:])
    kept: list[str] = []
    paras = paragraphs(text)
    for i, para in enumerate(paras):
        # The last line's end is _finish's to judge: a passage cut off ("A good") is unfinished.
        whole = not fragment and i < len(paras) - 1
        # What this paragraph follows: a sentence may start lowercase after one that did not end.
        prev = None if fragment else (kept[-1] if kept else before)
        para = _paragraph(para, cuts, english=english, seen=seen, said=said, whole=whole, echoes=echoes, prev=prev)
        if para and near_share(para, said) >= NEAR_REPEAT_SHARE:
            cuts.add("near_repeat", para)  # said again with a few words changed
            continue
        if para and _is_loop(para, "\n\n".join([before[-32768:], *kept])):
            cuts.add("loop", para)
            continue
        if para:
            said |= runs(para)
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
        rule = _line_rule(line, echoes)
        if rule:
            cuts.add(rule, line)
            continue
        line, echoed = echoes.strip_line(line)
        for e in echoed:
            cuts.add("echo", e)
        if echoed and (rule := _line_rule(line, echoes)):
            cuts.add(rule, line)  # what the echo hid ("... the first harvest. Key terms: hive, queen.")
            continue
        key = normalize_paragraph(line)
        if key and key in seen and (len(key.split()) >= REPEAT_MIN_WORDS or times[key] >= 3):
            cuts.add("repeat", line)
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept)


def _line_rule(line: str, echoes: EchoIndex) -> str | None:
    """The rule that cuts a whole line of an answer, if one does."""
    if junk.DOUBLED_MARKUP.match(line):
        return "doubled_markup"
    if junk.HEADING.match(line):
        return "heading"
    if echoes.line_echoes(line):
        return "echo"
    if _keyword_list(line):
        return "keyword_list"
    if echoes.title_line(line):
        return "title_line"
    if _BLOCK_START.match(line) and junk.META.search(_BLOCK_START.sub("", line)):
        return "meta"  # a list item about the text ("* 2365 more words than in the original text .")
    return None


def _keyword_list(line: str) -> bool:
    """A label and a list of terms ("Key words: bees, hive, honey"), or a line of hashtags."""
    if junk.HASHTAGS.match(line):
        return True
    m = junk.KEYWORD_LABEL.match(line)
    if not m:
        return False
    items = [x for x in re.split(r"[,;|]", m.group("items").strip().rstrip(".")) if x.strip()]
    return len(items) >= 2 and all(len(x.split()) <= junk.KEYWORD_ITEM_MAX_WORDS for x in items)


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
    text = re.sub(r"(?<=\w)[ \t]+([.,])(?=\s|$)", r"\1", text)  # "pests and diseases ." (no language spaces so)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# -- paragraphs ----------------------------------------------------------------------------------------------


def _key(s: str) -> str:
    return normalize_paragraph(s)


def _paragraph(
    para: str,
    cuts: _Cuts,
    *,
    english: bool,
    seen: set[str],
    said: set[str],
    whole: bool,
    echoes: EchoIndex,
    prev: str | None,
) -> str:
    """One paragraph through the rules that read words and sentences; '' if nothing is left.
    ``seen``: sentences said before it (it adds its own); ``said``: runs of words said before it;
    ``prev``: the text it follows ('' at the start, None when a lowercase start is no rule)."""
    rules: list[tuple[str, Callable[[str], Removed]]] = [
        ("number_run", number_runs),
        ("foreign_script", foreign_script),
    ]
    if english:
        rules += [("glued", glued), ("foreign_word", foreign_words)]
    for rule, words in rules:
        para, removed = words(para)
        for r in removed:
            cuts.add(rule, r)
    if not _BLOCK_START.match(para):
        parts, kept, own = sentences(para), [], set()
        for s in parts:
            key, r = _key(s), runs(s)
            if junk.META.search(s):
                cuts.add("meta", s)
            elif echoes.title_line(s):
                cuts.add("title_line", s)
            elif len(key.split()) >= REPEAT_MIN_WORDS and key in seen:
                cuts.add("repeat", s)
            elif len(key.split()) >= NEAR_SENTENCE_MIN_WORDS and _share(r, said, own) >= NEAR_SENTENCE_SHARE:
                cuts.add("near_repeat", s)
            elif prev is not None and _lowercase_start(s, kept[-1] if kept else prev):
                cuts.add("lowercase_start", s)  # the rest of a sentence whose start was cut, or never written
            else:
                seen.add(key)
                own |= r
                kept.append(s)
        if len(kept) != len(parts):
            para = " ".join(kept)
    if whole and _stray(para, english):
        cuts.add("stray_line", para)
        return ""
    return para.strip()


def _share(r: set[str], *said: set[str]) -> float:
    return sum(any(x in s for s in said) for x in r) / len(r) if r else 0.0


def _lowercase_start(s: str, prev: str) -> bool:
    """Does sentence ``s`` start lowercase where a sentence must start with a capital: after text
    that ended its sentence (or at the start of an answer), and not a name ("de Gaulle", "iPhone",
    "npm")?
    After a colon, a dash, an ellipsis, a question in quotes ("Is it late?" he asked) or an
    abbreviation ("e.g.") a lowercase word goes on the sentence."""
    m = _FIRST_WORD.match(s)
    if not ENDS_SENTENCE.search(s):
        return False  # no sentence at all: a stray line's or an unfinished ending's to judge
    if not m or not m.group(1)[0].islower() or any(c.isupper() for c in m.group(1)):
        return False
    if m.group(1).lower() not in lexicon("en"):
        return False  # a name written lowercase ("npm", "kubectl"), not a sentence's first word
    if m.group(1) in _NAME_PARTICLES and m.group(2)[:1].isupper():
        return False
    prev = prev.rstrip()
    return not prev or (bool(ENDS_SENTENCE.search(prev)) and not _GOES_ON.search(prev))


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


def _said_once(text: str, cuts: _Cuts) -> str:
    """A word said five times or more in a row, once ("word word word word word" -> "word"): the
    repeats cut, and counted as the words cut (the one kept is not), so that an answer's words are
    always what was kept plus what was cut."""

    def one(m: re.Match[str]) -> str:
        cuts.append(Cut("repeat", m.group(0).strip(), count_words(m.group(0)) - count_words(m.group(1))))
        return m.group(1)

    return junk.REPEATED_WORD.sub(one, text)
