"""Prompts: everything Quire asks a model, for the plan, each chunk and the stitch.

Prompts read as the start of the document to be continued and say the word count they want
("about N words") in the last message: small base models follow that better than instructions,
and real chat models follow it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.plan import MAX_PLANNED_SECTIONS
from core.text import tail_words

SYSTEM = (
    "You are a careful author writing one part of a long document. Write only the document's prose: "
    "no headings, no notes to the reader, no lists of instructions, no commentary about the task."
)


def plan_messages(brief: str, target_words: int, sections: int, error: str | None = None) -> list[dict[str, str]]:
    want = min(sections, MAX_PLANNED_SECTIONS)
    user = (
        f"Plan a document of at least {target_words} words on this brief:\n\n{brief.strip()}\n\n"
        f"Answer with one JSON object with keys: title (string), thesis (string), sections (a list of exactly "
        f"{want} sections objects, each with title, summary and key_points, a list of strings), glossary "
        f"(an object mapping key terms to one-line definitions) and style (string)."
    )
    return _json_messages("You plan documents. You answer with JSON only.", user, error)


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


def outline_messages(title: str, lead: str, sections: int, error: str | None = None) -> list[dict[str, str]]:
    """The plan for small base models: a numbered list of parts to continue, not JSON.

    JSON mode is slow with grammar-constrained sampling and small models rarely fill a schema;
    "This document has N parts: 1." is what they continue naturally (a "Contents" heading pulls
    them into code documentation). The result is still validated.
    """
    want = max(3, min(sections, MAX_PLANNED_SECTIONS))
    return [{"role": "user", "content": f"# {title}\n\n{lead.strip()}\n\nThis document has {want} parts:\n\n1."}]


def rewrite_plan_messages(
    opening: str, headings: list[str], target_words: int, input_words: int, error: str | None = None
) -> list[dict[str, str]]:
    mode = "condensed" if target_words < input_words else "expanded"
    user = (
        f"Here is the opening of a {input_words}-word document that will be rewritten and {mode} to "
        f"at least {target_words} words.\n\n{opening}\n\n"
        + (f"Its headings: {'; '.join(headings[:40])}\n\n" if headings else "")
        + "Answer with one JSON object with keys: title, thesis (one paragraph on what the document argues), "
        "sections (a list of objects with title, summary, key_points), glossary (key terms to one-line "
        "definitions) and style (how it is written)."
    )
    return _json_messages("You analyse documents. You answer with JSON only.", user, error)


def outline_line(plan: dict[str, Any], current: int) -> str:
    parts = []
    for i, s in enumerate(plan.get("sections", [])):
        mark = " <- this section" if i == current else ""
        parts.append(f"{i + 1}. {s.get('title', '')}{mark}")
    if len(parts) > 30:  # compress: the neighbourhood of the current section only
        lo = max(0, current - 5)
        parts = parts[lo : current + 6]
    return "\n".join(parts)


@dataclass
class ChunkContext:
    """What a chunk is written from: compressed skeleton, section plan, coherence state, tail."""

    plan: dict[str, Any]
    section_index: int
    section_title: str
    section_summary: str
    key_points: list[str]
    state_summary: str
    glossary: dict[str, str]
    open_threads: list[str]
    brief: str
    source_text: str | None
    previous_tail: str


def chunk_messages(ctx: ChunkContext, *, style: str, words: int, current_text: str = "") -> list[dict[str, str]]:
    """Messages for writing (``current_text`` empty) or extending a chunk.

    ``instruct`` suits chat models: the context as labelled notes, then the ask. ``document``
    suits small base models, which echo labelled notes back: the prompt is the document itself
    (title, the running summary as its opening, key terms, the section heading, the text so
    far) followed by a one-line request in brackets.
    """
    if style == "document":
        return _document_messages(ctx, words, current_text)
    return _instruct_messages(ctx, words, current_text)


def _instruct_messages(ctx: ChunkContext, words: int, current_text: str) -> list[dict[str, str]]:
    plan = ctx.plan
    gl = "; ".join(f"{k}: {v}" for k, v in list(ctx.glossary.items())[:20])
    notes = [
        f"Document: {plan.get('title', '')}",
        f"Thesis: {plan.get('thesis', '')}" if plan.get("thesis") else "",
        f"Style: {plan.get('style', '')}" if plan.get("style") else "",
        f"Outline:\n{outline_line(plan, ctx.section_index)}",
        f"Current section: {ctx.section_title}. {ctx.section_summary}",
        ("Key points: " + "; ".join(ctx.key_points[:8])) if ctx.key_points else "",
        f"Summary of what is written so far: {ctx.state_summary}" if ctx.state_summary else "",
        f"Glossary (use these terms consistently): {gl}" if gl else "",
        ("Open threads to pick up: " + "; ".join(ctx.open_threads[:6])) if ctx.open_threads else "",
        f"This passage: {ctx.brief}" if ctx.brief else "",
    ]
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(n for n in notes if n)}]
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
    msgs.append({"role": "user", "content": ask})
    return msgs


def _document_messages(ctx: ChunkContext, words: int, current_text: str) -> list[dict[str, str]]:
    plan = ctx.plan
    parts = [f"# {plan.get('title', '')}"]
    opening = " ".join((ctx.state_summary or plan.get("thesis", "")).split()[:80])
    if opening:
        parts.append(opening)
    terms = [t for t in list(ctx.glossary)[:8]]
    if terms:
        parts.append("Key terms: " + ", ".join(terms) + ".")
    parts.append(f"## {ctx.section_title}")
    if ctx.source_text and not current_text:
        body = ctx.previous_tail
        ask = (
            f"(Rewrite this source passage for the section above in your own words, about {words} words: "
            f"{ctx.source_text})"
        )
    elif current_text:
        body = tail_words(current_text, 250)
        ask = f"(Continue this text from where it stops, with about {words} more words.)"
    else:
        body = ctx.previous_tail
        ask = f"(Continue this text from where it stops, with about {words} words.)"
    if body:
        parts.append(body)
    return [{"role": "user", "content": "\n\n".join(parts) + "\n\n" + ask}]


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


def plan_max_tokens(sections: int, style: str) -> int:
    """Room for a plan's answer: a numbered list of titles, or a JSON object with summaries."""
    n = min(sections, MAX_PLANNED_SECTIONS)
    return 40 + 24 * n if style == "document" else min(4096, 300 + 120 * n)
