"""The coherence report: a job's continuity findings counted (per 10,000 words, by category; found,
repaired, open), the ledger's size, who made the memory (the model or the extractor), the seams
by status, what went unchecked (passages and seams, each with its reason), and in words what the
checks could do and which model judged. Pure: ``db/memory.py`` reads the counts,
``services/coherence.py`` adds the evidence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.continuity import BROKEN_SEAM
from core.memory import CATEGORIES, CATEGORY_NAMES

BASE_MODEL = "the model is a base model (prompt style document)"  # why a base model's memory is the extractor's
NAMES_ONLY = "names only: the model gives no structured memory"


@dataclass
class ReportInput:
    words: int
    findings: Sequence[dict[str, Any]]  # rows: category, severity, status, subtype, ...
    ledger_entries: int
    ledger_entities: int
    states_by_source: dict[str, int] = field(default_factory=dict)
    seams: dict[str, int] = field(default_factory=dict)
    unchecked: dict[str, int] = field(default_factory=dict)  # why a passage's memory is the extractor's: count
    seams_unchecked: dict[str, int] = field(default_factory=dict)  # why a seam went unchecked: count
    judges: Sequence[str] = ()  # the models whose memory answers were valid


def checked(r: ReportInput) -> str:
    """What the checks could do, in words: the rules and the judge (named), or names only, and
    what went unchecked and why."""
    total = sum(r.states_by_source.values())
    fallback = r.states_by_source.get("fallback", 0)
    if not total:
        return "nothing checked yet"
    if fallback == total and set(r.unchecked) <= {BASE_MODEL}:
        return (
            f"{NAMES_ONLY} (a base model): the spelling of known names was checked in every passage; "
            "attributes, threads, the timeline and contradictions were not"
        )
    judges = ", ".join(r.judges) or "no model"
    out = f"rules and the judge ({judges}) checked {total - fallback} of {total} passages"
    if fallback:
        why = "; ".join(f"{n}: {k}" for k, n in sorted(r.unchecked.items(), key=lambda kv: -kv[1]))
        out += f"; {fallback} unchecked beyond names ({why})"
    unchecked_seams = sum(r.seams_unchecked.values())
    if unchecked_seams:
        why = "; ".join(f"{n}: {k}" for k, n in sorted(r.seams_unchecked.items(), key=lambda kv: -kv[1]))
        out += f"; {unchecked_seams} seam(s) unchecked ({why})"
    return out


def report(r: ReportInput) -> dict[str, Any]:
    """A job's coherence in numbers: findings per 10,000 words by category, found / repaired /
    open, the ledger's size, the share of states the model wrote vs the fallback, what went
    unchecked (passages and seams, apart), the broken seams the stitch left open (a passage that
    stops mid-sentence: findings too), and in words what was checked and by which model."""
    per10k = 10_000 / r.words if r.words else 0.0
    by_cat = Counter(f["category"] for f in r.findings)
    status = Counter(f["status"] for f in r.findings)
    states = sum(r.states_by_source.values())
    fallback = r.states_by_source.get("fallback", 0)
    return {
        "words": r.words,
        "findings": len(r.findings),
        "found": len(r.findings),
        "repaired": status.get("repaired", 0),
        "open": status.get("open", 0),
        "per_10k_words": round(len(r.findings) * per10k, 3),
        "open_per_10k_words": round(status.get("open", 0) * per10k, 3),
        "by_category": {
            c: {
                "name": CATEGORY_NAMES[c],
                "found": by_cat.get(c, 0),
                "per_10k_words": round(by_cat.get(c, 0) * per10k, 3),
                "open": sum(1 for f in r.findings if f["category"] == c and f["status"] != "repaired"),
            }
            for c in CATEGORIES
        },
        "ledger": {"entries": r.ledger_entries, "entities": r.ledger_entities},
        "states": {
            "total": states,
            "model": r.states_by_source.get("model", 0),
            "fallback": fallback,
            "fallback_share": round(fallback / states, 3) if states else 0.0,
        },
        "seams": dict(r.seams),
        "unchecked": {
            "chunks": fallback,
            "seams": sum(r.seams_unchecked.values()),
            "chunk_reasons": dict(r.unchecked),
            "seam_reasons": dict(r.seams_unchecked),
        },
        "judged_by": list(r.judges),
        "checked": checked(r),
        "broken_seams": sum(1 for f in r.findings if f.get("subtype") == BROKEN_SEAM and f["status"] == "open"),
    }


def summary_line(rep: dict[str, Any]) -> str:
    """The report in one line (the CLI, the final audit event's message)."""
    n, broken = rep["found"], rep.get("broken_seams", 0)
    return (
        f"{n} continuity finding{'' if n == 1 else 's'} ({rep['per_10k_words']} per 10,000 words): "
        f"{rep['repaired']} repaired, {rep['open']} open"
        + (f" ({broken} broken seam{'' if broken == 1 else 's'}: text that stops mid-sentence)" if broken else "")
        + f"; ledger {rep['ledger']['entries']} entries; checked: {rep['checked']}"
    )


def brief(rep: dict[str, Any]) -> dict[str, Any]:
    """The report's counts in a few fields: what the final audit event and the webhook carry."""
    return {
        "found": rep["found"],
        "repaired": rep["repaired"],
        "open": rep["open"],
        "per_10k_words": rep["per_10k_words"],
        "fallback_share": rep["states"]["fallback_share"],
        "ledger_entries": rep["ledger"]["entries"],
        "seams": rep["seams"],
        "unchecked": {"chunks": rep["unchecked"]["chunks"], "seams": rep["unchecked"]["seams"]},
        "broken_seams": rep["broken_seams"],
        "judged_by": rep["judged_by"],
        "checked": rep["checked"],
        "summary": summary_line(rep),
    }
