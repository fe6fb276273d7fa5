"""The plan a model proposes, validated: its shape, how a model's answer is parsed into it, and
the deterministic skeleton Quire falls back on when no answer is usable."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

MAX_PLANNED_SECTIONS = 24


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


def parse_plan(raw: str) -> PlanModel:
    """Validate a model's JSON plan; raises ValueError with a readable reason."""
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


def title_of_brief(brief: str) -> str:
    """A brief's first clause makes a title; the whole brief stays the thesis."""
    return re.split(r"[:.;\n]", brief.strip(), maxsplit=1)[0][:120].strip() or "Untitled"


def opening_and_headings(text: str, words: int = 1200) -> tuple[str, list[str]]:
    """An input document's opening words and its markdown headings (what a rewrite is planned from)."""
    toks = text.split()
    opening = " ".join(toks[:words])
    headings = [h.strip("# ").strip() for h in re.findall(r"^#{1,3} .+$", text, re.M)]
    return opening, headings
