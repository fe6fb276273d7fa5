"""``quire audit verify``: check a job's audit log from its database, a downloaded log offline, or
a proof (one event's inclusion, one checkpoint extending another) offline.

``quire audit verify JOB_ID`` recomputes the hash chain from the database (``--url``, else
DATABASE_URL, else the running embedded stack, as ``quire db`` finds it), checks its signed
checkpoints, compares it with the head kept on the job and the heads its documents recorded, and
recomputes the sha256 of the long values the log references. ``quire audit verify --file LOG``
checks a downloaded log (JSON, NDJSON or TXT) with no server at all; ``--proof FILE`` checks a
proof from ``GET /v1/jobs/{id}/audit/proof`` or ``/audit/consistency``. ``--key`` names the
operator's public keys (``quire keys export``): with them, every checkpoint's signature is checked.
Exit 0 when intact (every count printed is explained), 1 naming the first bad seq otherwise, 2 for
a bad argument or an unreadable file, 3 if the database is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from core import checkpoint, merkle
from core.chain import Verdict, parse_log, verify_events
from core.eventformat import event_hash
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
    keys = _keys(args.key) if args.key else None
    if args.proof is not None:
        if keys is None:
            p.error("--proof needs --key: a proof holds only against the operator's public key")
        print(_proof(args.proof, keys))
        return Exit.OK
    if args.file is not None:
        verdict = _from_file(args.file, args.head, args.job, keys)
        print(describe(verdict, f"{args.file}:"))
    else:
        if args.head or args.job:
            p.error("--head and --job go with --file (from the database, the job's own head is used)")
        verdict = _from_database(args, keys)
        print(describe(verdict, f"job {args.job_id}:", db=True))
    return Exit.OK if verdict.intact else Exit.FAILED


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", Exit.USAGE) from None


def _keys(given: str) -> list[checkpoint.VerifierKey]:
    lines = _read(given).splitlines() if Path(given).exists() else [given]
    try:
        keys = checkpoint.parse_keys(lines)
    except checkpoint.CheckpointError as exc:
        raise CliError(f"--key: {exc}", Exit.USAGE) from None
    if not keys:
        raise CliError(f"--key: no public key in {given}", Exit.USAGE)
    return keys


def _from_file(path: str, head: str | None, job: str | None, keys: list[checkpoint.VerifierKey] | None) -> Verdict:
    try:
        log = parse_log(_read(path))
    except ValueError as exc:
        raise CliError(f"{path}: {exc}", Exit.USAGE) from None
    return verify_events(
        log.events,
        head or log.head_hash,
        log.head_seq,
        job_id=job or log.job_id,
        checkpoints=log.checkpoints,
        keys=keys,
    )


def _from_database(args: argparse.Namespace, keys: list[checkpoint.VerifierKey] | None) -> Verdict:
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from quire.admin import _db_url, _safe
    from services.config import load_settings
    from services.logreader import verify

    try:
        job_id = uuid.UUID(args.job_id)
    except ValueError:
        raise CliError(f"not a job id: {args.job_id!r}", Exit.USAGE) from None
    url = _db_url(args)
    if keys is None:
        keys = load_settings().audit_public_keys() or None

    async def run() -> Verdict | None:
        db = Database(url)
        try:
            return await verify(db, job_id, keys)
        finally:
            await db.dispose()

    try:
        verdict = asyncio.run(run())
    except OperationalError as exc:
        raise CliError(f"cannot connect to {_safe(url)}: {exc.orig or exc}", Exit.UNREACHABLE) from None
    if verdict is None:
        raise CliError(f"no job {job_id} in {_safe(url)}", Exit.USAGE)
    return verdict


def _proof(path: str, keys: list[checkpoint.VerifierKey]) -> str:
    """What a proof file proves, or CliError (exit 1) naming what fails."""
    try:
        doc: dict[str, Any] = json.loads(_read(path))
        kind = doc["type"]
    except (ValueError, KeyError, TypeError):
        what = "not a Quire proof (JSON from .../audit/proof or .../audit/consistency)"
        raise CliError(f"{path}: {what}", Exit.USAGE) from None
    try:
        if kind == "inclusion":
            return _inclusion(doc, keys)
        if kind == "consistency":
            return _consistency(doc, keys)
    except (checkpoint.CheckpointError, merkle.ProofError) as exc:
        raise CliError(f"{path}: NOT PROVED: {exc}", Exit.FAILED) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{path}: a malformed proof ({type(exc).__name__}: {exc})", Exit.USAGE) from None
    raise CliError(f"{path}: unknown proof type {kind!r}", Exit.USAGE)


def _signed(note: str, job_id: str, keys: list[checkpoint.VerifierKey]) -> checkpoint.Checkpoint:
    cp = checkpoint.verify(note, keys)
    if cp.job_id != job_id:
        raise checkpoint.CheckpointError(f"the checkpoint is of {cp.origin}, not of job {job_id}")
    return cp


def _inclusion(doc: dict[str, Any], keys: list[checkpoint.VerifierKey]) -> str:
    job_id, e = str(doc["job_id"]), dict(doc["event"])
    cp = _signed(doc["checkpoint"], job_id, keys)
    if (e.get("chain") or 1) >= 2 and str(e.get("job_id")) != job_id:
        raise merkle.ProofError(f"the event is of job {e.get('job_id')}, not of job {job_id}")
    computed = event_hash(str(e["prev_hash"]), e)
    if computed != e["hash"]:
        raise merkle.ProofError(f"the event's content does not match its hash (computed {computed})")
    merkle.verify_inclusion(merkle.leaf_entry(computed), int(e["seq"]), cp.size, cp.root, doc["proof"])
    return (
        f"proved: event {e['seq']} ({e['kind']} {e['action']}) is in job {job_id}'s log, in the tree of its "
        f"first {cp.size} events signed by {', '.join(cp.key_ids)}"
    )


def _consistency(doc: dict[str, Any], keys: list[checkpoint.VerifierKey]) -> str:
    job_id = str(doc["job_id"])
    old, new = _signed(doc["old"], job_id, keys), _signed(doc["new"], job_id, keys)
    merkle.verify_consistency(old.size, old.root, new.size, new.root, doc["proof"])
    return (
        f"proved: job {job_id}'s log at {new.size} events extends its log at {old.size} events: nothing in "
        f"the first {old.size} was changed or dropped (both signed by {', '.join(new.key_ids)})"
    )


def describe(v: Verdict, what: str, db: bool = False) -> str:
    """The verdict in words: each count with what it means and why it is fine (or not)."""
    if not v.intact:
        return f"{what} BROKEN at seq {v.first_bad_seq}: {v.reason}"
    lines = [
        f"{what} intact",
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
            f"events 1..{v.covered_seq} are under a checkpoint"
        )
        if v.covered_seq < v.events:
            lines.append(
                f"  events {v.covered_seq + 1}..{v.events} come after the last checkpoint: chained, not yet "
                "signed (a checkpoint is signed when a step ends; fine for a job still running)"
            )
    else:
        lines.append(
            "  no signed checkpoint: only the hash chain vouches for the log, and whoever holds the database "
            "could rewrite it whole; compare the head with one kept elsewhere (--head)"
        )
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
