"""The ``quire`` command.

Stack: ``up [--detach]``, ``down``, ``demo``. Schema: ``db sql|check|upgrade``. Accounts:
``user add NAME``. Jobs (over HTTP, like any API client): ``submit``, ``status``, ``audit``,
``output``, ``history``, ``cancel``.

Exit codes: 0 success; 1 a failed or cancelled job, or a failed check; 2 a bad argument;
3 the API or a service is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from quire.config import Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEMO_BRIEF = (
    "A practical guide to keeping honey bees in a small garden: choosing a hive, the bees' year, "
    "inspections, swarms, and the first honey harvest."
)


def _err(msg: str) -> None:
    print(f"quire: {msg}", file=sys.stderr)


class CliError(Exception):
    """A one-line reason and an exit code; ``main`` prints it as ``quire: reason``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- stack ---------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from quire import stack

    settings = load_settings()
    if getattr(args, "supervise", False):
        # The background half of --detach. Its stdout is supervisor.log: never print the key there.
        return _run_stack(settings, lambda state, _key: _print_urls(state, None))
    pid = stack.running_pid(settings.home)
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
    from quire import stack

    try:
        return stack.run(settings, announce)
    except stack.StackError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback; the logs have the rest
        where = settings.home / "logs"
        raise CliError(f"the stack did not start: {type(exc).__name__}: {exc} (logs: {where})") from None


def _up_detached(settings: Settings) -> int:
    """Start the supervisor in its own session and return once it reports the stack healthy."""
    from quire import stack

    home = settings.home
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
    return EXIT_OK


def _stop_supervisor(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the supervisor stops its children on SIGTERM
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        from quire.stack import down

        down(load_settings().home)


def _print_urls(state: dict[str, Any], key: str | None) -> None:
    """What the user needs next. The key appears only when new, and only on a terminal's stdout."""
    print(f"Quire API        {state['api_url']}")
    print(f"API docs         {state['docs_url']}")
    print(f"Web pages        {state['api_url']}/")
    if state.get("temporal_ui_url"):
        print(f"Temporal UI      {state['temporal_ui_url']}")
    if state.get("llm_url"):
        print(f"Local model      {state['llm_url']}")
    print(f"Logs             {state['logs']}")
    if key is not None:
        print(f"Local user key   {key}")
        print(f"                 (new: shown once; kept in {state['key_file']}, mode 0600)", flush=True)
    else:
        print(f"Local user key   in {state['key_file']}", flush=True)


def cmd_down(args: argparse.Namespace) -> int:
    from quire.stack import down

    home = load_settings().home
    print("stopped" if down(home) else "not running")
    return EXIT_OK


# --- db and users ----------------------------------------------------------------------------


def _db_url(args: argparse.Namespace) -> str:
    """--url, else DATABASE_URL, else the embedded database of a running `quire up`."""
    url = getattr(args, "url", None)
    if url:
        return str(url)
    settings = load_settings()
    if settings.database_url:
        return settings.database_url
    from quire.stack import embedded_database_url

    url = embedded_database_url(settings.home)
    if url:
        return url
    raise CliError(
        f"no database: set DATABASE_URL, pass --url, or start the stack (`quire up`; QUIRE_HOME is {settings.home})",
        EXIT_USAGE,
    )


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: say nothing of it
        return "the database"


def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from db import schema
    from db.models import Base

    if args.db_cmd == "sql":
        sys.stdout.write(schema.offline_sql())  # connects nowhere
        return EXIT_OK
    url = _db_url(args)
    try:
        if args.db_cmd == "upgrade":
            schema.upgrade(url)
            print(f"database at revision {schema.head_revision()}")
            return EXIT_OK
        diffs = schema.check(url)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise CliError(f"cannot connect to {_safe(url)}: {reason}", EXIT_UNREACHABLE) from None
    if not diffs:
        print(f"schema matches Quire {schema.head_revision()}: nothing missing or different")
        return EXIT_OK
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
    return EXIT_FAILED


def cmd_user(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from db.session import Database
    from quire.accounts import create_user

    url = _db_url(args)

    async def run() -> str:
        db = Database(url)
        try:
            return (await create_user(db, args.name)).api_key
        finally:
            await db.dispose()

    try:
        key = asyncio.run(run())
    except ValueError as exc:  # the name is taken
        raise CliError(str(exc)) from None
    except OperationalError as exc:
        raise CliError(f"cannot connect to {_safe(url)}: {exc.orig or exc}", EXIT_UNREACHABLE) from None
    print(key)
    print(f"(the key for {args.name!r}; it is shown once and stored only as a hash)", file=sys.stderr)
    return EXIT_OK


# --- jobs over HTTP ---------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> Any:
    from quire.remote import Api

    return Api.from_env(args.api, args.key, load_settings().home)


def cmd_submit(args: argparse.Namespace) -> int:
    from quire.remote import follow, job_summary

    body: dict[str, Any] = {"kind": args.kind, "target_words": args.words}
    if args.title:
        body["title"] = args.title
    if args.kind == "rewrite":
        if not args.input:
            _err("--kind rewrite needs --input FILE")
            return EXIT_USAGE
        try:
            body["input_text"] = Path(args.input).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _err(f"cannot read {args.input}: {exc}")
            return EXIT_USAGE
        if args.brief:
            body["prompt"] = args.brief
    else:
        if not args.brief:
            _err('a brief is needed: quire submit "what to write" --words N')
            return EXIT_USAGE
        body["prompt"] = args.brief
    api = _api(args)
    created = api.json("POST", "/v1/jobs", json=body)
    print(created["id"], flush=True)
    if not args.follow:
        return EXIT_OK
    job = follow(api, created["id"], Console(stderr=True), show_events=not args.quiet)
    print(job_summary(job), file=sys.stderr)
    return _job_exit(job)


def _job_exit(job: dict[str, Any]) -> int:
    if job.get("status") == "succeeded":
        return EXIT_OK
    _err(f"job {job.get('status')}: {job.get('error_code')}: {job.get('failure_reason')}")
    return EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from quire.remote import job_summary

    job = _api(args).json("GET", f"/v1/jobs/{args.job_id}")
    print(json.dumps(job, indent=2) if args.json else job_summary(job))
    return EXIT_OK if job["status"] != "failed" else EXIT_FAILED


def cmd_audit(args: argparse.Namespace) -> int:
    from quire.remote import event_line, write_file

    api = _api(args)
    if args.follow:
        for ev in api.stream_events(args.job_id):
            print(json.dumps(ev) if args.format == "json" else event_line(ev), flush=True)
        return EXIT_OK
    r = api.request("GET", f"/v1/jobs/{args.job_id}/audit", params={"format": args.format, "download": 1})
    write_file(args.output, r.content)
    return EXIT_OK


def cmd_output(args: argparse.Namespace) -> int:
    from quire.remote import write_file

    r = _api(args).request("GET", f"/v1/jobs/{args.job_id}/output", params={"partial": int(args.partial)})
    write_file(args.output, r.content)
    if args.output not in (None, "-"):
        print(
            f"{args.output}: {r.headers.get('x-quire-word-count')} words "
            f"(target {r.headers.get('x-quire-target-words')})",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"status": args.status, "kind": args.kind, "limit": args.limit}.items() if v}
    data = _api(args).json("GET", "/v1/jobs", params=params)
    for j in data["items"]:
        met = "met" if j.get("target_met") else "-"
        words = j.get("output_words") or j.get("words_written") or 0
        print(
            f"{j['id']}  {j['created_at'][:19]}  {j['status']:<9} {j['kind']:<8} "
            f"{words:>7}/{j['target_words']:<7} {met:<3} {j.get('title') or ''}"
        )
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    r = _api(args).json("POST", f"/v1/jobs/{args.job_id}/cancel")
    print(r["status"])
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Bring the stack up, write a ~800-word document with the local model, save it and its log."""
    from quire import localmodel
    from quire.remote import Api, follow, job_summary, write_file
    from quire.stack import running_pid

    settings = load_settings()
    if settings.uses_local_model:
        localmodel.ensure_extra()
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
        write_file(str(log_json), api.request("GET", f"/v1/jobs/{jid}/audit", params={"format": "json"}).content)
        write_file(str(log_txt), api.request("GET", f"/v1/jobs/{jid}/audit", params={"format": "txt"}).content)
        print(job_summary(job))
        print(
            f"words asked {job['target_words']}, written {job.get('output_words') or job.get('words_written')}"
            f" in {time.monotonic() - t0:.0f} s"
        )
        if job["status"] == "succeeded":
            print(f"document       {doc.resolve()}")
        print(f"audit log      {log_json.resolve()}")
        print(f"               {log_txt.resolve()}")
        print(f"job page       {state['api_url']}/jobs/{jid}")
        if state.get("temporal_ui_url"):
            ns = settings.temporal_namespace
            print(f"Temporal UI    {state['temporal_ui_url']}/namespaces/{ns}/workflows/job-{jid}")
        return _job_exit(job)
    finally:
        if started_here and not args.keep:
            from quire.stack import down

            down(settings.home)
            print("stack stopped (use --keep to leave it running)")


# --- parser ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quire", description="Durable, audited long-document writing.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the embedded stack (Postgres, Temporal, model, worker, API)")
    up.add_argument("--detach", action="store_true", help="return once everything is healthy")
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop a detached stack").set_defaults(fn=cmd_down)

    demo = sub.add_parser("demo", help="run the main job: ~800 words with the local model, saved with its log")
    demo.add_argument("--words", type=int, default=800)
    demo.add_argument("--brief", default=DEMO_BRIEF)
    demo.add_argument("--out", default="out", help="folder for the document and its audit log")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--quiet", action="store_true", help="progress bar only, no audit lines")
    demo.set_defaults(fn=cmd_demo)

    db = sub.add_parser("db", help="schema: print DDL, check a database, apply migrations")
    dbs = db.add_subparsers(dest="db_cmd", required=True, metavar="ACTION")
    dbs.add_parser("sql", help="print the DDL of every migration (connects nowhere)")
    for name, text in (
        ("check", "compare a database with Quire's schema (read-only)"),
        ("upgrade", "apply Quire's migrations"),
    ):
        sp = dbs.add_parser(name, help=text)
        sp.add_argument("--url", help="database URL (default DATABASE_URL)")
    db.set_defaults(fn=cmd_db)

    user = sub.add_parser("user", help="accounts")
    us = user.add_subparsers(dest="user_cmd", required=True, metavar="ACTION")
    add = us.add_parser("add", help="create a user and print its API key")
    add.add_argument("name")
    add.add_argument("--url", help="database URL (default DATABASE_URL)")
    user.set_defaults(fn=cmd_user)

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--api", help="API URL (default QUIRE_API_URL or http://127.0.0.1:8000)")
        sp.add_argument("--key", help="API key (default QUIRE_API_KEY or the local user's key)")

    def words(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number of words, not {v!r}") from None
        if not 1 <= n <= 500_000:
            raise argparse.ArgumentTypeError(f"must be between 1 and 500,000, not {n}")
        return n

    s = sub.add_parser("submit", help="submit a job")
    s.add_argument("brief", nargs="?", help="what to write (for rewrites: optional guidance)")
    s.add_argument("--words", type=words, required=True, help="target words (1..500,000)")
    s.add_argument("--kind", choices=["generate", "rewrite"], default="generate")
    s.add_argument("--input", help="input document for --kind rewrite (.txt or .md)")
    s.add_argument("--title")
    s.add_argument("--follow", action="store_true", help="show live progress until the job ends")
    s.add_argument("--quiet", action="store_true", help="with --follow: progress bar only")
    client_opts(s)
    s.set_defaults(fn=cmd_submit)

    st = sub.add_parser("status", help="a job's status")
    st.add_argument("job_id")
    st.add_argument("--json", action="store_true")
    client_opts(st)
    st.set_defaults(fn=cmd_status)

    a = sub.add_parser("audit", help="a job's audit log")
    a.add_argument("job_id")
    a.add_argument("--follow", action="store_true", help="stream events live")
    a.add_argument("--format", choices=["json", "ndjson", "txt"], default="txt")
    a.add_argument("-o", "--output", help="file to write (default stdout)")
    client_opts(a)
    a.set_defaults(fn=cmd_audit)

    o = sub.add_parser("output", help="a job's document")
    o.add_argument("job_id")
    o.add_argument("-o", "--output", help="file to write (default stdout)")
    o.add_argument("--partial", action="store_true", help="the latest partial output of a failed job")
    client_opts(o)
    o.set_defaults(fn=cmd_output)

    h = sub.add_parser("history", help="your jobs, newest first")
    h.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    h.add_argument("--kind", choices=["generate", "rewrite"])
    h.add_argument("--limit", type=int, default=20)
    client_opts(h)
    h.set_defaults(fn=cmd_history)

    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job_id")
    client_opts(c)
    c.set_defaults(fn=cmd_cancel)
    return p


def _configure_logging() -> None:
    """structlog to stderr: stdout is for results (`quire db sql > schema.sql`, `quire user add`)."""
    import structlog

    from quire.logging import configure

    configure(os.environ.get("QUIRE_LOG_LEVEL", "info"))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    # Libraries' info lines (every health poll, every pg_ctl call) are noise on a terminal;
    # Quire's own lines come from structlog.
    logging.getLogger().setLevel(logging.WARNING)
    # platformdirs warns on every run where XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def main(argv: list[str] | None = None) -> int:
    from quire.remote import ApiError

    args = parser().parse_args(argv)
    _configure_logging()
    try:
        return int(args.fn(args))
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except CliError as exc:
        _err(str(exc))
        return exc.code
    except ApiError as exc:
        _err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
