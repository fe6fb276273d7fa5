"""The plan a model proposes, validated: the book's skeleton and each node's children, how a
model's answer is parsed into them, the deterministic plan Quire falls back on at every level when
no answer is usable, and the rule that keeps every heading of a document distinct."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator

MAX_PLANNED_SECTIONS = 24  # nodes one planning call lists: its answer stays a few thousand tokens
_NUMBERED = re.compile(r"^\s*\d+[.)]\s*")
_MARKERS = re.compile(r"^(?:#{1,6}|>)\s+|\s+#+$")  # a heading's or a quote's markers ("# # Title ##")
_EMPHASIS = re.compile(r"^(\*\*|__|\*|_|`)(.+)\1$")


def clean_title(title: str) -> str:
    """``title`` without the Markdown around it: Quire writes a title's heading marker itself, so
    one left in it ("# My allotment year", "**# My allotment year**") shows doubled ("# # ...")
    in the document, on the job page and in the history. "C#" and "#1 hits" keep theirs."""
    t, before = " ".join(title.split()), None
    while t != before:
        before = t
        t = _MARKERS.sub("", t).strip()
        if m := _EMPHASIS.match(t):
            t = m.group(2).strip()
    return t


def _names(v: Any) -> Any:
    """Lenient list of names: "a, b" or [{"name": ..}] or ["a", ..]."""
    if isinstance(v, str):
        return [x.strip() for x in re.split(r"[;,]", v) if x.strip()]
    if isinstance(v, dict):
        return [str(k) for k in v]
    if isinstance(v, list):
        return [str(next(iter(x.values()), "")) if isinstance(x, dict) and x else str(x) for x in v]
    return v


class PlanItem(BaseModel):
    """One node as the model plans it: title, purpose, key points, the entities and terms it
    introduces and those it relies on (its budget comes from the layout, not the model)."""

    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=2000, validation_alias=AliasChoices("summary", "purpose", "synopsis"))
    key_points: list[str] = Field(default_factory=list, max_length=12)
    introduces: list[str] = Field(default_factory=list, max_length=20)
    relies_on: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("title", mode="before")
    @classmethod
    def _clean_title(cls, v: Any) -> Any:
        return clean_title(v) if isinstance(v, str) else v

    @field_validator("introduces", "relies_on", mode="before")
    @classmethod
    def _lenient_names(cls, v: Any) -> Any:
        return _names(v)

    @field_validator("key_points", mode="before")
    @classmethod
    def _lenient_points(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


def _lenient_items(v: Any) -> Any:
    # Small models often answer a list of titles ("1. Introduction") instead of objects.
    if isinstance(v, list):
        return [{"title": _NUMBERED.sub("", s).strip() or s} if isinstance(s, str) else s for s in v]
    return v


class PlanModel(BaseModel):
    """The book's skeleton: title, thesis, style, glossary (terms and cast), and its top level
    (``sections``: the book's sections, chapters or parts, whichever its depth puts first)."""

    title: str = Field(min_length=1, max_length=300)
    thesis: str = Field(default="", max_length=3000)
    sections: list[PlanItem] = Field(
        min_length=1, max_length=MAX_PLANNED_SECTIONS, validation_alias=AliasChoices("sections", "chapters", "parts")
    )
    glossary: dict[str, str] = Field(default_factory=dict)
    style: str = Field(default="clear, well-organised prose", max_length=1000)

    @field_validator("title", mode="before")
    @classmethod
    def _clean_title(cls, v: Any) -> Any:
        return (clean_title(v) or "Untitled") if isinstance(v, str) else v

    @field_validator("sections", mode="before")
    @classmethod
    def _lenient_sections(cls, v: Any) -> Any:
        return _lenient_items(v)

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


class ChildrenPlan(BaseModel):
    """A node's children as the model plans them when the node is about to be written."""

    items: list[PlanItem] = Field(
        min_length=1,
        max_length=MAX_PLANNED_SECTIONS,
        validation_alias=AliasChoices("items", "sections", "chapters", "parts", "children"),
    )

    @field_validator("items", mode="before")
    @classmethod
    def _lenient(cls, v: Any) -> Any:
        return _lenient_items(v)


def _json_object(raw: str) -> Any:
    m = re.search(r"\{.*\}", raw.strip(), re.S)
    if not m:
        raise ValueError("no JSON object in the answer")
    try:
        return json.loads(m.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


def parse_plan(raw: str) -> PlanModel:
    """Validate a model's JSON skeleton; raises ValueError with a readable reason."""
    try:
        return PlanModel.model_validate(_json_object(raw))
    except ValidationError as exc:
        raise ValueError(f"plan does not match the schema: {exc.errors()[:3]}") from None


def parse_children(raw: str, want: int) -> list[PlanItem]:
    """Validate a model's JSON plan of a node's ``want`` children; raises ValueError."""
    try:
        items = ChildrenPlan.model_validate(_json_object(raw)).items
    except ValidationError as exc:
        raise ValueError(f"plan does not match the schema: {exc.errors()[:3]}") from None
    if len(items) < want:
        raise ValueError(f"expected {want} items, found {len(items)}")
    return items[:want]


def parse_titles(raw: str, title: str, want: int) -> list[PlanItem]:
    """Titles from a numbered list (the first item continues the prompt's "1."), for small base
    models. Titles beyond the ones wanted become key points of the last item."""
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
    want = min(want, MAX_PLANNED_SECTIONS)
    if not titles:
        raise ValueError(f"expected a numbered list of {max(3, want)} titles, found none")
    items = [PlanItem(title=t) for t in titles[:want]]
    items[-1].key_points = titles[want:][:12]
    return items


def parse_outline(raw: str, title: str, thesis: str, sections: int) -> PlanModel:
    """A skeleton from a numbered list of top-level titles (small base models)."""
    return PlanModel(title=title, thesis=thesis, sections=parse_titles(raw, title, sections))


_ASPECTS = (
    "Background",
    "Core ideas",
    "How it works",
    "Evidence and examples",
    "Difficulties",
    "Consequences",
    "Practice",
    "Outlook",
)


def topic_of(text: str) -> str:
    words = [w for w in re.findall(r"[\w'-]+", text) if len(w) > 3][:8]
    return " ".join(words[:6]) or "the subject"


def fallback_items(n: int, topic: str) -> list[PlanItem]:
    """``n`` deterministic items about ``topic`` (distinct within the list)."""
    out = []
    for i in range(n):
        aspect = _ASPECTS[i % len(_ASPECTS)]
        round_ = i // len(_ASPECTS)
        title = aspect if round_ == 0 else f"{aspect}, part {round_ + 1}"
        out.append(PlanItem(title=title, summary=f"{aspect} of {topic}."))
    return out


def fallback_plan(brief: str, sections: int, title: str | None = None) -> PlanModel:
    """A deterministic skeleton, used when the model cannot produce a valid plan."""
    return PlanModel(
        title=title or (brief.strip().split("\n")[0][:120] or "Untitled"),
        thesis=brief.strip()[:1000],
        sections=fallback_items(min(sections, MAX_PLANNED_SECTIONS), topic_of(brief)),
        glossary={},
        style="clear, well-organised prose",
    )


def title_of_brief(brief: str) -> str:
    """A brief's first clause makes a title; the whole brief stays the thesis."""
    return clean_title(re.split(r"[:.;\n]", brief.strip(), maxsplit=1)[0][:120]) or "Untitled"


def opening_and_headings(text: str, words: int = 1200) -> tuple[str, list[str]]:
    """An input document's opening words and its markdown headings (what a rewrite is planned from)."""
    toks = text.split()
    opening = " ".join(toks[:words])
    headings = [h.strip("# ").strip() for h in re.findall(r"^#{1,3} .+$", text, re.M)]
    return opening, headings


def heading_key(title: str) -> str:
    """What makes two headings the same: case, punctuation and spacing aside."""
    return " ".join(re.sub(r"[^\w]+", " ", title.lower()).split())


_ROMAN = ("II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")


def distinct_title(title: str, taken: set[str], context: str | None = None) -> str:
    """``title``, or a variant of it no heading in ``taken`` (heading keys) has yet: qualified by
    its ``context`` (the parent's title) first, then numbered. Adds the result to ``taken``."""
    title = clean_title(title)[:200] or "Untitled"
    candidates = [title]
    if context and heading_key(context) not in heading_key(title):
        candidates.append(f"{title}: {' '.join(context.split())}"[:200])
    candidates += [f"{title} {r}" for r in _ROMAN] + [f"{title} {i}" for i in range(11, 10_000)]
    for c in candidates:
        key = heading_key(c)
        if key and key not in taken:
            taken.add(key)
            return c
    raise AssertionError("unreachable: a numbered title is always free")


def passage_briefs(title: str, purpose: str, points: list[str], n: int) -> list[str]:
    """One brief per passage of a section (AgentWrite): its planned points, one each, in order.
    With fewer points than passages, no point is reused as a brief: the passages between two
    points carry the move from one to the next (numbered), those after the last develop it and
    the final one closes the section."""
    pts = [p.strip() for p in points if p and p.strip()]
    if len(pts) >= n:
        return pts[:n]
    topic = title.strip() or "this section"
    if not pts:
        pts = [purpose.strip() or f"what {topic} is about"]
    # The planned points go to passages spread evenly from the first; the rest bridge or close.
    span = n - 1 if len(pts) > 1 else 0
    at = {round(i * span / max(1, len(pts) - 1)): i for i in range(len(pts))}
    out: list[str] = []
    for k in range(n):
        if k in at:
            out.append(pts[at[k]])
            continue
        lo = max(j for j in at if j < k)
        hi = min((j for j in at if j > k), default=None)
        if hi is not None:
            out.append(
                f"Between “{pts[at[lo]]}” and “{pts[at[hi]]}” ({k - lo} of {hi - lo - 1}): "
                "what leads from one to the other"
            )
        elif k == n - 1:
            out.append(f"Close {topic}: what “{pts[at[lo]]}” leads to, and what stays open")
        else:
            out.append(f"Develop “{pts[at[lo]]}” further ({k - lo} of {n - 2 - lo}): evidence, examples, consequences")
    return out
