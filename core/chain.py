"""Verifying an audit log: its hash chain, its head, and the references it holds to long values.

Pure: events go in as the JSON log gives them (from the database or a downloaded file), a
``Verdict`` comes out. ``quire audit verify``, ``GET /v1/jobs/{id}/audit/verify`` and anyone with
a downloaded log and this file (plus ``core.audit``) reach the same verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.audit import GENESIS, REF_KEY, TXT_HEADER, event_hash, is_ref, parse_txt_line, value_digest


@dataclass
class Verdict:
    intact: bool
    events: int  # events verified (seq 1..events)
    head_seq: int
    head_hash: str  # the hash of the last event verified (GENESIS for an empty log)
    first_bad_seq: int | None = None
    reason: str | None = None
    references_checked: int = 0
    references_gone: int = 0  # referenced rows that no longer exist (their job part was deleted)
    anchors_checked: int = 0  # heads recorded elsewhere (documents) found in the chain


@dataclass
class Reference:
    """The log's last word on a referenced location: the value it should hold now."""

    seq: int
    sha256: str


@dataclass
class ChainVerifier:
    """Feed events in seq order; ``verdict()`` at the end.

    ``anchors`` maps a seq to the hash the chain must have there (the head a document recorded).
    Along the way it collects, for every location a ``$ref`` points at, the digest the log says
    that location holds after its last logged write (``references``): the caller compares those
    with the database, where there is one (``check_reference``)."""

    anchors: dict[int, str] = field(default_factory=dict)
    prev: str = GENESIS
    count: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    references: dict[str, Reference] = field(default_factory=dict)
    _written: dict[str, tuple[int, Any]] = field(default_factory=dict)
    anchors_checked: int = 0
    broken: bool = False

    def feed(self, e: dict[str, Any]) -> None:
        if self.broken:
            return  # past the first break nothing after it can be trusted to line up
        expect = self.count + 1
        seq = e.get("seq")
        if seq != expect:
            what = "missing" if isinstance(seq, int) and seq > expect else "out of order or duplicated"
            return self._break(expect, f"seq {expect} is {what} (found seq {seq} in its place)")
        try:
            computed = event_hash(self.prev, e)
        except (KeyError, TypeError, ValueError) as exc:
            return self._break(expect, f"event cannot be read: {type(exc).__name__}: {exc}")
        if e.get("prev_hash") != self.prev:
            return self._break(expect, f"prev_hash {e.get('prev_hash')} is not the hash of seq {expect - 1}")
        if e.get("hash") != computed:
            return self._break(
                expect, f"content does not match its hash (recorded {e.get('hash')}, computed {computed})"
            )
        if expect in self.anchors and self.anchors[expect] != computed:
            self.problems.append((expect, f"a document recorded head {self.anchors[expect]} at seq {expect}"))
        elif expect in self.anchors:
            self.anchors_checked += 1
        self.prev, self.count = computed, expect
        if not (e.get("data") or {}).get("rolled_back"):
            self._track(e)

    def _break(self, seq: int, reason: str) -> None:
        self.broken = True
        self.problems.append((seq, reason))

    def _track(self, e: dict[str, Any]) -> None:
        seq, data = e["seq"], e.get("data") or {}
        for ref in _refs(data):
            if not ref.get("before"):
                self.references[ref[REF_KEY]] = Reference(seq, ref["sha256"])
        # A row event that writes a referenced location later supersedes what earlier events said.
        if e["kind"] == "row" and e.get("table_name") and e.get("row_id") is not None:
            values = data.get("values") if e["action"] == "insert" else None
            changes = data.get("changes") if e["action"] == "update" else None
            new = values or {k: c.get("new") for k, c in (changes or {}).items() if isinstance(c, dict)}
            for col, v in new.items():  # digests are taken at the end, of referenced places only
                self._written[f"{e['table_name']}.{col}#{e['row_id']}"] = (seq, v)

    def references_to_check(self) -> dict[str, Reference]:
        """Each referenced location and what it should hold now (its last logged write wins)."""
        out = {}
        for loc, ref in self.references.items():
            seq, v = self._written.get(loc, (0, None))
            digest = (v["sha256"] if is_ref(v) else _digest_or_none(v)) if seq > ref.seq else None
            out[loc] = Reference(seq, digest) if digest is not None else ref
        return out

    def verdict(self, head_seq: int | None = None, head_hash: str | None = None) -> Verdict:
        """The verdict, given the head the log claims (the job row's, or a file's)."""
        problems = list(self.problems)
        if not self.broken and head_seq is not None and head_seq != self.count:
            if head_seq > self.count:
                problems.append((self.count + 1, f"the head is seq {head_seq} but the log ends at seq {self.count}"))
            else:
                problems.append((head_seq + 1, f"the log goes on past its head (seq {head_seq})"))
        elif not self.broken and head_hash is not None and head_hash != self.prev:
            problems.append((self.count, f"the head hash is {head_hash}; the chain computes {self.prev}"))
        bad = min(problems) if problems else None
        return Verdict(
            intact=bad is None,
            events=self.count,
            head_seq=self.count,
            head_hash=self.prev,
            first_bad_seq=bad[0] if bad else None,
            reason=bad[1] if bad else None,
            anchors_checked=self.anchors_checked,
        )


def check_reference(loc: str, ref: Reference, current: Any, exists: bool) -> tuple[int, str] | None:
    """A problem if the value stored at ``loc`` now is not the one the log references."""
    if not exists:
        return None
    got = value_digest(current)
    if got != ref.sha256:
        return ref.seq, f"{loc} holds a value with sha256 {got}; the log recorded {ref.sha256}"
    return None


def _refs(v: Any) -> Iterator[dict[str, Any]]:
    if is_ref(v):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _refs(x)
    elif isinstance(v, list):
        for x in v:
            yield from _refs(x)


def _digest_or_none(v: Any) -> str | None:
    try:
        return value_digest(v)
    except (TypeError, ValueError):
        return None


def parse_log(text: str) -> tuple[list[dict[str, Any]], str | None, int | None]:
    """(events, head hash, head seq) of a downloaded log: JSON, NDJSON or TXT. ValueError if it is
    none of them. The head is the one a JSON log states; for the others, that of its last line."""
    if text.startswith(TXT_HEADER):
        events = [parse_txt_line(line) for line in text.splitlines(keepends=True)[1:] if line.strip()]
        return events, None, None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("events"), list):
            return doc["events"], doc.get("head_hash"), doc.get("head_seq")
    try:
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a Quire audit log (JSON, NDJSON or TXT): {exc}") from None
    if not all(isinstance(e, dict) for e in events):
        raise ValueError("not a Quire audit log: NDJSON lines must be events")
    return events, None, None


def verify_events(
    events: Iterable[dict[str, Any]], head_hash: str | None = None, head_seq: int | None = None
) -> Verdict:
    """The chain of a whole log, from seq 1 (no database: references are not checked)."""
    v = ChainVerifier()
    for e in events:
        v.feed(e)
    return v.verdict(head_seq, head_hash)
