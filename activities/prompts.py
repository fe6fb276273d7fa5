"""Prompts and the plan: what Quire asks the model, and the skeleton it falls back on.

Prompts read as the start of the document to be continued and say the word count they want
("about N words") in the last message: small base models follow that better than instructions,
and real chat models follow it too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from activities.text import tail_words

MAX_PLANNED_SECTIONS = 24
SYSTEM = (
    "You are a careful author writing one part of a long document. Write only the document's prose: "
    "no headings, no notes to the reader, no lists of instructions, no commentary about the task."
)


class PlanSection(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=2000)
    key_points: list[str] = Field(default_factory=list, max_length=12)


class PlanModel(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    thesis: str = Field(default="", max_length=3000)
    sections: list[PlanSection] = Field(min_length=1, max_length=MAX_PLANNED_SECTIONS)
    glossary: dict[str, str] = Field(default_factory=dict)
    style: str = Field(default="clear, well-organised prose", max_length=1000)

    @field_validator("sections", mode="before")
    @classmethod
    def _lenient_sections(cls, v: Any) -> Any:
        # Small models often answer a list of titles ("1. Introduction") instead of objects.
        if isinstance(v, list):
            return [{"title": re.sub(r"^\s*\d+[.)]\s*", "", s).strip() or s} if isinstance(s, str) else s for s in v]
        return v

    @field_validator("glossary", mode="before")
    @classmethod
    def _lenient_glossary(cls, v: Any) -> Any:
        if isinstance(v, list):  # ["term: definition", ...] or [{"term": .., "definition": ..}]
            out: dict[str, str] = {}
            for item in v:
                if isinstance(item, str):
                    k, _, d = item.partition(":")
                    out[k.strip()] = d.strip()
                elif isinstance(item, dict) and len(item) >= 1:
                    vals = [str(x) for x in item.values()]
                    out[vals[0]] = vals[1] if len(vals) > 1 else ""
            return out
        if isinstance(v, dict):
            return {str(k): str(d) for k, d in v.items()}
        return v

    @field_validator("glossary")
    @classmethod
    def _small_glossary(cls, v: dict[str, str]) -> dict[str, str]:
        return dict(list(v.items())[:40])


def planned_section_count(target_words: int, chunk_words: int) -> int:
    """Sections of about four chunks each, at least one."""
    return max(1, math.ceil(target_words / (chunk_words * 4)))


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


def parse_plan(raw: str) -> PlanModel:
    """Validate a model's plan; raises ValueError with a readable reason."""
    text = raw.strip()
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    try:
        return PlanModel.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"plan does not match the schema: {exc.errors()[:3]}") from None


def fallback_plan(brief: str, sections: int, title: str | None = None) -> PlanModel:
    """A deterministic skeleton, used when the model cannot produce a valid plan."""
    words = [w for w in re.findall(r"[\w'-]+", brief) if len(w) > 3][:8]
    topic = " ".join(words[:6]) or "the subject"
    aspects = [
        "Background",
        "Core ideas",
        "How it works",
        "Evidence and examples",
        "Difficulties",
        "Consequences",
        "Practice",
        "Outlook",
    ]
    secs = []
    for i in range(min(sections, MAX_PLANNED_SECTIONS)):
        aspect = aspects[i % len(aspects)]
        secs.append(
            PlanSection(
                title=f"{aspect}" + (f" ({i // len(aspects) + 1})" if i >= len(aspects) else ""),
                summary=f"{aspect} of {topic}.",
                key_points=[],
            )
        )
    return PlanModel(
        title=title or (brief.strip().split("\n")[0][:120] or "Untitled"),
        thesis=brief.strip()[:1000],
        sections=secs,
        glossary={},
        style="clear, well-organised prose",
    )


def outline_messages(title: str, lead: str, sections: int, error: str | None = None) -> list[dict[str, str]]:
    """The plan for small base models: a numbered list of parts to continue, not JSON.

    JSON mode is slow with grammar-constrained sampling and small models rarely fill a schema;
    "This document has N parts: 1." is what they continue naturally (a "Contents" heading pulls
    them into code documentation). The result is still validated.
    """
    want = max(3, min(sections, MAX_PLANNED_SECTIONS))
    return [{"role": "user", "content": f"# {title}\n\n{lead.strip()}\n\nThis document has {want} parts:\n\n1."}]


def parse_outline(raw: str, title: str, thesis: str, sections: int) -> PlanModel:
    """Section titles from a numbered list (the first item continues the prompt's "1.").

    Titles beyond the sections wanted become key points of the last section's chunks.
    """
    titles: list[str] = []
    started = False
    for line in ("1. " + raw.lstrip()).splitlines():
        m = re.match(r"^\s*(?:\d{1,2}[.)]\s*)+(.+?)\s*$", line)
        if not m:
            if started and not line.strip():
                continue
            if started:
                break  # prose after the list
            continue
        started = True
        t = re.sub(r"[*_#`]+", "", m.group(1)).strip(" :.-")
        t = t[:1].upper() + t[1:]
        echo = t.lower().startswith(title.lower()[:30]) or title.lower().startswith(t.lower())
        latin = bool(re.search(r"[A-Za-z]{3}", t)) or not re.search(r"[A-Za-z]{3}", title)
        if 2 <= len(t) <= 80 and latin and not echo and t.lower() not in {x.lower() for x in titles}:
            titles.append(t)
    want = min(sections, MAX_PLANNED_SECTIONS)
    if not titles:
        raise ValueError(f"expected a numbered list of {max(3, want)} part titles, found none")
    secs = [PlanSection(title=t) for t in titles[:want]]
    secs[-1].key_points = titles[want:][:12]
    return PlanModel(title=title, thesis=thesis, sections=secs)


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


def opening_and_headings(text: str, words: int = 1200) -> tuple[str, list[str]]:
    toks = text.split()
    opening = " ".join(toks[:words])
    headings = [h.strip("# ").strip() for h in re.findall(r"^#{1,3} .+$", text, re.M)]
    return opening, headings
