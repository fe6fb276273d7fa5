"""Prompts: everything Quire asks a model, for the plan at every level, each chunk, the stitch and
the seam repair.

Chunk prompts put their unchanging part first and byte-identical for the whole job (the system
text, then the book's title, thesis, style and top-level outline) so that providers' prompt
caching applies; what changes (where in the book, the state, the tail, the ask) comes after.
They say the word count they want ("about N words") in the last message: small base models follow
that better than instructions, and real chat models follow it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.memory import MemoryContext
from core.plan import MAX_PLANNED_SECTIONS
from core.text import tail_words

SYSTEM = (
    "You are a careful author writing one part of a long document. Write only the document's prose: "
    "no headings, no notes to the reader, no lists of instructions, no commentary about the task."
)
_ITEM_FIELDS = (
    "title, summary (one paragraph: what it covers and why it is there), key_points (a list of strings), "
    "introduces (names and terms it introduces) and relies_on (names and terms it needs from earlier)"
)


def _json_messages(system: str, user: str, error: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if error:  # the retry shows the model what was wrong with its last answer
        msgs.append(
            {
                "role": "user",
                "content": f"Your previous answer was not valid: {error[:500]}. "
                "Answer again with the JSON object only.",
            }
        )
    return msgs


def _passages_rule(passages: list[int]) -> str:
    """AgentWrite's per-passage plan: each section's key points are its passages' own points."""
    if not passages:
        return ""
    counts = ", ".join(str(n) for n in passages[:MAX_PLANNED_SECTIONS])
    return (
        f" Each section is written as passages of about the same length, in order ({counts} passages "
        "for the sections in turn): give each section exactly that many key_points, one per passage, each that "
        "passage's own distinct point."
    )


def plan_messages(
    brief: str,
    target_words: int,
    items: int,
    level: str = "section",
    error: str | None = None,
    passages: list[int] | None = None,
) -> list[dict[str, str]]:
    """The book's skeleton: title, thesis, glossary and cast, style, and its top-level nodes."""
    want = min(items, MAX_PLANNED_SECTIONS)
    user = (
        f"Plan a document of at least {target_words} words on this brief:\n\n{brief.strip()}\n\n"
        f"Answer with one JSON object with keys: title (string), thesis (string), sections (a list of exactly "
        f"{want} {level} objects, each with {_ITEM_FIELDS}), glossary (an object mapping key terms and "
        f"characters to one-line definitions) and style (string). Every {level} title must be distinct."
        + _passages_rule(passages or [])
    )
    return _json_messages("You plan documents. You answer with JSON only.", user, error)


def rewrite_plan_messages(
    opening: str,
    headings: list[str],
    target_words: int,
    input_words: int,
    items: int = 3,
    level: str = "section",
    error: str | None = None,
) -> list[dict[str, str]]:
    mode = "condensed" if target_words < input_words else "expanded"
    user = (
        f"Here is the opening of a {input_words}-word document that will be rewritten and {mode} to "
        f"at least {target_words} words.\n\n{opening}\n\n"
        + (f"Its headings: {'; '.join(headings[:40])}\n\n" if headings else "")
        + f"Answer with one JSON object with keys: title, thesis (one paragraph on what the document argues), "
        f"sections (a list of exactly {min(items, MAX_PLANNED_SECTIONS)} {level} objects in order, each with "
        f"{_ITEM_FIELDS}), glossary (key terms to one-line definitions) and style (how it is written)."
    )
    return _json_messages("You analyse documents. You answer with JSON only.", user, error)


@dataclass
class NodeBrief:
    """What a node's expansion is planned from: the book, the path down to it, its siblings."""

    book: dict[str, Any]  # the skeleton: title, thesis, style, glossary
    path: list[tuple[str, str, str]]  # (level, title, summary) from the top level down to the node
    siblings: list[str]  # the titles of the node's siblings, in order
    key_points: list[str]
    children_level: str
    children: int
    child_words: int
    avoid: list[str]  # headings the book already has
    source_opening: str = ""  # rewrites: the opening of the input the node rewrites
    passages: list[int] = field(default_factory=list)  # children that are sections: their chunks, in order


def children_messages(b: NodeBrief, error: str | None = None) -> list[dict[str, str]]:
    """A node's children, planned when the node is about to be written."""
    level, title, summary = b.path[-1]
    where = "\n".join(f"{lv.title()}: {t}. {s}".strip() for lv, t, s in b.path)
    user = (
        f"Document: {b.book.get('title', '')}\nThesis: {b.book.get('thesis', '')}\n"
        f"Style: {b.book.get('style', '')}\n"
        + (f"Key terms: {'; '.join(list(b.book.get('glossary', {}))[:20])}\n" if b.book.get("glossary") else "")
        + f"\n{where}\n"
        + (f"Key points of this {level}: {'; '.join(b.key_points[:8])}\n" if b.key_points else "")
        + (f"Its neighbours, in order: {'; '.join(b.siblings[:30])}\n" if b.siblings else "")
        + (f"\nThe passage of the original it rewrites begins:\n{b.source_opening}\n" if b.source_opening else "")
        + f"\nPlan the {b.children} {b.children_level}s of the {level} '{title}', in order, each of about "
        f"{b.child_words} words. Answer with one JSON object with key sections: a list of exactly "
        f"{b.children} {b.children_level} objects, each with {_ITEM_FIELDS}. Titles must be distinct and differ "
        f"from these: {'; '.join(b.avoid[-60:])}." + _passages_rule(b.passages)
    )
    return _json_messages("You plan documents. You answer with JSON only.", user, error)


def outline_messages(title: str, lead: str, sections: int, error: str | None = None) -> list[dict[str, str]]:
    """The plan for small base models: a numbered list of parts to continue, not JSON.

    JSON mode is slow with grammar-constrained sampling and small models rarely fill a schema;
    "This document has N parts: 1." is what they continue naturally (a "Contents" heading pulls
    them into code documentation). The result is still validated.
    """
    want = max(3, min(sections, MAX_PLANNED_SECTIONS))
    return [{"role": "user", "content": f"# {title}\n\n{lead.strip()}\n\nThis document has {want} parts:\n\n1."}]


def children_outline_messages(b: NodeBrief) -> list[dict[str, str]]:
    """A node's children for small base models: the book so far as headings, then a list to continue."""
    heads = "\n\n".join(f"{'#' * (i + 2)} {t}\n\n{s}".strip() for i, (_, t, s) in enumerate(b.path))
    want = max(2, min(b.children, MAX_PLANNED_SECTIONS))
    return [
        {
            "role": "user",
            "content": f"# {b.book.get('title', '')}\n\n{heads}\n\nThis {b.path[-1][0]} has {want} parts:\n\n1.",
        }
    ]


def plan_max_tokens(items: int, style: str) -> int:
    """Room for a plan's answer: a numbered list of titles, or a JSON object with summaries."""
    n = min(items, MAX_PLANNED_SECTIONS)
    return 40 + 24 * n if style == "document" else min(4096, 300 + 160 * n)


def outline_line(plan: dict[str, Any]) -> str:
    """The book's top level as a numbered list (the same for every chunk of the job)."""
    parts = [f"{i + 1}. {s.get('title', '')}" for i, s in enumerate(plan.get("sections", []))]
    return "\n".join(parts[:MAX_PLANNED_SECTIONS])


@dataclass
class ChunkContext:
    """What a chunk is written from: the skeleton, where it stands, its own brief, the story
    memory cut to its budget (``core.memory.build_context``), the tail of the text before it."""

    plan: dict[str, Any]
    section_index: int
    section_title: str
    section_summary: str
    brief: str
    source_text: str | None
    previous_tail: str
    path: list[tuple[str, str, str]] = field(default_factory=list)  # (level, title, summary) above the section
    memory: MemoryContext = field(default_factory=MemoryContext)
    handoff: str = ""  # a chapter started before its predecessor ended: what that predecessor covers
    brief_words: int = 0  # this passage's own budget
    instruction: str = ""  # its author's, when the passage is written again (activities.edits)


def chunk_messages(ctx: ChunkContext, *, style: str, words: int, current_text: str = "") -> list[dict[str, str]]:
    """Messages for writing (``current_text`` empty) or extending a chunk.

    ``instruct`` suits chat models: the book as labelled notes, then where this passage stands
    and the ask. ``document`` suits small base models, which echo labelled notes back: the prompt
    is the document itself (title, the running summary as its opening, key terms, the headings
    down to this section, the text so far) followed by a one-line request in brackets.
    """
    if style == "document":
        return _document_messages(ctx, words, current_text)
    return _instruct_messages(ctx, words, current_text)


def echo_source(msgs: list[dict[str, str]], ctx: ChunkContext) -> str:
    """The prompt a chunk's answer is searched for echoes of: its messages without the memory's
    lines. Those are the document's own earlier sentences and facts, which a passage may rightly
    restate (a repeat word for word is the de-duplication's to cut, not an instruction echoed)."""
    prompt = "\n".join(m["content"] for m in msgs)
    mem = ctx.memory
    for line in [*mem.entities, *mem.summaries]:
        prompt = prompt.replace(line, "")
    for item in [*mem.threads, *mem.facts]:
        prompt = prompt.replace(item, "")
    return prompt


def _instruct_messages(ctx: ChunkContext, words: int, current_text: str) -> list[dict[str, str]]:
    plan = ctx.plan
    book = [  # identical for every chunk of the job: the cacheable prefix
        f"Document: {plan.get('title', '')}",
        f"Thesis: {plan.get('thesis', '')}" if plan.get("thesis") else "",
        f"Style: {plan.get('style', '')}" if plan.get("style") else "",
        f"Outline:\n{outline_line(plan)}",
    ]
    mem = ctx.memory
    where = [f"{lv.title()}: {t}. {s}".strip() for lv, t, s in ctx.path]
    notes = [
        *where,
        f"Current section: {ctx.section_title}. {ctx.section_summary}",
        ("The document so far:\n" + "\n".join(f"- {x}" for x in mem.summaries)) if mem.summaries else "",
        f"This part follows on from: {ctx.handoff}" if ctx.handoff else "",
        (
            "Established so far (keep every name and detail exactly consistent with this):\n"
            + "\n".join(f"- {x}" for x in mem.entities)
        )
        if mem.entities
        else "",
        ("Open threads: " + "; ".join(mem.threads)) if mem.threads else "",
        ("Facts not to contradict: " + "; ".join(mem.facts)) if mem.facts else "",
        (
            f"This passage's own point ({ctx.brief_words} words of the section): {ctx.brief}"
            if ctx.brief_words
            else f"This passage's own point: {ctx.brief}"
        )
        if ctx.brief
        else "",
        f"The author asks of this passage: {ctx.instruction}" if ctx.instruction else "",
    ]
    if current_text:  # extend: continue the passage, never restart it
        ask = (
            f'The passage so far ends with:\n"…{tail_words(current_text, 250)}"\n\n'
            f"Continue this passage from exactly where it stops, without repeating anything, "
            f"with about {words} more words."
        )
    else:
        ask = ""
        if ctx.source_text:
            ask = (
                f"Rewrite the following source passage as the next part of the document, in about {words} "
                f"words, keeping its meaning and facts:\n\n{ctx.source_text}\n\n"
            )
        if ctx.previous_tail:
            ask += f'The document so far ends with:\n"…{ctx.previous_tail}"\n\n'
        ask += f"Continue the document with the next passage of about {words} words."
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "\n".join(n for n in book if n)},
        {"role": "user", "content": "\n".join(n for n in notes if n) + "\n\n" + ask},
    ]


def _document_messages(ctx: ChunkContext, words: int, current_text: str) -> list[dict[str, str]]:
    plan = ctx.plan
    parts = [f"# {plan.get('title', '')}"]
    recent = ctx.memory.summaries[-1].split(": ", 1)[-1] if ctx.memory.summaries else ""
    opening = " ".join((recent or ctx.handoff or plan.get("thesis", "")).split()[:80])
    if opening:
        parts.append(opening)
    terms = [e.split(" (", 1)[0] for e in ctx.memory.entities[:8]]
    if terms:
        parts.append("Key terms: " + ", ".join(terms) + ".")
    parts += [f"{'#' * (i + 2)} {t}" for i, (_, t, _s) in enumerate(ctx.path)]
    parts.append(f"{'#' * (len(ctx.path) + 2)} {ctx.section_title}")
    if ctx.source_text and not current_text:
        body = ctx.previous_tail
        ask = (
            f"(Rewrite this source passage for the section above in your own words, about {words} words: "
            f"{ctx.source_text})"
        )
    elif current_text:
        body = tail_words(current_text, 250)
        ask = f"(Continue from where it stops, with about {words} more words.)"
    else:
        body = ctx.previous_tail
        # Not "this text": a small model answers "Note: This text contains ..." to that.
        ask = f"(Continue from where it stops, with about {words} words.)"
    if body:
        parts.append(body)
    if ctx.instruction:
        ask = f"{ask[:-1]} {ctx.instruction.strip()})"
    return [{"role": "user", "content": "\n\n".join(parts) + "\n\n" + ask}]


# How the local model samples its prose (llama.cpp's server takes these beside the OpenAI fields),
# measured with bench/bench_demo.py (bench/RESULTS.md): a cooler temperature and min_p keep a 270M
# base model from wandering into other languages and scripts; the repeat penalty breaks its loops;
# it stops where it starts code (a markdown prompt pulls it into code documentation), a chat turn or
# a note about the text, which the gate would cut anyway: no time is spent writing them.
LOCAL_SAMPLING: dict[str, object] = {
    "temperature": 0.7,
    "top_k": 40,
    "min_p": 0.1,
    "repeat_penalty": 1.15,
    "stop": ["<end_of_turn>", "<start_of_turn>", "<start_of_image>", "```", "\nNote:", "\n**Note"],
}


def max_tokens_for(words: int, cap: int = 4096) -> int:
    """Token budget for ``words`` words: about 1.4 tokens a word, plus headroom."""
    return max(16, min(cap, math.ceil(words * 1.6) + 32))


def bridge_messages(left_text: str) -> list[dict[str, str]]:
    """Finish a passage that stops mid-sentence (a broken seam), in a few words."""
    return [
        {"role": "system", "content": "You finish sentences in documents. Write only the words."},
        {
            "role": "user",
            "content": f'The passage ends mid-sentence:\n"…{tail_words(left_text, 60)}"\n\n'
            "Finish that sentence in about 12 words.",
        },
    ]


MEMORY_SYSTEM = (
    "You keep the story memory of a long document and check each new passage against it. "
    "You answer with one JSON object only."
)


def memory_messages(
    passage: str, known: list[tuple[str, str]], *, judge_only: bool = False, error: str | None = None
) -> list[dict[str, str]]:
    """The memory call: a passage's delta (summary, entities with attributes, events, threads
    opened and resolved, facts), every item with a quote of the passage, and the contradictions
    between the passage and the ``known`` ledger entries (ref, line). ``judge_only``: only the
    contradictions (a seam, where the delta is already stored)."""
    known_text = "\n".join(f"[{ref}] {line}" for ref, line in known) or "(nothing yet)"
    contradictions = (
        '"contradictions":[{"category":"characters|facts|timeline|plot|style","known":"<ref>","quote","explanation"}]'
    )
    if judge_only:
        shape = '{"summary":"<a sentence>",' + contradictions + "}"
        what = "Only the contradictions: where the passage contradicts an entry above."
    else:
        shape = (
            '{"summary":"<2-3 sentences>","entities":[{"name","type":"person|place|object|organisation|term|other",'
            '"description","quote","attributes":[{"attribute","value","quote"}]}],"events":[{"what","when","quote"}],'
            '"threads_opened":[{"thread","quote"}],"threads_resolved":[{"thread":"<ref or words>","quote"}],'
            '"facts":[{"fact","quote"}],' + contradictions + "}"
        )
        what = (
            "Entities: who and what it introduces or tells something new about. Facts: what the rest must not "
            "contradict. Contradictions: where it contradicts an entry above."
        )
    user = (
        f"Established so far, each with its ref:\n{known_text}\n\n"
        f'New passage:\n"""\n{passage.strip()}\n"""\n\n'
        f"Answer with one JSON object: {shape}\n{what} Quotes: words copied exactly from the passage. "
        "Empty lists are fine; invent nothing."
    )
    return _json_messages(MEMORY_SYSTEM, user, error)


def repair_messages(paragraph: str, problems: list[tuple[str, str]], words: int) -> list[dict[str, str]]:
    """Rewrite one paragraph so that it no longer contradicts what the document established:
    ``problems`` are (what is wrong, the established sentence it contradicts)."""
    issues = "\n".join(f'- {msg} (established earlier: "{there}")' for msg, there in problems)
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f'This paragraph of the document:\n"""\n{paragraph}\n"""\n\n'
            f"contradicts what the document established earlier:\n{issues}\n\n"
            "Rewrite the paragraph so that it agrees with what was established, changing as little as possible "
            f"and keeping everything else, in about {words} words. Write only the paragraph.",
        },
    ]


def summary_messages(level: str, title: str, pieces: list[str], words: int = 100) -> list[dict[str, str]]:
    """A chapter's or a part's summary, from the summaries of what it is made of."""
    body = "\n".join(f"- {p}" for p in pieces)
    return [
        {"role": "system", "content": "You summarise parts of long documents precisely. Write only the summary."},
        {
            "role": "user",
            "content": f"The {level} '{title}', passage by passage:\n{body}\n\n"
            f"Summarise the whole {level} in one paragraph of at most {words} words: what happens or is argued, "
            "who and what it introduces, what it leaves open.",
        },
    ]
