"""What makes a continuity finding ``repaired``: evidence in the text, not a rewrite's say-so.

A finding is repaired by a new version only when (1) the statement it quoted no longer stands in
that version (normalised comparison: the quote, or each piece of it around an ellipsis, is no
longer words of the text) and (2) a check that really ran on that version finds it no more: the
rule that found it (the text rules run on any text), or, for what the memory's rules and the judge
find, a valid model answer about the new version (the judge shown the entry again). A re-check
by the extractor, one that leaves the detail out while the statement still stands, or a rewrite
that changed other words, repairs nothing: the finding stays ``open`` with what was tried. The
memory's word alone never makes a repair: a statement that still stands is open whatever the
re-check says. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.continuity import Finding, needs_repair
from core.memory import ChunkMemory, norm

TEXT_RULES = frozenset({"rule:name_variant", "rule:near_miss", "rule:repeated_opening"})
MEMORY_SUBTYPES = frozenset({"attribute_changed", "judged"})  # findings about a stated value


@dataclass
class Recheck:
    """A version checked again: its findings, and what that check could see."""

    text: str
    findings: list[Finding]
    by_model: bool  # its memory is a valid model answer: the memory's rules and the judge ran on it
    judged: set[int] = field(default_factory=set)  # ledger entries a judge that answered was shown with it
    why_not: str = ""  # not by the model: why (the fallback's reason)


def stands(quote: str, text: str, *, exact: bool = False) -> bool:
    """Whether the statement ``quote`` is still words of ``text`` (normalised; around an ellipsis,
    each piece; ``exact``: letter case counts, as for a name's spelling). A finding without a
    quote cannot be shown gone: it stands."""
    form = (lambda t: " ".join(t.split())) if exact else norm
    pieces = [form(p) for p in re.split(r"\.\.\.|…", quote) if form(p)]
    if not pieces:
        return True
    t = form(text)
    return all(p in t for p in pieces)


def same_problem(f: Finding, g: Finding) -> bool:
    """Two findings of one problem across versions: the same ledger entry (the quote changes with
    the text), or, without an entry, the same kind."""
    return g.entry_id == f.entry_id if f.entry_id is not None else g.subtype == f.subtype


def why_open(f: Finding, after: Recheck) -> str:
    """Why ``f`` is not repaired by the version ``after`` checked; "" when it is."""
    if stands(f.quote, after.text, exact=f.subtype == "name_variant"):
        return "the statement it quotes still stands in the rewritten text"
    if f.detector not in TEXT_RULES:
        if not after.by_model:
            return f"the re-check could not run ({after.why_not or 'no valid model answer'})"
        if f.detector == "judge" and f.entry_id not in after.judged:
            return "the judge that checked the rewrite was not shown the entry"
    if any(same_problem(f, g) for g in after.findings):
        return "the re-check still finds it"
    return ""


def next_round(findings: Iterable[Finding], after: Recheck) -> list[Finding]:
    """The findings a further rewrite should take on: those at the repair severity still open."""
    return [f for f in needs_repair(findings) if why_open(f, after)]


def settle(findings: list[Finding], after: Recheck | None, rounds: int) -> set[int]:
    """The indexes of ``findings`` repaired by ``after`` (the last version made and checked); the
    others at the repair severity get ``tried`` (how many rewrites, why not repaired)."""
    fixed: set[int] = set()
    for i, f in enumerate(findings):
        why = why_open(f, after) if after is not None else "not rewritten"
        if not why and needs_repair([f]):
            fixed.add(i)
        elif rounds and f.severity == "major":
            f.tried = f"{rounds} rewrite(s); not repaired: {why}"
    return fixed


def established_only(memory: ChunkMemory, still_open: Iterable[Finding]) -> ChunkMemory:
    """A passage's delta without the values that contradict what was established and stay open:
    the ledger keeps the established value (later passages are told and checked against it), the
    contradiction stays a finding."""
    quotes = {norm(f.quote) for f in still_open if f.subtype in MEMORY_SUBTYPES}
    if not quotes:
        return memory
    mem = memory.model_copy(deep=True)
    for e in mem.entities:
        e.attributes = [a for a in e.attributes if norm(a.quote) not in quotes]
    return mem
