"""``quire audit verify``: check a job's audit log from its database, or a downloaded log offline.

``quire audit verify JOB_ID`` recomputes the hash chain from the database (``--url``, else
DATABASE_URL, else the running embedded stack, as ``quire db`` finds it), compares it with the head
kept on the job and the heads its documents recorded, and recomputes the sha256 of the long values
the log references. ``quire audit verify --file LOG`` checks a downloaded log (JSON, NDJSON or TXT)
with no server at all. Exit 0 when intact (the event count and head are printed), 1 naming the
first bad seq otherwise, 2 for a bad argument or an unreadable file, 3 if the database is
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from core.chain import Verdict, parse_log, verify_events
from quire.errors import CliError, Exit


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quire audit verify",
        description="Verify a job's audit log: its hash chain, its head and the values it references.",
    )
    p.add_argument("job_id", nargs="?", help="a job id: verify its log in the database")
    p.add_argument("--file", help="a downloaded log (JSON, NDJSON or TXT): verify it offline, no server needed")
    p.add_argument(
        "--head",
        help="with --file: the head hash the log must end with (the output's X-Quire-Audit-Head, say)",
    )
    p.add_argument("--url", help="database URL (default DATABASE_URL, else the running `quire up`)")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.job_id is None) == (args.file is None):
        p.error("give a JOB_ID (verify from the database) or --file LOG (verify a downloaded log), not both")
    if args.file is not None:
        verdict = _from_file(args.file, args.head)
        print(_describe(verdict, f"{args.file}:"))
    else:
        if args.head:
            p.error("--head goes with --file (from the database, the job's own head is used)")
        verdict = _from_database(args)
        print(_describe(verdict, f"job {args.job_id}:", db=True))
    return Exit.OK if verdict.intact else Exit.FAILED


def _from_file(path: str, head: str | None) -> Verdict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", Exit.USAGE) from None
    try:
        events, file_head, file_seq = parse_log(text)
    except ValueError as exc:
        raise CliError(f"{path}: {exc}", Exit.USAGE) from None
    return verify_events(events, head or file_head, file_seq)


def _from_database(args: argparse.Namespace) -> Verdict:
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from quire.admin import _db_url, _safe
    from services.auditlog import verify

    try:
        job_id = uuid.UUID(args.job_id)
    except ValueError:
        raise CliError(f"not a job id: {args.job_id!r}", Exit.USAGE) from None
    url = _db_url(args)

    async def run() -> Verdict | None:
        db = Database(url)
        try:
            return await verify(db, job_id)
        finally:
            await db.dispose()

    try:
        verdict = asyncio.run(run())
    except OperationalError as exc:
        raise CliError(f"cannot connect to {_safe(url)}: {exc.orig or exc}", Exit.UNREACHABLE) from None
    if verdict is None:
        raise CliError(f"no job {job_id} in {_safe(url)}", Exit.USAGE)
    return verdict


def _describe(v: Verdict, what: str, db: bool = False) -> str:
    if not v.intact:
        return f"{what} BROKEN at seq {v.first_bad_seq}: {v.reason}"
    line = f"{what} intact: {v.events} events, head {v.head_hash}"
    if db:
        line += (
            f"\nreferences: {v.references_checked} long values rechecked"
            + (f", {v.references_gone} no longer stored" if v.references_gone else "")
            + f"; document heads found in the chain: {v.anchors_checked}"
        )
    return line
