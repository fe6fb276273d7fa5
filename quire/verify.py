"""``quire audit verify``: check a job's audit log from its database, a downloaded log offline, or
a proof (one event's inclusion, one checkpoint extending another) offline.

``quire audit verify JOB_ID`` recomputes the hash chain from the database (``--url``, else
DATABASE_URL, else the running embedded stack, as ``quire db`` finds it), checks its signed
checkpoints, compares it with the head kept on the job and the heads its documents recorded, and
recomputes the sha256 of the long values the log references. ``quire audit verify --file LOG``
checks a downloaded log (JSON, NDJSON or TXT) with no server at all; ``--proof FILE`` checks a
proof from ``GET /v1/jobs/{id}/audit/proof`` or ``/audit/consistency``. ``--key`` names the
operator's public keys (``quire keys export``): with them, every checkpoint's signature is checked,
and the check fails closed: a log must carry signed checkpoints, a job's end must be under one
signed after it, and so must everything that follows. ``--witness`` names witness keys whose
cosignature the log's last checkpoint must carry. A log that does not reach its job's end (a job
still running, a log cut at a checkpoint) is ``partial``: exit 1 unless ``--partial`` is given.
Exit 0 when intact and whole (every count printed is explained), 1 naming the first bad seq (or
why it is partial), 2 for a bad argument or an unreadable or malformed file, 3 if the database is
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from core import checkpoint, merkle
from core.chain import Verdict, verify_events
from core.eventformat import event_hash
from core.logfile import LogError, check_event, parse_log
from quire.errors import CliError, Exit


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quire audit verify",
        description="Verify a job's audit log (its hash chain, signed checkpoints, head and the values it "
        "references), or a proof of one event or of one checkpoint extending another.",
    )
    p.add_argument("job_id", nargs="?", help="a job id: verify its log in the database")
    p.add_argument("--file", help="a downloaded log (JSON, NDJSON or TXT): verify it offline, no server needed")
    p.add_argument("--proof", help="a proof (GET .../audit/proof or .../audit/consistency, saved): verify it offline")
    p.add_argument(
        "--key",
        help="the operator's public keys (a file of `quire keys export` lines, or one such line): checkpoints "
        "must be signed by one of them (default with JOB_ID: QUIRE_HOME/audit.pub)",
    )
    p.add_argument(
        "--witness",
        action="append",
        help="a witness's public key (`quire witness key`), or a file of them: the log's last checkpoint must "
        "carry its cosignature (repeatable: each is required)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="accept a log that does not reach its job's end (a job still running): exit 0 if it is intact",
    )
    p.add_argument("--job", help="with --file: the job the log must belong to (default: the one it names)")
    p.add_argument(
        "--head",
        help="with --file: the head hash the log must end with (the output's X-Quire-Audit-Head, say)",
    )
    p.add_argument("--url", help="database URL (default DATABASE_URL, else the running `quire up`)")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.job_id, args.file, args.proof)) != 1:
        p.error("give one of: a JOB_ID (from the database), --file LOG (a downloaded log), --proof FILE")
    keys = _keys(args.key, "--key") if args.key else None
    witnesses = [k for given in args.witness or [] for k in _keys(given, "--witness")] or None
    if keys is not None and any(k.alg != checkpoint.ED25519 for k in keys):
        p.error("--key takes the operator's keys (`quire keys export`); a witness's key goes with --witness")
    if witnesses is not None and any(k.alg != checkpoint.COSIGNATURE_V1 for k in witnesses):
        p.error("--witness takes witness keys (`quire witness key`), not the operator's")
    if args.proof is not None:
        if keys is None:
            p.error("--proof needs --key: a proof holds only against the operator's public key")
        print(_proof(args.proof, keys, witnesses))
        return Exit.OK
    if args.file is not None:
        verdict = _from_file(args.file, args.head, args.job, keys, witnesses)
        print(describe(verdict, f"{args.file}:"))
    else:
        if args.head or args.job:
            p.error("--head and --job go with --file (from the database, the job's own head is used)")
        verdict = _from_database(args, keys, witnesses)
        print(describe(verdict, f"job {args.job_id}:", db=True))
    if not verdict.intact:
        return Exit.FAILED
    return Exit.OK if verdict.complete or args.partial else Exit.FAILED


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", Exit.USAGE) from None


def _keys(given: str, flag: str) -> list[checkpoint.VerifierKey]:
    lines = _read(given).splitlines() if Path(given).exists() else [given]
    try:
        keys = checkpoint.parse_keys(lines)
    except checkpoint.CheckpointError as exc:
        raise CliError(f"{flag}: {exc}", Exit.USAGE) from None
    if not keys:
        raise CliError(f"{flag}: no public key in {given}", Exit.USAGE)
    return keys


Keys = list[checkpoint.VerifierKey] | None


def _from_file(path: str, head: str | None, job: str | None, keys: Keys, witnesses: Keys) -> Verdict:
    try:
        log = parse_log(_read(path))
    except LogError as exc:
        raise CliError(f"{path}: malformed: {exc}", Exit.USAGE) from None
    return verify_events(
        log.events,
        head or log.head_hash,
        log.head_seq,
        job_id=job or log.job_id,
        checkpoints=log.checkpoints,
        keys=keys,
        witnesses=witnesses,
        download=True,
    )


def _from_database(args: argparse.Namespace, keys: Keys, witnesses: Keys) -> Verdict:
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from quire.admin import _db_url, _safe
    from quire.witness import witnesses as witnesses_of
    from services.config import load_settings
    from services.logreader import verify

    try:
        job_id = uuid.UUID(args.job_id)
    except ValueError:
        raise CliError(f"not a job id: {args.job_id!r}", Exit.USAGE) from None
    url = _db_url(args)
    settings = load_settings()
    if keys is None:
        keys = settings.audit_public_keys() or None
    ask = witnesses_of(settings)

    async def run() -> Verdict | None:
        db = Database(url)
        try:
            return await verify(db, job_id, keys, witnesses, ask=ask)
        finally:
            for w in ask:
                await w.close()
            await db.dispose()

    try:
        verdict = asyncio.run(run())
    except OperationalError as exc:
        raise CliError(f"cannot connect to {_safe(url)}: {exc.orig or exc}", Exit.UNREACHABLE) from None
    if verdict is None:
        raise CliError(f"no job {job_id} in {_safe(url)}", Exit.USAGE)
    return verdict


def _proof(path: str, keys: list[checkpoint.VerifierKey], witnesses: Keys = None) -> str:
    """What a proof file proves, or CliError (exit 1) naming what fails (exit 2: not a proof)."""
    try:
        doc: dict[str, Any] = json.loads(_read(path))
        kind = doc["type"]
    except (ValueError, KeyError, TypeError, RecursionError):
        what = "not a Quire proof (JSON from .../audit/proof or .../audit/consistency)"
        raise CliError(f"{path}: {what}", Exit.USAGE) from None
    try:
        if kind == "inclusion":
            return _inclusion(doc, keys, witnesses)
        if kind == "consistency":
            return _consistency(doc, keys, witnesses)
    except (checkpoint.CheckpointError, merkle.ProofError) as exc:
        raise CliError(f"{path}: NOT PROVED: {exc}", Exit.FAILED) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{path}: a malformed proof ({type(exc).__name__}: {exc})", Exit.USAGE) from None
    raise CliError(f"{path}: unknown proof type {kind!r:.40}", Exit.USAGE)


def _signed(note: Any, job_id: str, keys: list[checkpoint.VerifierKey], witnesses: Keys) -> checkpoint.Checkpoint:
    if not isinstance(note, str):
        raise TypeError("a checkpoint note is a string")
    try:
        checkpoint.parse(note)
    except checkpoint.CheckpointError as exc:
        raise ValueError(f"not a checkpoint: {exc}") from None
    cp = checkpoint.verify(note, keys)
    if cp.job_id != job_id:
        raise checkpoint.CheckpointError(f"the checkpoint is of {cp.origin}, not of job {job_id}")
    have = checkpoint.cosigned_by(cp, witnesses or [])
    for w in witnesses or []:
        if w.label not in have:
            raise checkpoint.CheckpointError(f"the checkpoint at {cp.size} carries no cosignature of witness {w.label}")
    return cp


def _hashes(v: Any, name: str) -> list[bytes]:
    if not isinstance(v, list) or not all(isinstance(h, str) for h in v):
        raise TypeError(f"{name} is a list of base64 hashes")
    out = [base64.b64decode(h, validate=True) for h in v]
    if any(len(h) != 32 for h in out):
        raise ValueError(f"{name} holds a hash that is not 32 bytes")
    return out


def _inclusion(doc: dict[str, Any], keys: list[checkpoint.VerifierKey], witnesses: Keys) -> str:
    job_id, e = str(doc["job_id"]), check_event(doc["event"], "event")
    cp = _signed(doc["checkpoint"], job_id, keys, witnesses)
    if (e.get("chain") or 1) >= 2 and str(e.get("job_id")) != job_id:
        raise merkle.ProofError(f"the event is of job {e.get('job_id')}, not of job {job_id}")
    computed = event_hash(str(e["prev_hash"]), e)
    if computed != e["hash"]:
        raise merkle.ProofError(f"the event's content does not match its hash (computed {computed})")
    proof = doc["proof"]
    if proof.get("leaf_index") != e["seq"] - 1 or proof.get("tree_size") != cp.size:
        raise merkle.ProofError(
            f"the proof is of leaf {proof.get('leaf_index')!r:.20} in a tree of {proof.get('tree_size')!r:.20}, "
            f"not of seq {e['seq']} in the checkpoint's {cp.size}"
        )
    path = _hashes(proof["inclusion_path"], "inclusion_path")
    merkle.verify_inclusion(merkle.leaf_hash(merkle.leaf_entry(computed)), e["seq"] - 1, cp.size, cp.root, path)
    return (
        f"proved: event {e['seq']} ({e['kind']} {e['action']}) is in job {job_id}'s log, in the tree of its "
        f"first {cp.size} events signed by {', '.join(cp.key_ids)} (RFC 9162 inclusion proof, {len(path)} hashes)"
    )


def _consistency(doc: dict[str, Any], keys: list[checkpoint.VerifierKey], witnesses: Keys) -> str:
    job_id = str(doc["job_id"])
    old, new = _signed(doc["old"], job_id, keys, None), _signed(doc["new"], job_id, keys, witnesses)
    proof = doc["proof"]
    if (proof.get("tree_size_1"), proof.get("tree_size_2")) != (old.size, new.size):
        raise merkle.ProofError("the proof is between other tree sizes than its checkpoints'")
    merkle.verify_consistency(old.size, old.root, new.size, new.root, _hashes(proof["consistency_path"], "path"))
    return (
        f"proved: job {job_id}'s log at {new.size} events extends its log at {old.size} events: nothing in "
        f"the first {old.size} was changed or dropped (both signed by {', '.join(new.key_ids)}; RFC 9162 "
        "consistency proof)"
    )


def _when(ts: int | None) -> str:
    return "" if ts is None else f", signed {dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


def describe(v: Verdict, what: str, db: bool = False) -> str:
    """The verdict in words: each count with what it means and why it is fine (or not)."""
    alarm = f"\n  ALARM: a checkpoint of this log was refused: {v.alarm}" if v.alarm else ""
    if not v.intact:
        return f"{what} BROKEN at seq {v.first_bad_seq}: {v.reason}{alarm}"
    if not v.signatures_checked:
        head = f"{what} hash chain intact, but NOT verified: no --key, so no signature was checked"
    elif v.complete:
        head = f"{what} intact, whole to its job's end (seq {v.end_seq})"
    else:
        head = f"{what} PARTIAL (intact as far as it goes): {v.partial}"
    lines = [
        head,
        f"  {v.events} events: each one's hash recomputed from its content and the hash before it; "
        f"the last is the head {v.head_hash}",
    ]
    if v.legacy_events:
        lines.append(
            f"  {v.legacy_events} of them written before job ids were hashed into events (chain version 1): "
            "they are checked the same way, but only the checkpoints tie them to this job"
        )
    if v.checkpoints:
        who = (
            f"signed by {', '.join(v.signed_by)} (checked with the public keys given)"
            if v.signatures_checked
            else "their signatures NOT checked: pass --key with the operator's public keys (`quire keys export`)"
        )
        lines.append(
            f"  {v.checkpoints} signed checkpoints match the log's Merkle root at their sizes; {who}; "
            f"events 1..{v.covered_seq} are under the last{_when(v.signed_at)}"
        )
        if v.end_seq is not None:
            mark = "; the log ends at the checkpoint signed for its download" if v.download else ""
            lines.append(
                f"  the job ended at seq {v.end_seq}: its end and every event after it are under a checkpoint "
                f"signed after it{mark}"
            )
    else:
        lines.append(
            "  no signed checkpoint: only the hash chain vouches for the log, and whoever holds the database "
            "could rewrite it whole"
        )
    if v.witnesses_checked:
        lines.append(
            f"  the last checkpoint is cosigned by {', '.join(v.witnessed_by)} (checked with the witness keys "
            "given): each saw this tree extend every tree it had seen of this log"
        )
    for witness, answer in v.witness_answers.items():
        said = (
            "holds this very tree (it cosigned the last checkpoint again)"
            if answer == "cosigned"
            else f"did not vouch for it ({answer}): the log is NOT checked against it"
        )
        lines.append(f"  witness {witness} {said}")
    if db:
        lines.append(
            f"  {v.references_checked} long values the log names by reference ($ref) rehashed from the rows "
            "that store them: each matches what the log recorded"
        )
        if v.references_gone:
            lines.append(
                f"  {v.references_gone} referenced rows no longer stored (deleted with their part of the job): "
                "the log keeps their sha256 and first characters, so their content is not checked; that is "
                "fine unless you expected those rows to exist"
            )
        lines.append(
            f"  {v.anchors_checked} document heads (the log's head when each output or partial was saved) "
            "found in the chain: those documents were made from this very log"
        )
    return "\n".join(lines)
