"""A seam's verdict, decided from what its checks found: ``flagged`` (a major finding stays open),
``unchecked`` (a check could not answer: a judge invalid twice, a memory the extractor made; the
reason said), ``repaired`` (what was found was repaired, on the evidence of ``core.repair``) or
``validated`` (the checks ran and found nothing). With strict continuity a flagged or unchecked
seam fails the job (``broken``). Pure: ``activities/seam_check.py`` stores it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RULES = ["name_variant", "near_miss", "attribute", "thread", "timeline"]


@dataclass
class Fate:
    """What became of one finding at the seam."""

    status: str  # "open" | "repaired"
    severity: str
    repair_version: int | None = None


@dataclass
class SeamVerdict:
    status: str
    open_major: int
    repaired: int
    repair_version: int | None
    unchecked_reason: str | None
    broken: str | None  # strict continuity: why the job fails here

    @property
    def validated(self) -> bool:
        return self.status in ("validated", "repaired")


def decide(fates: Sequence[Fate], unchecked: Sequence[str], *, strict: bool, title: str) -> SeamVerdict:
    """The seam's status from its findings' fates and the reasons its checks could not answer."""
    open_major = sum(1 for f in fates if f.status == "open" and f.severity == "major")
    repaired = [f.repair_version for f in fates if f.status == "repaired" and f.repair_version is not None]
    reasons = "; ".join(dict.fromkeys(r for r in unchecked if r))
    status = "flagged" if open_major else "unchecked" if reasons else "repaired" if repaired else "validated"
    broken = None
    if strict and status == "flagged":
        broken = (
            f"the seam before '{title}' has {open_major} continuity finding(s) that could not be repaired "
            "(see the coherence report)"
        )
    elif strict and status == "unchecked":
        broken = f"the seam before '{title}' could not be checked: {reasons} (strict continuity counts it as flagged)"
    return SeamVerdict(
        status,
        open_major,
        len(repaired),
        repaired[-1] if status == "repaired" else None,
        reasons if status == "unchecked" else None,
        broken,
    )


def checks(
    verdict: SeamVerdict,
    *,
    mode: str,
    at_seam: int,
    judged: int,
    findings: int,
    unchecked: Sequence[str],
    locked: int,
    edit_id: int | None,
) -> dict[str, Any]:
    """The seam row's record of what ran and what it found."""
    return {
        "rules": RULES + (["repeated_opening", "judge"] if mode == "handoff" else []),
        "ran": "at the seam" if at_seam else "when its first chunk was accepted",
        "chunks": at_seam or 1,
        **({"edit": edit_id} if edit_id is not None else {}),
        "judged": judged,
        "findings": findings,
        "repaired": verdict.repaired,
        "open": verdict.open_major,
        **({"unchecked": list(dict.fromkeys(r for r in unchecked if r))} if any(unchecked) else {}),
        **({"locked_chunks": locked} if locked else {}),
    }
