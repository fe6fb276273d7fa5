"""Commands that run on this machine: start and stop the embedded stack (``up``, ``down``), the
main job (``demo``), the schema (``db sql|check|upgrade``) and accounts (``user add|key|keys|revoke``)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from quire.errors import CliError, Exit
from services.config import Settings, load_settings

DEMO_BRIEF = (
    "A practical guide to keeping honey bees in a small garden: choosing a hive, the bees' year, "
    "inspections, swarms, and the first honey harvest."
)


# --- stack ---------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from quire import stack, supervisor

    settings = load_settings()
    if getattr(args, "supervise", False):
        # The background half of --detach. Its stdout is supervisor.log: never print the key there.
        return _run_stack(settings, lambda state, _key: _print_urls(state, None))
    pid = supervisor.running_pid(settings.home)
    if pid is not None:
        raise CliError(f"already running (pid {pid}); `quire down` stops it")
    try:
        stack.Stack(settings).check_ports()  # fail fast, before starting or forking anything
    except stack.StackError as exc:
        raise CliError(str(exc)) from None
    if args.detach:
        return _up_detached(settings)

    def announce(state: dict[str, Any], key: str | None) -> None:
        _print_urls(state, key)
        print("Ctrl-C stops everything.", flush=True)

    return _run_stack(settings, announce)


def _run_stack(settings: Settings, announce: Callable[[dict[str, Any], str | None], None]) -> int:
    from quire import stack, supervisor

    try:
        return supervisor.run(settings, announce)
    except stack.StackError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback; the logs have the rest
        where = settings.home / "logs"
        raise CliError(f"the stack did not start: {type(exc).__name__}: {exc} (logs: {where})") from None


def _up_detached(settings: Settings) -> int:
    """Start the supervisor in its own session and return once it reports the stack healthy."""
    from quire import stack
    from quire.privacy import make_home

    home = settings.home
    make_home(home)  # before supervisor.log is opened: private from its first byte
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state_file = home / "stack.json"
    state_file.unlink(missing_ok=True)  # a stale one would look like success
    sup_log = logs / "supervisor.log"
    offset = sup_log.stat().st_size if sup_log.exists() else 0
    print(f"starting the stack in the background (logs in {logs})", file=sys.stderr, flush=True)
    with open(sup_log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quire.cli", "up", "--supervise"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this terminal; Ctrl-C here does not reach it
        )
    # Every part has its own timeout; this outer one only guards against a supervisor that hangs.
    deadline = time.monotonic() + sum(stack.TIMEOUTS.values()) + 120
    try:
        while not state_file.exists():
            if proc.poll() is not None:
                with open(sup_log, "rb") as f:
                    f.seek(offset)
                    tail = f.read().decode(errors="replace").strip().splitlines()[-12:]
                raise CliError("the stack did not start:\n" + "\n".join(tail) + f"\n(full log: {sup_log})")
            if time.monotonic() > deadline:
                _stop_supervisor(proc)
                raise CliError(f"the stack was not healthy in time; stopped it (see {sup_log})")
            time.sleep(0.2)  # polling another process's progress file, with a deadline
    except KeyboardInterrupt:
        _stop_supervisor(proc)
        raise CliError("interrupted; stopped what had started", 130) from None
    state = json.loads(state_file.read_text())
    key_file = Path(state["key_file"])
    key = key_file.read_text().strip() if state.get("new_key") and key_file.exists() else None
    _print_urls(state, key)
    print("`quire down` stops it.", flush=True)
    return Exit.OK


def _stop_supervisor(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the supervisor stops its children on SIGTERM
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        from quire.supervisor import down

        down(load_settings().home)


def _print_urls(state: dict[str, Any], key: str | None) -> None:
    """What the user needs next. The key appears only when new, and only on a terminal's stdout."""
    print(f"Quire API        {state['api_url']}")
    print(f"API docs         {state['docs_url']}")
    print(f"Web pages        {state['api_url']}/")
    if state.get("temporal_ui_url"):
        print(f"Temporal UI      {state['temporal_ui_url']}")
    if state.get("codec_url"):
        token = Path(state["key_file"]).with_name("operator.token")
        print(f"Codec server     {state['codec_url']} (operator token: QUIRE_OPERATOR_TOKEN, else {token})")
    if state.get("metrics_url"):
        print(f"Metrics          {state['metrics_url']}")
    if state.get("worker_metrics_url"):
        print(f"Worker metrics   {state['worker_metrics_url']}")
    if state.get("llm_url"):
        print(f"Local model      {state['llm_url']}")
    print(f"Logs             {state['logs']}")
    if key is not None:
        print(f"Local user key   {key}")
        print(f"                 (new: shown once; kept in {state['key_file']}, mode 0600)", flush=True)
    else:
        print(f"Local user key   in {state['key_file']}", flush=True)


def cmd_stack_status(args: argparse.Namespace) -> int:
    """`quire status` without a job: each part of the local stack, as its supervisor recorded it.
    Exit 0 when the stack runs with every part up, 1 otherwise."""
    from quire.stack import Stack
    from quire.supervisor import stack_status

    settings = load_settings()
    st = stack_status(settings.home, Stack(settings).parts())
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        if st["running"]:
            sup = f"supervisor pid {st['supervisor_pid']}, up {_age(st['uptime_s'])}"
            print(f"stack running ({sup}) in {settings.home}")
        else:
            print(f"stack not running in {settings.home} (`quire up` starts it)")
        print(f"{'part':<10} {'state':<11} {'pid':>7}  {'uptime':>9}  {'restarts':>8}  last exit")
        for name, p in st["parts"].items():
            last = p.get("last_exit")
            when = f"{last['how']}, {_age(time.time() - last['at'])} ago" if last else "-"
            print(
                f"{name:<10} {p['state']:<11} {p.get('pid') or '-':>7}  {_age(p.get('uptime_s')):>9}  "
                f"{p.get('restarts', 0):>8}  {when}"
            )
    up = st["running"] and all(p["state"] == "running" for p in st["parts"].values())
    return Exit.OK if up else Exit.FAILED


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_down(args: argparse.Namespace) -> int:
    from quire.supervisor import down

    home = load_settings().home
    print("stopped" if down(home) else "not running")
    return Exit.OK


# --- db and users ----------------------------------------------------------------------------


def _db_url(args: argparse.Namespace) -> str:
    """--url, else DATABASE_URL, else the embedded database of a running `quire up`."""
    url = getattr(args, "url", None)
    if url:
        return str(url)
    settings = load_settings()
    if settings.database_url:
        return settings.database_url
    from quire.pg import embedded_database_url

    url = embedded_database_url(settings.home)
    if url:
        return url
    raise CliError(
        f"no database: set DATABASE_URL, pass --url, or start the stack (`quire up`; QUIRE_HOME is {settings.home})",
        Exit.USAGE,
    )


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: say nothing of it
        return "the database"


def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from db import (
        manuscript,  # noqa: F401 - its tables are part of the metadata
        schema,
    )
    from db.models import Base

    if args.db_cmd == "sql":
        sys.stdout.write(schema.offline_sql())  # connects nowhere
        return Exit.OK
    url = _db_url(args)
    if args.db_cmd == "restored":
        return _restored(url, resume=not args.no_resume)
    try:
        if args.db_cmd == "upgrade":
            schema.upgrade(url)
            print(f"database at revision {schema.head_revision()}")
            return Exit.OK
        diffs = schema.check(url)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise CliError(f"cannot connect to {_safe(url)}: {reason}", Exit.UNREACHABLE) from None
    if not diffs:
        print(f"schema matches Quire {schema.head_revision()}: nothing missing or different")
        return Exit.OK
    # Table by table; within a table, the table's own line first, then column by column.
    for d in sorted(diffs, key=lambda d: (d.table, d.column or "")):
        print(d)
    missing = {d.table for d in diffs if d.column is None and d.problem.startswith("table is missing")}
    if missing >= set(Base.metadata.tables):
        print(
            f"none of Quire's {len(Base.metadata.tables)} tables exist here; `quire db upgrade` creates them",
            file=sys.stderr,
        )
    else:
        tables = len({d.table for d in diffs})
        print(
            f"{len(diffs)} difference(s) in {tables} table(s) or object(s); "
            "`quire db upgrade` applies Quire's migrations",
            file=sys.stderr,
        )
    return Exit.FAILED


def temporal_address(settings: Settings) -> str:
    """TEMPORAL_ADDRESS, else the running embedded stack's Temporal."""
    address = settings.temporal_address
    state = settings.home / "stack.json"
    if address is None and state.exists():
        address = json.loads(state.read_text()).get("temporal_address")
    if address is None:
        raise CliError("no Temporal: set TEMPORAL_ADDRESS, or start the stack (`quire up`)", Exit.USAGE)
    return str(address)


def _restored(url: str, *, resume: bool) -> int:
    """`quire db restored`: after Postgres was restored from a backup, with the workers stopped."""
    from db.session import Database
    from services import jobs
    from services.restore import after_restore
    from services.temporal import connect

    settings = load_settings()
    address = temporal_address(settings)

    async def run() -> Any:
        from quire.witness import witnesses

        # The jobs it ends are signed like any job's end, and go to the witnesses: one that saw a
        # log past the backup refuses it (an alarm: the events after the backup are lost).
        db = Database(url, secrets=settings.secrets(), signer=settings.audit_signer(), witnesses=witnesses(settings))
        try:
            client = await connect(address, settings.temporal_namespace, db, settings.temporal_keys())
            return await after_restore(
                db, client, task_queue=settings.temporal_task_queue, durability=jobs.durability(settings), resume=resume
            )
        finally:
            await db.dispose()

    done = asyncio.run(run())
    print(f"{len(done.terminated)} run(s) ended in Temporal; {len(done.resumed)} job(s) resumed from the backup")
    for job_id in done.resumed:
        print(f"  resumed {job_id}")
    return Exit.OK


@dataclass(frozen=True)
class QuotaValue:
    n: int | None  # None: no limit


UNSET = None  # an option not given: that quota stays as it is


def quota_value(v: str) -> QuotaValue:
    """A quota on the command line: a whole number >= 0, or 'none' for no limit."""
    if v.strip().lower() in ("none", "unlimited"):
        return QuotaValue(None)
    if not v.strip().isascii() or not v.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, or 'none' (no limit), not {v!r}")
    return QuotaValue(int(v.strip()))


def cmd_user(args: argparse.Namespace) -> int:
    """``user add NAME`` (a new user and its key), ``user key NAME`` (another key), ``user keys NAME``
    (prefix, created, revoked), ``user revoke NAME`` (every key of the user, at once), ``user quota
    NAME [--tokens-per-day N] [--concurrent-jobs N] [--words-per-month N]`` (show, or set; 'none' clears)."""
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from services import accounts

    url = _db_url(args)

    async def run() -> Any:
        db = Database(url)
        try:
            if args.user_cmd == "add":
                return (await accounts.create_user(db, args.name)).api_key
            if args.user_cmd == "key":
                return await accounts.add_key_for(db, args.name)
            if args.user_cmd == "keys":
                return await accounts.list_keys(db, args.name)
            if args.user_cmd == "quota":
                changes = {k: getattr(args, k) for k in accounts.QUOTA_FIELDS if getattr(args, k) is not UNSET}
                return await accounts.set_quotas(db, args.name, {k: v.n for k, v in changes.items()})
            return await accounts.revoke_user_keys(db, args.name)
        finally:
            await db.dispose()

    try:
        result = asyncio.run(run())
    except accounts.UnknownUser as exc:
        raise CliError(f"{exc} (`quire user add NAME` creates one)", Exit.USAGE) from None
    except ValueError as exc:  # the name is taken: a request refused, as the API's 409 is (exit 2)
        raise CliError(f"{exc}: `quire user key {args.name}` makes it another key", Exit.USAGE) from None
    except OperationalError as exc:
        raise CliError(f"cannot connect to {_safe(url)}: {exc.orig or exc}", Exit.UNREACHABLE) from None
    if args.user_cmd in ("add", "key"):
        print(result)
        print(f"(a key for {args.name!r}; it is shown once and stored only as a hash)", file=sys.stderr)
    elif args.user_cmd == "quota":
        print(f"quotas of {args.name!r}:")
        for label, v in (
            ("tokens per day", result.tokens_per_day),
            ("concurrent jobs", result.concurrent_jobs),
            ("words per month", result.words_per_month),
        ):
            print(f"{label:<17} {'no limit' if v is None else f'{v:,}'}")
    elif args.user_cmd == "keys":
        print(f"{'key':<16} {'created (UTC)':<20} revoked (UTC)")
        for k in result:
            revoked = f"{k.revoked_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}" if k.revoked_at else "-"
            created = f"{k.created_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}"
            print(f"{accounts.KEY_PREFIX + k.prefix + '_…':<16} {created:<20} {revoked}")
    elif result:
        handles = ", ".join(f"{accounts.KEY_PREFIX}{p}_…" for p in result)
        print(f"revoked {len(result)} key(s) of {args.name!r}: {handles}")
    else:
        print(f"{args.name!r} has no key in use: nothing to revoke")
    return Exit.OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Bring the stack up, write a ~800-word document with the local model, save it and its log."""
    from quire import localmodel
    from quire.remote import Api, follow, job_exit, job_summary, write_file
    from quire.supervisor import running_pid

    settings = load_settings()
    if settings.uses_local_model:
        localmodel.ensure_runtime()
    started_here = False
    t0 = time.monotonic()
    if running_pid(settings.home) is None:
        code = cmd_up(argparse.Namespace(detach=True, supervise=False))
        if code:
            return code
        started_here = True
    state = json.loads((settings.home / "stack.json").read_text())
    api = Api.from_env(state["api_url"], None, settings.home)
    try:
        created = api.json(
            "POST", "/v1/jobs", json={"kind": "generate", "prompt": args.brief, "target_words": args.words}
        )
        jid = created["id"]
        print(f"job {jid}: {args.words} words with {settings.quire_model}", flush=True)
        job = follow(api, jid, Console(stderr=True), show_events=not args.quiet)
        out = Path(args.out)
        doc, log_json, log_txt = out / f"{jid}.md", out / f"{jid}.audit.json", out / f"{jid}.audit.txt"
        if job["status"] == "succeeded":
            write_file(str(doc), api.request("GET", f"/v1/jobs/{jid}/output").content)
        for path, fmt in ((log_json, "json"), (log_txt, "txt")):  # downloads: recorded in the log
            r = api.request("GET", f"/v1/jobs/{jid}/audit", params={"format": fmt, "download": 1})
            write_file(str(path), r.content)
        print(job_summary(job))
        print(
            f"words asked {job['target_words']}, written {job.get('output_words') or job.get('words_written')}"
            f" in {int(job['elapsed_seconds'] + 0.5)} s (the job's time, as its page shows it; "
            f"{time.monotonic() - t0:.0f} s with the stack's start)"
        )
        if job["status"] == "succeeded":
            print(f"document       {doc.resolve()}")
        print(f"audit log      {log_json.resolve()}")
        print(f"               {log_txt.resolve()}")
        print(f"job page       {state['api_url']}/jobs/{jid}")
        if state.get("temporal_ui_url"):
            ns = settings.temporal_namespace
            print(f"Temporal UI    {state['temporal_ui_url']}/namespaces/{ns}/workflows/job-{jid}")
        return job_exit(job)
    finally:
        if started_here and not args.keep:
            from quire.supervisor import down

            down(settings.home)
            print("stack stopped (use --keep to leave it running)")
