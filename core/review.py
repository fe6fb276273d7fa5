"""Plan review: an outline (a job's top-level nodes) as its author approves it, as is or edited
(titles, summaries, key points, word budgets, order, nodes added or removed), the rules an edited
outline must keep, and what changed from one version to the next (the audit log's diff).

Pure: the API checks a review with these rules before anything is stored (a 422 naming each
problem), the job's workflow checks its numbers again in the Update's validator, and the plan step
applies an approved version (``activities.review``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from core.plan import heading_key
from core.spec import MAX_TARGET_WORDS

MAX_NODES = 60  # top-level nodes of a reviewed outline
MIN_BUDGET = 50  # a node's words: below this a chapter is a sentence
FIELDS = ("title", "summary", "key_points", "budget_words")


def _integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


# A whole number as JSON writes it: 300 or 300.0 (both integers in JSON Schema), never "300" or true.
WholeNumber = Annotated[int, BeforeValidator(_integral), Field(strict=True)]


class OutlineItem(BaseModel):
    """One top-level node of the outline, in the order wanted: ``node`` is the id of a node of
    the plan (kept, perhaps edited), or null for a node to add."""

    model_config = ConfigDict(extra="forbid")
    node: WholeNumber | None = Field(
        default=None, ge=1, le=2**62, description="an existing top-level node; null: a new one"
    )
    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=2000, description="what it covers: the writer's brief")
    key_points: list[str] = Field(default_factory=list, max_length=12)
    budget_words: WholeNumber = Field(ge=MIN_BUDGET, le=MAX_TARGET_WORDS)


class PlanReview(BaseModel):
    """Approve the plan as it is (no ``items``), or as edited: the whole outline, in order."""

    model_config = ConfigDict(extra="forbid")
    items: list[OutlineItem] | None = Field(
        default=None, min_length=1, max_length=MAX_NODES, description="the outline as it should be; omit to approve"
    )


def problems(items: list[OutlineItem], current: list[dict[str, Any]], target: int, max_words: int) -> list[dict]:
    """What makes an edited outline unusable, as 422 entries (``loc``, ``msg``, ``type``): nodes that
    are not top-level nodes of this plan or appear twice, titles that are not distinct, budgets
    that do not reach the target or pass the job's maximum."""
    out: list[dict[str, Any]] = []
    known = {c["node"] for c in current}
    seen: dict[int, int] = {}
    titles: dict[str, int] = {}
    for i, it in enumerate(items):
        loc: list[str | int] = ["body", "items", i]
        if it.node is not None:
            if it.node not in known:
                out.append(_p([*loc, "node"], f"node {it.node} is not a top-level node of this plan", "node"))
            elif it.node in seen:
                out.append(_p([*loc, "node"], f"node {it.node} is listed twice (also item {seen[it.node]})", "node"))
            seen.setdefault(it.node, i)
        key = heading_key(it.title)
        if not key:
            out.append(_p([*loc, "title"], "title has no letters or digits", "title"))
        elif key in titles:
            out.append(_p([*loc, "title"], f"title {it.title!r} is the same heading as item {titles[key]}'s", "title"))
        titles.setdefault(key, i)
        for j, point in enumerate(it.key_points):
            if not point.strip() or len(point) > 300:
                out.append(_p([*loc, "key_points", j], "a key point is 1 to 300 characters", "key_point"))
    total = sum(it.budget_words for it in items)
    if total < target:
        out.append(
            _p(
                ["body", "items"],
                f"the budgets sum to {total:,} words, less than the job's target of {target:,}: "
                f"add {target - total:,} words to one or more nodes",
                "budget_total",
            )
        )
    elif total > max_words:
        out.append(
            _p(
                ["body", "items"],
                f"the budgets sum to {total:,} words, more than the job's maximum of {max_words:,} "
                "(target x max_overshoot): the document would be cut",
                "budget_total",
            )
        )
    return out


def budgets_problem(budgets: list[int], target: int) -> str | None:
    """The numbers of a review, as the workflow's Update validator checks them (it sees no text)."""
    if not budgets or min(budgets) < 1:
        return "every node needs a budget of at least one word"
    if sum(budgets) < target:
        return f"the budgets sum to {sum(budgets)} words, less than the target of {target}"
    return None


def _p(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def outline_of(items: list[OutlineItem], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outline an edit makes, each item with its level (a new node takes its neighbours')."""
    level = current[0]["level"] if current else "section"
    return [
        {
            "node": it.node,
            "level": level,
            "title": " ".join(it.title.split()),
            "summary": it.summary.strip(),
            "key_points": [p.strip() for p in it.key_points],
            "budget_words": it.budget_words,
        }
        for it in items
    ]


def changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What changed from ``before`` to ``after``, one entry per change: a field of a kept node
    (before -> after), a node moved, removed or added. Empty: approved as is."""
    out: list[dict[str, Any]] = []
    old = {b["node"]: b for b in before}
    kept = [a["node"] for a in after if a.get("node") in old]
    for a in after:
        if a.get("node") not in old:
            out.append({"change": "added", "title": a["title"], "budget_words": a["budget_words"]})
            continue
        b = old[a["node"]]
        for f in FIELDS:
            if b.get(f) != a.get(f):
                out.append({"change": f, "node": a["node"], "before": b.get(f), "after": a.get(f)})
    for node, b in old.items():
        if node not in kept:
            out.append({"change": "removed", "node": node, "title": b["title"], "budget_words": b["budget_words"]})
    order_before = [b["node"] for b in before if b["node"] in kept]
    if order_before != kept:
        out.append({"change": "order", "before": order_before, "after": kept})
    return out
