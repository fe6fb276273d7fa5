"""Verifying an audit log: its hash chain, the job it belongs to, its signed checkpoints (the
Merkle root at each, and the signature, given the operator's public keys), its head, and the
references it holds to long values.

Pure: events go in as the JSON log gives them (from the database or a downloaded file), a
``Verdict`` comes out. ``quire audit verify``, ``GET /v1/jobs/{id}/audit/verify`` and anyone with
a downloaded log and this file (plus ``core.eventformat``, ``core.merkle`` and ``core.checkpoint``)
reach the same verdict.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import checkpoint
from core.eventformat import GENESIS, REF_KEY, event_hash, is_ref, value_digest, written_rows
from core.merkle import Frontier, leaf_entry
from core.spec import TERMINAL_STATUSES


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
    complete: bool = False  # it reaches its job's end: its last checkpoint, covering it all, says so
    partial: str | None = None  # intact but not complete: why (a job still running, a log cut at a checkpoint)
    end_seq: int | None = None  # the job's terminal event, as the last checkpoint names it
    download: bool = False  # it ends at the checkpoint signed for its download
    signed_at: int | None = None  # when its last checkpoint was signed (POSIX seconds)
    witnesses_checked: bool = False  # whether its last checkpoint's cosignatures were required
    witnessed_by: list[str] = field(default_factory=list)  # witnesses whose cosignature on it verified
    witness_answers: dict[str, str] = field(default_factory=dict)  # from the database: each witness asked, its answer
    alarm: str | None = None  # from the database: why a checkpoint of the log was refused


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
    ``witnesses``: witness keys (tlog-cosignature) whose cosignature the last checkpoint must carry.
    ``download``: the log is a download, which ends at the checkpoint signed for it; without that
    mark, a log whose last checkpoint was signed after its job ended may have been cut there.
    ``anchors`` maps a seq to the hash the chain must have there (the head a document recorded).
    Along the way it collects, for every location a ``$ref`` points at, the digest the log says
    that location holds after its last logged write (``references``): the caller compares those
    with the database, where there is one (``check_reference``)."""

    job_id: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    keys: list[checkpoint.VerifierKey] | None = None
    witnesses: list[checkpoint.VerifierKey] | None = None
    download: bool = False
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
    _ends: set[int] = field(default_factory=set)  # seqs of events that end the job (succeeded, failed, cancelled)

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
        if not isinstance(version, int) or version not in (1, 2):
            return self._break(expect, f"seq {expect} has chain version {version!r:.20}, not 1 or 2")
        if version >= 2 and self.job_id is not None:
            if e.get("job_id") is not None and str(e["job_id"]) != str(self.job_id):
                return self._break(
                    expect, f"seq {expect} is an event of job {e['job_id']}'s log, not of job {self.job_id}'s: "
                    "a transplanted log"
                )  # fmt: skip
            e = {**e, "job_id": self.job_id}
        try:
            computed = event_hash(self.prev, e)
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
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
        if e.get("kind") == "job" and e.get("action") in TERMINAL_STATUSES:
            self._ends.add(expect)
        self.tree.append(leaf_entry(computed))
        for cp in self._due.pop(expect, []):
            if cp.root != self.tree.root():
                self.problems.append(
                    (expect, f"the checkpoint at tree size {expect} signs root {cp.root.hex()}, but the log up to "
                     f"seq {expect} has root {self.tree.root().hex()}: the log was rewritten after it was signed")
                )  # fmt: skip
            else:
                self._verified.append(cp)
        if isinstance(e.get("data"), dict) and not e["data"].get("rolled_back"):
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
        except (KeyError, TypeError, ValueError, RecursionError):
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
        last = max(self._verified, key=lambda cp: cp.size) if self._verified else None
        unsure = None  # without keys nothing is signed as far as this knows: where it ends is only said
        if not self.broken:
            ends = self._checked_end(last)
            if self.keys is None and ends:
                unsure = min(ends)[1]
            else:
                problems += ends
        bad = min(problems) if problems else None
        v = Verdict(
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
            signed_by=self._signers(),
            covered_seq=last.size if last is not None else 0,
            root=self.tree.root().hex(),
            end_seq=last.end if last is not None else None,
            download=last is not None and last.download,
            signed_at=last.time if last is not None else None,
            witnesses_checked=bool(self.witnesses),
        )
        if last is not None and self.witnesses:
            try:
                v.witnessed_by = sorted(checkpoint.cosigned_by(last, self.witnesses))
            except checkpoint.CheckpointError:
                v.witnessed_by = []
        if v.intact:
            v.partial = unsure or self._partial(last)
            v.complete = v.partial is None
        return v

    def _signers(self) -> list[str]:
        """The operator's keys (of those given) that signed the checkpoints verified."""
        mine = {(k.name, k.key_id) for k in self.keys or [] if k.alg == checkpoint.ED25519}
        return sorted({f"{n}+{kid:08x}" for cp in self._verified for n, kid, _ in cp.signatures if (n, kid) in mine})

    def _checked_end(self, last: checkpoint.Checkpoint | None) -> list[tuple[int, str]]:
        """What fails about where the log ends and what vouches for it (the verifier fails closed:
        with keys, a log must be signed; a job's end must be signed after; so must all that follows)."""
        out: list[tuple[int, str]] = []
        if last is None:
            if self.keys is not None and not self.checkpoints:
                out.append((1, "no signed checkpoint: the log was stripped of its checkpoints (or written without "
                            "the operator's key); only its hash chain would vouch for it, and whoever holds the "
                            "database can rewrite a chain whole"))  # fmt: skip
            return out
        sizes = {cp.size for cp in self._verified}
        for cp in self._verified:
            if cp.prev and cp.prev not in sizes:
                out.append((cp.prev, f"the checkpoint at {cp.size} names the one before it at {cp.prev}, which the "
                            "log does not carry: checkpoints were removed"))  # fmt: skip
        unsigned_end = [s for s in self._ends if s > last.size]
        if unsigned_end:
            out.append((unsigned_end[0], f"event {unsigned_end[0]} ends the job, and a job's end is always signed, "
                        "but no checkpoint after it is in the log: its checkpoints were removed"))  # fmt: skip
        if last.end is not None:
            if last.end not in self._ends:
                out.append((last.end, f"the checkpoint at {last.size} says the job ended at seq {last.end}, which "
                            "is no event ending a job"))  # fmt: skip
            elif last.size < self.count:
                out.append((last.size + 1, f"events {last.size + 1}..{self.count} follow the checkpoint at "
                            f"{last.size}, signed after the job ended (seq {last.end}); every write after a job's "
                            "end is signed, so they were added or their checkpoint was removed"))  # fmt: skip
        if self.witnesses:
            try:
                have = checkpoint.cosigned_by(last, self.witnesses)
            except checkpoint.CheckpointError as exc:
                return [*out, (last.size, f"the checkpoint at {last.size}: {exc}")]
            for w in self.witnesses:
                if w.label not in have:
                    out.append((last.size, f"the checkpoint at {last.size} (the log's last) carries no cosignature "
                                f"of witness {w.label}: no witness vouches that it extends what it saw"))  # fmt: skip
        return out

    def _partial(self, last: checkpoint.Checkpoint | None) -> str | None:
        """Why an intact log is not known to be whole, or None."""
        if last is None:
            return "no checkpoint says where the log ends (its signatures were not checked: no key given)"
        when = f", signed {_when(last.time)}" if last.time is not None else ""
        after = (
            f"; events {last.size + 1}..{self.count} after it are chained, not yet signed"
            if last.size < self.count
            else ""
        )
        if last.end is None:
            return (
                f"the log does not reach its job's end: its last checkpoint (at {last.size}{when}) was signed while "
                f"the job ran{after}"
            )
        if self.download and not last.download:
            return (
                f"the log ends at the checkpoint at {last.size}{when}, after its job's end, but not at a download's: "
                "it may have been cut there (a download made with download=1 ends at its own)"
            )
        return None


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def verify_events(
    events: Iterable[dict[str, Any]],
    head_hash: str | None = None,
    head_seq: int | None = None,
    *,
    job_id: str | None = None,
    checkpoints: Sequence[str] = (),
    keys: list[checkpoint.VerifierKey] | None = None,
    witnesses: list[checkpoint.VerifierKey] | None = None,
    download: bool = False,
) -> Verdict:
    """The chain of a whole log, from seq 1 (no database: references are not checked)."""
    v = ChainVerifier(job_id=job_id, checkpoints=list(checkpoints), keys=keys, witnesses=witnesses, download=download)
    for e in events:
        v.feed(e)
    return v.verdict(head_seq, head_hash)
