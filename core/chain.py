"""Verifying an audit log: its hash chain, the job it belongs to, its signed checkpoints (the
Merkle root at each, and the signature, given the operator's public keys), its head, and the
references it holds to long values.

Pure: events go in as the JSON log gives them (from the database or a downloaded file), a
``Verdict`` comes out. ``quire audit verify``, ``GET /v1/jobs/{id}/audit/verify`` and anyone with
a downloaded log and this file (plus ``core.eventformat``, ``core.merkle`` and ``core.checkpoint``)
reach the same verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import checkpoint
from core.eventformat import (
    GENESIS,
    REF_KEY,
    TXT_HEADER,
    TXT_HEADER_V1,
    event_hash,
    is_ref,
    parse_txt_line,
    value_digest,
    written_rows,
)
from core.merkle import Frontier, leaf_entry


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
    legacy_events: int = 0  # events of chain version 1 (written before the job id was hashed in)
    checkpoints: int = 0  # signed checkpoints whose root matched the log
    signatures_checked: bool = False  # whether their signatures were checked against public keys
    signed_by: list[str] = field(default_factory=list)  # the keys that signed them
    covered_seq: int = 0  # the log up to here is under a checkpoint
    root: str | None = None  # the Merkle root (hex) of the whole log


@dataclass
class Reference:
    """The log's last word on a referenced location: the value it should hold now."""

    seq: int
    sha256: str


@dataclass
class ChainVerifier:
    """Feed events in seq order; ``verdict()`` at the end.

    ``job_id``: the job the log must belong to (events of chain version 2 hash it in).
    ``checkpoints``: signed notes of the log (``core.checkpoint``); each must state the Merkle root
    the log has at its size, and, when ``keys`` are given, be signed by one of them.
    ``anchors`` maps a seq to the hash the chain must have there (the head a document recorded).
    Along the way it collects, for every location a ``$ref`` points at, the digest the log says
    that location holds after its last logged write (``references``): the caller compares those
    with the database, where there is one (``check_reference``)."""

    job_id: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    keys: list[checkpoint.VerifierKey] | None = None
    anchors: dict[int, str] = field(default_factory=dict)
    prev: str = GENESIS
    count: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    references: dict[str, Reference] = field(default_factory=dict)
    _written: dict[str, tuple[int, Any]] = field(default_factory=dict)
    anchors_checked: int = 0
    broken: bool = False
    tree: Frontier = field(default_factory=Frontier)
    legacy: int = 0
    _due: dict[int, list[checkpoint.Checkpoint]] = field(default_factory=dict)
    _verified: list[checkpoint.Checkpoint] = field(default_factory=list)
    # After a content break: whether every later event also fails as this job's while linking up
    # (a log hashed for another job), or not (an event altered).
    _suspect: int | None = None
    _links_hold: bool = True
    _any_matches: bool = False
    _last_hash: str | None = None

    def __post_init__(self) -> None:
        for note in self.checkpoints:
            try:
                cp = checkpoint.verify(note, self.keys) if self.keys is not None else checkpoint.parse(note)
            except checkpoint.CheckpointError as exc:
                self.problems.append((_size_of(note), f"checkpoint: {exc}"))
                continue
            if self.job_id is not None and cp.job_id != str(self.job_id):
                self.problems.append(
                    (cp.size, f"the checkpoint at tree size {cp.size} is of {cp.origin}, not of job {self.job_id}: "
                     "a transplanted log")
                )  # fmt: skip
                continue
            self._due.setdefault(cp.size, []).append(cp)

    def feed(self, e: dict[str, Any]) -> None:
        if self.broken:
            return self._diagnose(e)
        expect = self.count + 1
        seq = e.get("seq")
        if seq != expect:
            what = "missing" if isinstance(seq, int) and seq > expect else "out of order or duplicated"
            why = ": an event was dropped" if what == "missing" else ""
            return self._break(expect, f"seq {expect} is {what} (found seq {seq} in its place){why}")
        version = e.get("chain") or 1
        if version >= 2 and self.job_id is not None:
            if e.get("job_id") is not None and str(e["job_id"]) != str(self.job_id):
                return self._break(
                    expect, f"seq {expect} is an event of job {e['job_id']}'s log, not of job {self.job_id}'s: "
                    "a transplanted log"
                )  # fmt: skip
            e = {**e, "job_id": self.job_id}
        try:
            computed = event_hash(self.prev, e)
        except (KeyError, TypeError, ValueError) as exc:
            return self._break(expect, f"event cannot be read: {type(exc).__name__}: {exc}")
        if e.get("prev_hash") != self.prev:
            return self._break(expect, f"prev_hash {e.get('prev_hash')} is not the hash of seq {expect - 1}")
        if e.get("hash") != computed:
            self._suspect, self._last_hash = expect, e.get("hash")
            return self._break(
                expect, f"content does not match its hash (recorded {e.get('hash')}, computed {computed}): "
                "the event was altered"
            )  # fmt: skip
        if expect in self.anchors and self.anchors[expect] != computed:
            self.problems.append((expect, f"a document recorded head {self.anchors[expect]} at seq {expect}"))
        elif expect in self.anchors:
            self.anchors_checked += 1
        self.prev, self.count = computed, expect
        self.legacy += version < 2
        self.tree.append(leaf_entry(computed))
        for cp in self._due.pop(expect, []):
            if cp.root != self.tree.root():
                self.problems.append(
                    (expect, f"the checkpoint at tree size {expect} signs root {cp.root.hex()}, but the log up to "
                     f"seq {expect} has root {self.tree.root().hex()}: the log was rewritten after it was signed")
                )  # fmt: skip
            else:
                self._verified.append(cp)
        if not (e.get("data") or {}).get("rolled_back"):
            self._track(e)

    def _break(self, seq: int, reason: str) -> None:
        self.broken = True
        self.problems.append((seq, reason))

    def _diagnose(self, e: dict[str, Any]) -> None:
        """Past a content break: does each later event link to the one before yet fail as this job's?"""
        if self._suspect is None:
            return
        if e.get("prev_hash") != self._last_hash:
            self._links_hold = False
        self._last_hash = e.get("hash")
        try:
            mine = {**e, "job_id": self.job_id} if self.job_id is not None else e
            self._any_matches |= event_hash(str(e.get("prev_hash")), mine) == e.get("hash")
        except (KeyError, TypeError, ValueError):
            self._links_hold = False

    def _transplanted(self) -> bool:
        return self._suspect == 1 and self._links_hold and not self._any_matches and self.job_id is not None

    def _track(self, e: dict[str, Any]) -> None:
        seq, data = e["seq"], e.get("data") or {}
        for ref in _refs(data):
            if not ref.get("before"):
                self.references[ref[REF_KEY]] = Reference(seq, ref["sha256"])
        # A row written to a referenced location later supersedes what earlier events said.
        for _, table, row_id, new in written_rows(e):
            for col, v in new.items():  # digests are taken at the end, of referenced places only
                self._written[f"{table}.{col}#{row_id}"] = (seq, v)

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
        if self._transplanted():
            problems = [
                (1, f"no event hashes as one of job {self.job_id}'s log, though each links to the one before: "
                 "the log was hashed for another job (a transplanted log)")
            ]  # fmt: skip
        for size in self._due:
            if not self.broken:
                problems.append((self.count + 1, f"a checkpoint signs tree size {size} but the log ends at seq "
                                 f"{self.count}: events were dropped from its end"))  # fmt: skip
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
            legacy_events=self.legacy,
            checkpoints=len(self._verified),
            signatures_checked=self.keys is not None and bool(self._verified),
            signed_by=sorted({k for cp in self._verified for k in cp.key_ids}) if self.keys is not None else [],
            covered_seq=max((cp.size for cp in self._verified), default=0),
            root=self.tree.root().hex(),
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


def _size_of(note: str) -> int:
    try:
        return checkpoint.parse(note).size
    except checkpoint.CheckpointError:
        return 0


@dataclass
class Log:
    """A downloaded log: its events, the head and job it states (JSON), its checkpoints."""

    events: list[dict[str, Any]]
    head_hash: str | None = None
    head_seq: int | None = None
    job_id: str | None = None
    checkpoints: list[str] = field(default_factory=list)


CHECKPOINT_TXT = "checkpoint\t"  # a TXT log's checkpoint lines: the tag, then the note, escaped


def parse_log(text: str) -> Log:
    """A downloaded log: JSON, NDJSON or TXT. ValueError if it is none of them. The head is the one
    a JSON log states; for the others, that of its last line. Checkpoints ride as a JSON log's
    ``checkpoints``, NDJSON lines ``{"checkpoint": note}`` and TXT lines ``checkpoint<TAB>note``."""
    for header in (TXT_HEADER, TXT_HEADER_V1):
        if text.startswith(header):
            log = Log([])
            for line in text.splitlines(keepends=True)[1:]:
                if line.startswith(CHECKPOINT_TXT):
                    log.checkpoints.append(json.loads(line[len(CHECKPOINT_TXT) :]))
                elif line.strip():
                    log.events.append(parse_txt_line(line, header))
            return _with_job(log)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("events"), list):
            notes = [c["note"] for c in doc.get("checkpoints") or [] if isinstance(c, dict) and "note" in c]
            return Log(doc["events"], doc.get("head_hash"), doc.get("head_seq"), doc.get("job_id"), notes)
    try:
        # Lines end at "\n" only: JSON strings may hold U+2028 or U+0085 raw, which splitlines() splits at.
        lines = [json.loads(line) for line in text.split("\n") if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a Quire audit log (JSON, NDJSON or TXT): {exc}") from None
    if not all(isinstance(e, dict) for e in lines):
        raise ValueError("not a Quire audit log: NDJSON lines must be events")
    log = Log(
        [e for e in lines if "checkpoint" not in e], checkpoints=[e["checkpoint"] for e in lines if "checkpoint" in e]
    )
    return _with_job(log)


def _with_job(log: Log) -> Log:
    """The job a log without a header belongs to, as its events say."""
    log.job_id = next((str(e["job_id"]) for e in log.events if e.get("job_id")), None)
    return log


def verify_events(
    events: Iterable[dict[str, Any]],
    head_hash: str | None = None,
    head_seq: int | None = None,
    *,
    job_id: str | None = None,
    checkpoints: Sequence[str] = (),
    keys: list[checkpoint.VerifierKey] | None = None,
) -> Verdict:
    """The chain of a whole log, from seq 1 (no database: references are not checked)."""
    v = ChainVerifier(job_id=job_id, checkpoints=list(checkpoints), keys=keys)
    for e in events:
        v.feed(e)
    return v.verdict(head_seq, head_hash)
