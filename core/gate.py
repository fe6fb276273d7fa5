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
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from core.echo import EchoIndex
from core.text import count_words, normalize_paragraph, paragraphs

CUT_TEXT_CHARS = 200  # of each cut, in the record (the whole answer is kept with its model call)

# -- tokens and markup -------------------------------------------------------------------------------
_SPECIAL_TOKEN = re.compile(
    r"<(?:start|end)_of_[a-z]+>(?:(?:user|model)\b)?|<\|[^|>]{1,40}\|>|</?s>"
    r"|<(?:pad|unk|eos|bos|mask|image_soft_token|unused\d{1,3})>|\[multimodal\]"
)
_CODE_FENCE = re.compile(r"^[ \t]*(?:```|~~~).*?(?:^[ \t]*(?:```|~~~)[ \t]*$|\Z)", re.M | re.S)
_HTML_BLOCK = re.compile(r"<(h[1-6]|script|style)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]{0,12}(?:\s[^<>\n]{0,200})?/?>")
_LATEX_MATH = re.compile(
    r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)"
    r"|\$(?:[^$\n]{0,80}?\\[a-zA-Z][^$\n]{0,80}?|[A-Za-z](?:[_^]\{?\w{1,6}\}?)?)\$",
    re.S,
)
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+\*?(?:\[[^\]\n]{0,80}\])?(?:\{[^{}\n]{0,200}\})*")
_HEADING = re.compile(r"^\s*#{1,2}\s")
_LIST_JUNK = re.compile(r"(?:\b\d{1,2}\)[ \t]*){3,}")
_LONE_MARKERS = re.compile(r"^\s*(?:[-*#>]+|\d+[.)])\s*$", re.M)
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){4,}", re.I)  # "word word word word word" -> "word"
_TOKEN = re.compile(r"\S+")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_BLOCK_START = re.compile(r"^\s*(?:[-*+>#|]|\d+[.)])")

# -- sentences -----------------------------------------------------------------------------------------
# A sentence ends at . ! ? … before a space (not after "Mr"), or at 。！？ (CJK puts no space after).
# The pattern opens on the end mark itself, so the engine skips to the next one at C speed; the
# abbreviations are looked behind from there ("Mr." ends nothing; "." is the mark just matched).
_ABBREV = r"(?<!\bMr.)(?<!\bMrs.)(?<!\bMs.)(?<!\bDr.)(?<!\bSt.)(?<!\bNo.)(?<!\bvs.)(?<!\betc.)(?<!\b[A-Z].)"
_SENTENCE_END = re.compile(
    r"[.!?…。！？](?:(?<=[.!?…])" + _ABBREV + r"[.!?…]*[\"'”’)\]_*]*(?=\s|$)|(?<=[。！？])[。！？]*[」』）】\"'”’]*)"
)
_CLOSERS = "\"'”’)]_*»」』）】"
# A line ends as a sentence does, or breaks off as dialogue does ("But your client--").
_ENDS_SENTENCE = re.compile(r"(?:[.!?…。！？]|--|—|–)[" + re.escape(_CLOSERS) + r"]*\s*$")

# -- meta-commentary: talk about the text or the task, not the document's subject ------------------------
_TEXT_NOUN = (
    r"(?:text|passage|essay|article|document|story|response|answer|summary|draft|version|prompt|task|"
    r"request|output|rewrite|continuation|paragraph|piece|section|chapter|content)"
)
_NOTE = r"note|n\.\s?b\.?|p\.\s?s\.?|disclaimer|editor'?s note|author'?s note"
_META = re.compile(
    "|".join(
        [
            # "Note: This text contains ...", "N.B. the passage ..."
            rf"^\W*(?:{_NOTE})\s*[:\-—–].{{0,160}}?\b(?:this|the|my|your|above|following)\s+{_TEXT_NOUN}\b",
            rf"^\W*(?:{_NOTE})\s*[:\-—–].{{0,160}}?\b(?:grammar|grammatical|spelling|typos?|word count)\b",
            # "This text contains a few grammatical errors."
            r"^\W*(?:this|the above|my)\s+(?:text|passage|response|answer|output|rewrite|version|draft|continuation)"
            r"\s+(?:contains|has been|was (?:written|generated|rewritten|revised)|is (?:written|generated|a rewrite|"
            r"a continuation))\b",
            # "Please check with your grammar book", "Please note that the text ..."
            r"^\W*please\b.{0,120}?\b(?:grammar|spelling|proofread|dictionary|the text|this text|"
            r"the passage|this passage|the prompt)\b",
            # Assistant preambles and sign-offs.
            r"^\W*(?:sure|certainly|of course|absolutely|okay|ok)\s*[!,.]\s*(?:here|below|i)\b",
            rf"^\W*(?:here(?:'s| is| are)|below (?:is|are))\b[^.!?]{{0,80}}\b{_TEXT_NOUN}s?\b[^.!?]{{0,80}}:\s*$",
            r"^\W*(?:here(?:'s| is| are)|below (?:is|are))\b[^.!?]{0,60}\b(?:rewritten|revised|continued|"
            r"requested|improved|expanded|edited|updated)\b",
            r"\bas an? (?:ai|artificial intelligence|language model|large language model|assistant|chatbot)\b",
            r"\bi(?:'m| am) (?:an? )?(?:ai|language model|large language model|chatbot)\b",
            r"\bi (?:cannot|can't|can not|am unable to) (?:fulfil|fulfill|complete|comply|provide|write|generate|"
            r"continue)\b.{0,60}\b(?:request|task|text|story|passage)\b",
            r"\bi(?: have|'ve) (?:rewritten|revised|expanded|continued|edited|tried to (?:write|keep|make))\b",
            r"\bi hope (?:this|that|it) (?:helps|meets|is helpful|works|answers)\b",
            r"\blet me know if you(?:'d| would)? (?:like|want|need) (?:me to|any|more|further|changes|"
            r"another)\b",
            r"\bfeel free to (?:ask|let me know|modify|adjust|change|edit|use)\b",
            r"\bword count\s*[:=]\s*\d",
        ]
    ),
    re.I,
)

# -- scripts and words -----------------------------------------------------------------------------------
_LATIN = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
_LATIN_LETTER = re.compile(f"[{_LATIN}]")
_OTHER_LETTER = re.compile(rf"[^\W\d_{_LATIN}]")
_QUOTED_RUN = re.compile(r"^[\"'“‘(*_«\[].*[\"'”’)*_»\]][.,;:!?]*$", re.S)
# A plain lowercase word standing as a whole token (its quotes and stops around it).
_PLAIN_WORD = re.compile(r"(?<!\S)[\"'“‘(*_]*([a-z]+)[\"'”’)*_.,;:!?]*(?!\S)")
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
    text = cuts.sub("template_token", _SPECIAL_TOKEN, answer)
    text = cuts.sub("markup", _CODE_FENCE, text)
    for markup in (_HTML_BLOCK, _HTML_TAG, _LATEX_MATH, _LATEX_COMMAND):
        text = cuts.sub("markup", markup, text)
    text = cuts.sub("list_junk", _LIST_JUNK, text)
    text = _lines(text, EchoIndex(prompt, source), cuts)
    text = cuts.sub("list_junk", _LONE_MARKERS, text)
    text = cuts.sub("repeat", _REPEATED_WORD, text, r"\1")
    text = _unwrap(text)
    english = _english_share(text) >= ENGLISH_SHARE
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
        if _HEADING.match(line):
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


def sentences(para: str) -> list[str]:
    """A paragraph's sentences, as they are written (joined with spaces they give it back)."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(para):
        out.append(para[start : m.end()].strip())
        start = m.end()
    if para[start:].strip():
        out.append(para[start:].strip())
    return [s for s in out if s]


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
            if _META.search(s):
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
    latin, other = len(_LATIN_LETTER.findall(para)), len(_OTHER_LETTER.findall(para))
    if not other or latin < 9 * other:
        return para

    def run(m: re.Match[str]) -> str:
        if _QUOTED_RUN.match(m.group(0)):
            return m.group(0)
        cuts.add("foreign_script", m.group(0))
        return ""

    out = re.sub(rf"\S*[^\W\d_{_LATIN}]\S*(?:\s+\S*[^\W\d_{_LATIN}]\S*)*", run, para)
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
        if len(w) < 7 or w in en or not _splits(w, en):
            return m.group(0)
        cuts.add("glued", m.group(0))
        return ""

    out = _PLAIN_WORD.sub(check, para)
    return _tidy(out) if out != para else para


def _splits(w: str, en: frozenset[str]) -> bool:
    common = lexicon("en-common")
    for i in range(1, len(w)):
        left, right = w[:i], w[i:]
        if left in FUNCTION_WORDS and len(right) >= 4 and right in en:
            return True
        if right in FUNCTION_WORDS and len(left) >= 4 and left in en:
            return True
        if min(len(left), len(right)) >= 4 and (
            (left in en and right not in en and _foreign(right)) or (right in en and left not in en and _foreign(left))
        ):
            return True
        if min(len(left), len(right)) >= 4 and left in common and right in common and right not in WORD_ENDINGS:
            return True  # "populationmodel"; not "waterward", English builds words so
    return False


def _foreign(word: str) -> bool:
    return any(word in lexicon(lang) for lang in FOREIGN_LEXICONS)


def _stray(para: str, english: bool) -> bool:
    """A line standing alone that is no sentence of the document: a few words with no sentence end
    ("penduduk", "penduduk で購入する"), or a short line of words foreign to an English document."""
    if not para or _BLOCK_START.match(para):
        return False
    words = para.split()
    if len(words) <= STRAY_MAX_WORDS and not _ENDS_SENTENCE.search(para) and not para.rstrip().endswith((":", ",")):
        title_case = all(w[:1].isupper() or w.lower() in FUNCTION_WORDS for w in words)
        return not title_case
    if english and len(words) <= FOREIGN_LINE_MAX_WORDS and not _QUOTED_RUN.match(para):
        return _english_share(para) < 0.5
    return False


def _english_share(text: str) -> float:
    """The share of plain lowercase words known to English (1.0 when there are none to judge)."""
    plain = _PLAIN_WORD.findall(text)
    if len(plain) < 3:
        return 1.0
    en = lexicon("en")
    return sum(w in en for w in plain) / len(plain)


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
    if not last or _ENDS_SENTENCE.search(last) or _BLOCK_START.match(last):
        return text
    ends = list(_SENTENCE_END.finditer(last))
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
