"""What the scripted model (tests/fake_llm.py) says: the text of its answers, made from the
prompt and the settings the server reads from its state (``FakeState``) and passes in.

It holds the words (``WORDS``) and the prose made of them; the system prompts the server tells
apart (``MEMORY_SYSTEM``, ``COVERAGE_SYSTEM``); what the script does to prose (a term drift at the
seams, a small model's echo of its prompt, issue 18's junk, plants, run-ons, terminal controls, a
cut at the token cap); the answer to each kind of call (``*_answer``); and the pieces a streamed
answer is sent in (``_Stream``, ``_pieces``).

What the calls of the story memory, its judge and repairs, a stitch's bridge and an author's edits
answer, as the settings script them:

- the story memory (``activities.memory``): a memory call (its system prompt) gets a valid delta
  of the passage it shows (a summary, every run of capitalised words as an entity with its
  sentence); ``memory_mode`` "invalid" answers no valid JSON, "incomplete" valid JSON without
  entities. ``plants`` are sentences put into chunk writes (``nth`` write of the job, or the
  ``index``-th write (default 1) of outline chapter ``chapter``) with what the memory call reports of them
  (``entity``, ``attribute``, ``value``); a plant that gives a known entity's attribute another
  value is reported as a contradiction of that entry by the judge, one that gives it again as an
  agreement (``agrees``) (``judge_mode``, one setting for both judges, this one and the coverage
  judge below: "names", the default, names what it finds; "weak": the attribute is listed, no
  contradiction nor agreement is ever named; "invalid": a judge-only call, the seam's,
  answers no valid JSON). ``recheck_mode`` scripts the memory call that sees a plant it already
  reported (a re-check after a repair): "lazy" leaves that plant's detail out, "invalid" answers
  no valid JSON. A repair call puts the established sentence back in place of the contradicting
  one (``repair_mode`` "stubborn": changes nothing; "cosmetic": changes other words, keeps the
  contradicting sentence; "midstart": puts it back but opens with the end of a sentence the
  paragraph never had ("2500 BC) stood beyond the harbor wall.": a bracket it never opened, which
  the gate leaves, so that the answer starts in the middle of a sentence; "midstart_once" so until
  told its last rewrite was not used; "terse": answers with the
  established sentence alone, so that the passage falls short); a summary call answers the first
  summary it is given;
- a stitch's bridge (a passage that stops mid-sentence finished): prose of the words asked for;
  ``bridge_mode`` "unfinished" answers words that never end the sentence, "opens" a new sentence
  of its own; ``run_on``: the numbers of chunk writes (``nth`` as for plants) whose answer ends in a
  run-on of 95 words without a sentence end (past what the gate cuts as a cut-off);
- an author's edits (``activities.selection``, ``activities.coverage``): ``rewrites`` is a queue of
  how the next selection rewrites answer: "whole" (the passage with the text shown around it, as a
  model that rewrites the whole passage does), "meta" (talk about the passage, ending in a colon),
  "unfinished" (cut off mid-sentence), "overshoot" (three times the words), "comply" (the
  instruction said in a sentence); past the queue, prose (an instruction ignored). The coverage
  judge (its system prompt) says an item is covered, quoting the sentence, when every word of five
  letters or more of it stands in one sentence of the text, else not (``judge_mode`` "names", the
  default); ``judge_mode`` "invalid"
  answers no valid JSON, "lying" claims every item covered with a quote that is not in the text. A
  coverage retry (one paragraph rewritten to carry the items) gives the paragraph back unchanged,
  or, with ``comply``, with each item said as a sentence; ``comply`` also has a chunk write say its
  author's instruction;
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

WORDS = (
    "river archive lantern quiet harbor method signal patient ledger orchard granite measure "
    "window current letter station valley thread record council engine season compass garden "
    "bridge answer pattern meadow theory voyage circuit folio margin timber beacon canyon echo "
    "prairie chapter figure notion kernel summit glacier vessel mirror hollow ember tide cipher"
).split()


@dataclass
class _Stream:
    """What one streamed answer sends, and how."""

    content: str
    finish: str
    usage: dict[str, int] | None
    tokens_per_s: float
    fault: str | None
    hang_s: float
    error_message: str = ""


PIECE_WORDS = 32  # words per streamed chunk after the first (a real server sends ~1 token a chunk)


def _pieces(content: str) -> list[str]:
    """``content`` cut into stream chunks that join back to it exactly: its first word alone, then
    ``PIECE_WORDS`` words at a time (fewer, bigger chunks than a real server's: tests stay fast)."""
    words = re.findall(r"\s*\S+\s*", content) or ([content] if content else [])
    if not words:
        return []
    rest = ["".join(words[i : i + PIECE_WORDS]) for i in range(1, len(words), PIECE_WORDS)]
    return [words[0], *rest]


TERM = "Harbor Lantern Council"
MEMORY_SYSTEM = "You keep the story memory"  # the memory call's system prompt (activities.prompts)
COVERAGE_SYSTEM = "You check whether a text"  # the coverage judge's (activities.edit_prompts)


def _carrying(instruction: str) -> str:
    """A sentence that carries an instruction's long words (not its words in order: no echo)."""
    long = [w.lower() for w in re.findall(r"[A-Za-z]{5,}", instruction)]
    return f"At last came the {' and the '.join(long)}." if long else ""


def _sentence(words: str) -> str:
    """``words`` as a sentence: capitalised, ending with a full stop."""
    w = words.strip().rstrip(".")
    return (w[:1].upper() + w[1:] + ".") if w else ""


def _chapter_of(prompt: str) -> int:
    """The outline index (1-based) of the chapter a chunk prompt is in, 0 if none."""
    chapter = re.search(r"^Chapter: (.+?)\.", prompt, re.M)
    outline = re.findall(r"^(\d+)\. (.+)$", prompt, re.M)
    return next((int(n) for n, t in outline if chapter and t.strip() == chapter.group(1).strip()), 0)


def _plant_term(content: str, prompt: str) -> str:
    """The term in its established spelling in the book's 1st, 3rd, ... chapters (by the outline),
    otherwise in lower case: a drift at the seams after the odd ones. It goes inside the prose's
    own first and last sentences, so that no sentence repeats one the prompt showed."""
    chapter = re.search(r"^Chapter: (.+?)\.", prompt, re.M)
    outline = re.findall(r"^(\d+)\. (.+)$", prompt, re.M)
    index = next((int(n) for n, t in outline if chapter and t.strip() == chapter.group(1).strip()), 1)
    term = TERM.lower() if index % 2 == 0 else TERM
    paras = content.split("\n\n")
    for i in {0, len(paras) - 1}:
        words = paras[i].split(" ")
        paras[i] = " ".join(words[:3] + ["of", "the", term] + words[3:])
    return "\n\n".join(paras)


def _asks_words(messages: list[dict[str, Any]]) -> bool:
    """A prose request ("about N words"), or a document to continue from its last line (the
    small-model prompt: one message ending a paragraph): chunks and bridges, not a plan's outline."""
    last = str(messages[-1].get("content", "")) if messages else ""
    return re.search(r"about \d+ (?:more )?words", last) is not None or (len(messages) == 1 and last.endswith("\n\n"))


def _asked_words(messages: list[dict[str, Any]], max_tokens: int | None = None) -> int:
    """The words asked for: "about N words", or what ``max_tokens`` leaves room for (1.6 a word)."""
    last = str(messages[-1].get("content", "")) if messages else ""
    m = re.findall(r"about (\d+) (?:more )?words", last)
    if m:
        return int(m[-1])
    return max(8, int((max_tokens - 32) / 1.6)) if max_tokens and _asks_words(messages) else 100


def _asks(line: str) -> bool:
    return line.startswith("(") or re.search(r"\bwords?\b", line) is not None


# Prompt lines that are instructions, not document text: the system prompt, labelled notes
# ("Key terms: ...", "Thesis: ..."), outline entries and bracketed requests. Headings are left
# out: the document has its own.
_INSTRUCTION = re.compile(r"^(?:\(|\d+\. |[A-Z][\w ()]{0,40}:)")


def _echo(messages: list[dict[str, Any]], prose: str, asked: int, rng: random.Random) -> tuple[str, list[str]]:
    """``prose`` with what a small base model adds: its prompt's instruction lines said back
    (whole, and one sentence of the system prompt), the request that ends the prompt verbatim,
    paraphrased and cut short, and junk tokens. Returns the answer and the echoed lines."""
    system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
    lines = [ln.strip() for m in messages for ln in str(m.get("content", "")).splitlines() if ln.strip()]
    # The request that ends the prompt; a document to continue (the small-model prompt) has none.
    request = lines[-1] if lines and _asks(lines[-1]) else ""
    notes = [ln for ln in lines[:-1] if _INSTRUCTION.match(ln) and len(ln.split()) <= 40]
    echoed = [*rng.sample(notes, min(3, len(notes))), *([request] if request else [])]
    if system:
        echoed.append(system[0].split(". ")[0] + ".")
    paraphrase = f"(Continue from where it stopped, with about {asked} words.)"
    fragment = " ".join(request.split()[:6]) or paraphrase
    paras = prose.split("\n\n")
    paras[0] = f"{echoed[0] if echoed else ''}\n{paras[0]} {paraphrase} <start_of_image> 1) 2) 3)".lstrip()
    paras.insert(len(paras) // 2 + 1, "\n".join(echoed[1:]) + "\n<end_of_turn>")
    paras.append(fragment)
    return "\n\n".join(paras), [*echoed, paraphrase, fragment]


# The junk of issue 18, word for word, and a paragraph said in every answer (any chapter's).
JUNK_LINES = (
    "Note: This text contains a few grammatical errors. Please check with your grammar book…",
    "penduduk",
    "penduduk で購入する",
    "\\subsubsection{The Harbor Archive}",
    " - ".join(f"( {n} )" for n in range(75, 95)),
)
JUNK_INLINE = ("$\\mathrm{n}$", "vertretenmodel")
JUNK_ENDING = "A good"
REPEATED = "Patient keepers measure every season by the lantern and the quiet harbor record."


def _junk(prose: str) -> str:
    """``prose`` with issue 18's junk between and inside its paragraphs, ``REPEATED`` first, and an
    ending cut off mid-sentence."""
    paras = prose.split("\n\n")
    first = paras[0].split(". ")[0] + "."
    words = paras[0].split(" ")
    paras[0] = " ".join([*words[:2], *JUNK_INLINE, *words[2:]]) + (" " + first) * 5
    out = [REPEATED]
    for i, p in enumerate(paras):
        out += [p, JUNK_LINES[i % len(JUNK_LINES)]]
    return "\n\n".join([*out, JUNK_ENDING])


def _prose(words: int, rng: random.Random) -> str:
    out: list[str] = []
    paragraphs: list[str] = []
    while len(out) < words:
        n = min(rng.randint(8, 16), words - len(out))
        sent = [rng.choice(WORDS) for _ in range(n)]
        sent[0] = sent[0].title()
        out.extend(sent)
        paragraphs.append(" ".join(sent) + ".")
    # Group sentences into paragraphs of about five sentences.
    grouped = [" ".join(paragraphs[i : i + 5]) for i in range(0, len(paragraphs), 5)]
    return "\n\n".join(grouped)


# -- the answer to each kind of call, from the prompt and the settings passed in ------------------
def memory_answer(
    prompt: str, plants: list[dict[str, Any]], mode: str, judge_mode: str, recheck: str, reported: set[str]
) -> tuple[str, set[str]]:
    """The memory call's answer, from the passage it shows (and the plants it holds), and the
    plant sentences it reported (the server adds them to ``reported``)."""
    judge_only = "Only the contradictions" in prompt
    if mode == "invalid" or (judge_only and judge_mode == "invalid"):
        return '{"summary": "cut short", "entities": [{"name": ', set()
    passage = prompt.split('"""', 2)[1] if prompt.count('"""') >= 2 else ""
    again = [p for p in plants if p["sentence"] in passage and p["sentence"] in reported]
    if recheck == "invalid" and again:
        return '{"summary": "cut short", "entities": [{"name": ', set()
    if recheck == "lazy":  # what it already reported, it leaves out
        plants = [p for p in plants if p not in again]
    seen = {p["sentence"] for p in plants if p["sentence"] in passage}
    known = prompt.split("New passage:", 1)[0]
    sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", passage) if x.strip()]
    entities: dict[str, dict[str, Any]] = {}
    if mode != "incomplete":
        for sent in sentences:
            for name in re.findall(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", sent):
                entities.setdefault(name, {"name": name, "type": "other", "quote": sent, "attributes": []})
    contradictions, agrees = [], []
    for p in plants:
        if p["sentence"] not in passage or not p.get("entity"):
            continue
        e = entities.setdefault(
            p["entity"], {"name": p["entity"], "type": "person", "quote": p["sentence"], "attributes": []}
        )
        e["type"] = "person"
        e["attributes"].append({"attribute": p["attribute"], "value": p["value"], "quote": p["sentence"]})
        ref = re.search(rf"^\[(E\d+)\] {re.escape(p['entity'])}'s {re.escape(p['attribute'])}: (.+)$", known, re.M)
        if ref and ref.group(2).strip() == p["value"] and judge_mode != "weak":
            agrees.append(ref.group(1))
        if ref and ref.group(2).strip() != p["value"] and judge_mode != "weak":
            contradictions.append(
                {
                    "category": "characters",
                    "known": ref.group(1),
                    "quote": p["sentence"],
                    "explanation": f"{p['entity']}'s {p['attribute']} was {ref.group(2).strip()}",
                }
            )
    if judge_only:  # the judge alone
        answer = {"summary": sentences[0] if sentences else "-", "contradictions": contradictions, "agrees": agrees}
        return json.dumps(answer), seen
    return json.dumps(
        {
            "summary": " ".join(sentences[:2]) or "An empty passage.",
            "entities": list(entities.values()),
            "events": [],
            "threads_opened": [],
            "threads_resolved": [],
            "facts": [],
            "contradictions": contradictions,
            "agrees": agrees,
        }
    ), seen


def repair_answer(prompt: str, plants: list[dict[str, Any]], mode: str) -> str:
    """A repair: the paragraph with each contradicting plant put back as established (``mode``:
    the server's ``repair_mode``)."""
    paragraph = prompt.split('"""', 2)[1].strip() if prompt.count('"""') >= 2 else ""
    if mode == "stubborn":
        return paragraph
    if mode == "cosmetic":  # other words changed, the contradiction kept
        return f"{paragraph} The tide turned slowly."
    established = re.findall(r'\(established earlier: "(.+?)"\)$', prompt, re.M)
    for p in plants:
        for there in established:
            if p["sentence"] in paragraph and p.get("entity") and p["entity"] in there and p["sentence"] != there:
                paragraph = there if mode == "terse" else paragraph.replace(p["sentence"], there)
    told = "Your last rewrite was not used" in prompt
    if mode == "midstart" or (mode == "midstart_once" and not told):  # it starts mid-sentence
        paragraph = f"2500 BC) stood beyond the harbor wall. {paragraph}"
    return paragraph


def bridge_answer(mode: str) -> str:
    """A stitch's bridge as ``bridge_mode`` scripts it: "unfinished" or "opens"."""
    return {"unfinished": "and the keepers went on counting the", "opens": "The tide came in."}[mode]


def rewrite_answer(prompt: str, prose: str, want: int, rng: random.Random, how: str) -> str:
    """A selection's rewrite, as ``how`` (the next of the server's ``rewrites``) scripts it."""
    before = re.search(r'just before the passage:\n"…(.*?)"\n', prompt, re.S)
    after = re.search(r'just after it:\n"(.*?)…"', prompt, re.S)
    instruction = re.search(r"as its author asks: (.+)$", prompt, re.M)
    if how == "whole":
        return " ".join(x.group(1) for x in (before, after) if x) + " " + prose
    if how == "meta":
        return "The main purpose of the passage is to show the harbour. The author's question is asking you:"
    if how == "unfinished":
        return prose.rstrip(".") + " and then the"
    if how == "overshoot":
        return _prose(want * 3 + 40, rng)
    if how == "comply" and instruction:
        return f"{prose} {_sentence(instruction.group(1))}"
    return prose


def coverage_answer(prompt: str, mode: str) -> str:
    """The coverage judge: each item covered where its long words stand in one sentence (``mode``:
    the server's ``judge_mode``)."""
    if mode == "invalid":
        return '{"items": [{"item": 1, "covered": '
    text = prompt.split('"""', 2)[1] if prompt.count('"""') >= 2 else ""
    items = re.findall(r"^(\d+)\. \((?:instruction|key point)\) (.+)$", prompt.split("Items:", 1)[-1], re.M)
    sents = [x.strip() for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    out = []
    for n, item in items:
        want = {w.lower() for w in re.findall(r"[A-Za-z]{5,}", item)}
        where = next((x for x in sents if want <= {w.lower() for w in re.findall(r"[A-Za-z]{5,}", x)}), None)
        if mode == "lying":
            out.append({"item": int(n), "covered": True, "quote": "a sentence the text never had", "why": "yes"})
        elif where is not None and want:
            out.append({"item": int(n), "covered": True, "quote": where, "why": "it says so"})
        else:
            out.append({"item": int(n), "covered": False, "quote": "", "why": "the text does not say it"})
    return json.dumps({"items": out})


def cover_answer(prompt: str, comply: bool) -> str:
    """A coverage retry: the paragraph back, or (``comply``) with each item said in it."""
    paragraph = prompt.split('"""', 2)[1].strip() if prompt.count('"""') >= 2 else ""
    if not comply:
        return paragraph
    items = re.findall(r"^- (?:follow the instruction|state the key point): (.+)$", prompt, re.M)
    return " ".join([paragraph, *(_sentence(i) for i in items)])


def plan_answer(prompt: str, rng: random.Random, malformed: bool, short: bool, mark: str = "") -> str:
    """A plan as JSON; ``mark`` goes into every string of it; ``short``: half the items asked for."""
    if malformed:
        return '{"title": "Broken", "sections": [{"title": 7, "words": "many"'
    m = re.search(r"exactly (\d+)", prompt) or re.search(r"(\d+) sections", prompt)
    k = int(m.group(1)) if m else 3
    if short:  # fewer items than asked for (the plan pads them)
        k = max(1, k // 2)
    return json.dumps(
        {
            "title": mark + "A Study of " + rng.choice(WORDS).title(),
            "thesis": mark + _prose(20, rng),
            "sections": [
                {
                    "title": f"{mark}{rng.choice(WORDS).title()} {rng.choice(WORDS)}",
                    "summary": mark + _prose(15, rng),
                    "key_points": [mark + _prose(6, rng) for _ in range(2)],
                }
                for _ in range(k)
            ],
            "glossary": {mark + rng.choice(WORDS).title(): mark + _prose(8, rng) for _ in range(3)},
            "style": mark + "plain, precise prose",
        }
    )


def _planted(content: str, due: list[dict[str, Any]], run_on: bool) -> str:
    """A chunk write with the plants ``due`` in it at the top of its first paragraph; ``run_on``:
    its last 95 words one sentence, unended (past what the gate cuts)."""
    for p in reversed(due):
        content = f"{p['sentence']} {content}"
    if run_on:
        words = content.split(" ")
        head, tail = " ".join(words[:-95]), " ".join(words[-95:])
        tail = re.sub(r"[.!?]\s+(\w)", lambda m: " " + m.group(1).lower(), tail.replace("\n\n", " "))
        content = f"{head} {tail.rstrip('.')}"
    return content


def prose_answer(
    messages: list[dict[str, Any]],
    prompt: str,
    rng: random.Random,
    *,
    ratio: tuple[float, float],
    max_tokens: int | None,
    rewrite: str | None,
    comply: bool,
    seam_drift: bool,
    due: list[dict[str, Any]],
    run_on: bool,
    fault: str | None,
    mode: str,
    n: int,
) -> tuple[str, str, list[str]]:
    """Prose of a ``ratio`` of the words asked for, as the script shapes it: a selection's rewrite
    (``rewrite``: how, None when the prompt asks for none) or the author's instruction carried
    (``comply``), the term drift (``seam_drift``), a chunk write's plants ``due`` and ``run_on``, a
    cut at ``max_tokens`` or by a "truncate" ``fault``, and what ``mode`` "controls" (in every third
    answer, by its number ``n``), "echo" and "junk" put in. Returns the answer, its finish_reason
    and the lines it echoed."""
    asked = _asked_words(messages, max_tokens)
    lo, hi = ratio
    want = max(1, int(asked * rng.uniform(lo, hi)))
    content = _prose(want, rng)
    finish, echoed = "stop", []
    if rewrite is not None:
        content = rewrite_answer(prompt, content, want, rng, rewrite)
    elif comply and (asked_for := re.search(r"^The author asks of this passage: (.+)$", prompt, re.M)):
        content = f"{_carrying(asked_for.group(1))} {content}"
    if seam_drift:
        content = _plant_term(content, prompt)
    content = _planted(content, due, run_on)
    if fault == "truncate" or (max_tokens and want * 1.4 > max_tokens):
        # Cut at the token cap like a real server: roughly 1.4 tokens per word.
        cap = max(1, int((max_tokens or want) / 1.4)) if fault != "truncate" else max(1, want // 2)
        content = " ".join(content.split()[:cap])
        finish = "length"
    if mode == "controls" and n % 3 == 0:
        words = content.split(" ")
        third = max(1, len(words) // 3)
        words[third] += "\x00"
        words[2 * third] = "\x1b[31m" + words[2 * third] + "\x1b[0m\x07"
        content = " ".join(words) + " \x1b]0;title\x07"
    if mode == "echo" and _asks_words(messages):
        content, echoed = _echo(messages, content, asked, rng)
    elif mode == "junk" and _asks_words(messages):
        content = _junk(content)
    return content, finish, echoed
