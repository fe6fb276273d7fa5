"""``quire doctor``: the reconciler's check, run once, here (``services.reconcile``): every place
where Postgres and Temporal disagree (a job or an edit that says it runs while its workflow has
closed or never started, a plan review its workflow never applied, a workflow open for a job that
ended or is gone), printed with what settles it; then settled, unless ``--dry-run``.

Exit codes: 0 nothing disagrees, or everything found was settled; 1 something disagrees
(``--dry-run``) or could not be settled; 3 Temporal or the database did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from quire.errors import CliError, Exit
from services.config import load_settings


def register(sub: Any) -> None:
    d = sub.add_parser(
        "doctor",
        help="find where Postgres and Temporal disagree (stuck jobs, edits, reviews; stray workflows) and settle it",
        description="Runs the reconciler's check once: prints each disagreement and what settles it, then "
        "settles it (README: Nothing stuck). With --dry-run, only prints.",
    )
    d.add_argument(
        "--dry-run", action="store_true", help="print what disagrees and what would settle it; change nothing"
    )
    d.add_argument("--url", help="database URL (default DATABASE_URL, else the running stack's)")
    d.set_defaults(fn=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from quire.admin import _db_url, temporal_address
    from services import auditkeys
    from services.reconcile import Reconciler, starts_of
    from services.temporal import connect

    settings = load_settings()
    url = _db_url(args)
    address = temporal_address(settings)

    # The operator's key, where this machine has it (as the API's and the workers'); none is made here.
    has_key = settings.quire_audit_key is not None or (settings.home / auditkeys.KEY_FILE).exists()
    signer = settings.audit_signer() if has_key and not args.dry_run else None

    async def run() -> Any:
        db = Database(url, secrets=settings.secrets(), signer=signer)
        try:
            client = await connect(address, settings.temporal_namespace, db, settings.temporal_keys())
            reconciler = Reconciler(db, client, starts_of(settings), grace_s=settings.quire_reconcile_grace_s)
            return await reconciler.run(by="doctor", dry_run=args.dry_run)
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except (OperationalError, OSError, RuntimeError) as exc:
        raise CliError(f"cannot check: {type(exc).__name__}: {exc}", Exit.UNREACHABLE) from None
    c = report.checked
    if c:
        print(
            f"checked {c['jobs']} job(s) queued or running, {c['edits']} edit(s) running, "
            f"{c['reviews']} plan review(s) waiting, {c['workflows']} open workflow(s)"
        )
    for f in report.findings:
        print(f.line().replace("[found]", "[dry run: not settled]" if args.dry_run else "[found]"))
    for u in report.unchecked:
        print(f"could not check: {u}")
    if signer is None and not args.dry_run and any(f.outcome == "settled" for f in report.findings):
        print(
            "no audit key here (QUIRE_AUDIT_KEY, QUIRE_HOME/audit.key): the events written are in each log's chain, "
            "under no signed checkpoint until a process with the key next writes that log"
        )
    if not report.findings and not report.unchecked:
        print("nothing disagrees: every row that says it runs has its workflow, and every open workflow its row")
    if report.unchecked and not report.checked:
        return Exit.UNREACHABLE
    if args.dry_run:
        return Exit.FAILED if report.findings or report.unchecked else Exit.OK
    failed = [f for f in report.findings if f.outcome.startswith("failed")]
    return Exit.FAILED if failed or report.unchecked else Exit.OK
