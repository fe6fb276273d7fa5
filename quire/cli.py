"""The ``quire`` command: its parser and dispatch, and the job commands, which talk to the API over
HTTP like any other client (``submit``, ``status``, ``audit``, ``output``, ``history``, ``cancel``,
``resume``).
The commands that run on this machine (``up``, ``down``, ``demo``, ``db``, ``user``) are in
``quire.admin``. The parser is built from a ``register(sub)`` per command group (``GROUPS``): a
new group adds its commands in a function of its own module and one line there.

Exit codes (``quire.errors.Exit``): 0 success; 1 a failed or cancelled job, or a failed check;
2 a bad argument; 3 the API or a service is unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from core.controls import escape_controls
from core.spec import JOB_KINDS, JOB_STATUSES, MAX_TARGET_WORDS, MIN_TARGET_WORDS, input_problem
from quire import admin, doctor, keys, loop, witness
from quire.errors import CliError, Exit, closed_pipe, parse_args
from quire.remote import api_for, client_opts
from services.config import SettingsError


def _err(msg: str) -> None:
    # An error may quote what an endpoint or a model wrote: its control characters go escaped.
    print(f"quire: {escape_controls(msg, keep=chr(10))}", file=sys.stderr)


# --- jobs over HTTP ---------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from quire.remote import follow, job_exit, job_summary

    body: dict[str, Any] = {"kind": args.kind, "target_words": args.words}
    if args.title:
        body["title"] = args.title
    if args.webhook:
        body["webhook_url"] = args.webhook
    if args.kind == "rewrite":
        if not args.input:
            _err("--kind rewrite needs --input FILE")
            return Exit.USAGE
        try:
            data = Path(args.input).read_bytes()
        except OSError as exc:
            _err(f"cannot read {args.input} ({exc.strerror or exc})")
            return Exit.USAGE
        problem = input_problem(data, Path(args.input).name)
        if problem is not None:  # the API's own rule and words (a 422 there)
            _err(problem[1])
            return Exit.USAGE
        body["input_text"] = data.decode("utf-8")
        if args.brief:
            body["prompt"] = args.brief
    elif args.input:
        _err("--input is for --kind rewrite (a generate job writes from its brief); add --kind rewrite")
        return Exit.USAGE
    else:
        if not args.brief:
            _err('a brief is needed: quire submit "what to write" --words N')
            return Exit.USAGE
        body["prompt"] = args.brief
    if args.review_plan:
        body["options"] = {"review_plan": True}
    api = api_for(args)
    if args.estimate:  # what it would cost: nothing is submitted
        from quire.loop import estimate_lines

        print("\n".join(estimate_lines(api.json("POST", "/v1/jobs/estimate", json=body))))
        return Exit.OK
    created = api.json("POST", "/v1/jobs", json=body)
    print(created["id"], flush=True)
    if not args.follow:
        return Exit.OK
    job = follow(api, created["id"], Console(stderr=True), show_events=not args.quiet)
    print(job_summary(job), file=sys.stderr)
    return job_exit(job)


def cmd_status(args: argparse.Namespace) -> int:
    from quire.remote import job_summary

    if args.job_id is None:
        return admin.cmd_stack_status(args)
    job = api_for(args).json("GET", f"/v1/jobs/{args.job_id}")
    print(json.dumps(job, indent=2) if args.json else job_summary(job))
    return Exit.FAILED if job["status"] in ("failed", "cancelled") else Exit.OK


def cmd_coherence(args: argparse.Namespace) -> int:
    from quire.remote import coherence_lines

    rep = api_for(args).json("GET", f"/v1/jobs/{args.job_id}/coherence")
    print(json.dumps(rep, indent=2) if args.json else "\n".join(coherence_lines(rep)))
    return Exit.OK


def cmd_audit(args: argparse.Namespace) -> int:
    from quire.remote import event_line, write_file

    api = api_for(args)
    if args.follow:
        for ev in api.stream_events(args.job_id):
            print(json.dumps(ev) if args.format == "json" else event_line(ev), flush=True)
        return Exit.OK
    r = api.request("GET", f"/v1/jobs/{args.job_id}/audit", params={"format": args.format, "download": 1})
    write_file(args.output, r.content)
    return Exit.OK


def cmd_output(args: argparse.Namespace) -> int:
    from quire.remote import write_file

    if args.format in ("docx", "epub") and args.output in (None, "-") and sys.stdout.isatty():
        _err(f"{args.format} is a binary file: write it with -o FILE")
        return Exit.USAGE
    params = {
        "partial": int(args.partial),
        "format": args.format,
        **({"version": args.version} if args.version else {}),
    }
    r = api_for(args).request("GET", f"/v1/jobs/{args.job_id}/output", params=params)
    write_file(args.output, r.content)
    if args.output not in (None, "-"):
        print(
            f"{args.output}: {r.headers.get('x-quire-word-count')} words "
            f"(target {r.headers.get('x-quire-target-words')})",
            file=sys.stderr,
        )
    return Exit.OK


def cmd_webhook(args: argparse.Namespace) -> int:
    """``webhook [show]``, ``webhook set URL``, ``webhook unset``, ``webhook secret`` (a new signing
    secret, printed once: stdout, so it can go straight into a secret store)."""
    api = api_for(args)
    if args.action == "secret":
        print(api.json("POST", "/v1/webhook/secret")["secret"])
        print("(your new webhook signing secret: shown once; the one before no longer signs)", file=sys.stderr)
        return Exit.OK
    if args.action in ("set", "unset"):
        if args.action == "set" and not args.url:
            _err("quire webhook set URL: the URL is missing")
            return Exit.USAGE
        r = api.json("PUT", "/v1/webhook", json={"url": args.url if args.action == "set" else None})
        if r.get("secret"):
            print(r["secret"])
            print("(your webhook signing secret, made now: shown once)", file=sys.stderr)
    else:
        r = api.json("GET", "/v1/webhook")
    print(f"webhook  {r['url'] or '-'}", file=sys.stderr if r.get("secret") else sys.stdout)
    print(f"secret   {'set ' + str(r['secret_created_at'])[:19] if r['secret_set'] else 'none'}", file=sys.stderr)
    return Exit.OK


def cmd_history(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"status": args.status, "kind": args.kind, "limit": args.limit}.items() if v}
    data = api_for(args).json("GET", "/v1/jobs", params=params)
    if not data["items"]:  # on stderr: stdout stays one line per job
        print("no jobs" + "".join(f", {k} {v}" for k, v in params.items() if k != "limit"), file=sys.stderr)
    for j in data["items"]:
        met = "met" if j.get("target_met") else "-"
        words = j.get("output_words") or j.get("words_written") or 0
        print(
            f"{j['id']}  {j['created_at'][:19]}  {j['status']:<9} {j['kind']:<8} "
            f"{words:>7}/{j['target_words']:<7} {met:<3} {j.get('title') or ''}"
        )
    return Exit.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    r = api_for(args).json("POST", f"/v1/jobs/{args.job_id}/cancel")
    print(r["status"])
    return Exit.OK


def cmd_resume(args: argparse.Namespace) -> int:
    """A failed or cancelled job continues as a new run from what it committed (exit 2 and the
    API's reason for a job that succeeded or is running)."""
    from quire.remote import follow, job_exit, job_summary

    api = api_for(args)
    seen = int(api.json("GET", f"/v1/jobs/{args.job_id}").get("audit_events") or 0)
    r = api.json("POST", f"/v1/jobs/{args.job_id}/resume")
    print(f"{r['status']} {r['workflow_id']}", flush=True)
    if not args.follow:
        return Exit.OK
    job = follow(api, args.job_id, Console(stderr=True), show_events=not args.quiet, after=seen)
    print(job_summary(job), file=sys.stderr)
    return job_exit(job)


# --- parser: a register(sub) per command group -------------------------------------------------


def register_stack(sub: Any) -> None:
    """``up``, ``down``, ``demo``: the embedded stack on this machine."""
    up = sub.add_parser("up", help="start the embedded stack (Postgres, Temporal, model, worker, API)")
    up.add_argument("--detach", action="store_true", help="return once everything is healthy")
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(fn=admin.cmd_up)
    sub.add_parser("down", help="stop a detached stack").set_defaults(fn=admin.cmd_down)

    demo = sub.add_parser("demo", help="run the main job: ~800 words with the local model, saved with its log")
    demo.add_argument("--words", type=int, default=800)
    demo.add_argument("--brief", default=admin.DEMO_BRIEF)
    demo.add_argument("--out", default="out", help="folder for the document and its audit log")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--quiet", action="store_true", help="progress bar only, no audit lines")
    demo.set_defaults(fn=admin.cmd_demo)


def register_db(sub: Any) -> None:
    """``db sql|check|upgrade|restored``: the schema and the operators' steps on a database."""
    db = sub.add_parser("db", help="schema: print DDL, check a database, apply migrations")
    dbs = db.add_subparsers(dest="db_cmd", required=True, metavar="ACTION")
    dbs.add_parser("sql", help="print the DDL of every migration (connects nowhere)")
    for name, text in (
        ("check", "compare a database with Quire's schema (read-only)"),
        ("upgrade", "apply Quire's migrations"),
    ):
        sp = dbs.add_parser(name, help=text)
        sp.add_argument("--url", help="database URL (default DATABASE_URL)")
    rs = dbs.add_parser(
        "restored",
        help="after restoring Postgres from a backup, with the workers stopped: end every job's run in "
        "Temporal and resume the jobs from what the backup holds (README: Operators)",
    )
    rs.add_argument("--url", help="database URL (default DATABASE_URL)")
    rs.add_argument("--no-resume", action="store_true", help="end the runs and mark the jobs failed, resume none")
    db.set_defaults(fn=admin.cmd_db)


def register_users(sub: Any) -> None:
    """``user add|key|keys|revoke|quota``: accounts, straight in the database."""
    user = sub.add_parser("user", help="accounts")
    us = user.add_subparsers(dest="user_cmd", required=True, metavar="ACTION")
    for name, text in (
        ("add", "create a user and print its API key"),
        ("key", "issue another API key for a user and print it"),
        ("keys", "list a user's keys: prefix, created, revoked (never the key)"),
        ("revoke", "revoke every key of a user, effective at once"),
    ):
        sp = us.add_parser(name, help=text)
        sp.add_argument("name")
        sp.add_argument("--url", help="database URL (default DATABASE_URL)")
    q = us.add_parser("quota", help="show or set a user's quotas (a number, or 'none' for no limit)")
    q.add_argument("name")
    q.add_argument("--tokens-per-day", type=admin.quota_value, help="model tokens a day (UTC)")
    q.add_argument("--concurrent-jobs", type=admin.quota_value, help="jobs queued or running at once")
    q.add_argument("--words-per-month", type=admin.quota_value, help="target words of the jobs of a month (UTC)")
    q.add_argument("--url", help="database URL (default DATABASE_URL)")
    user.set_defaults(fn=admin.cmd_user)


def words(v: str) -> int:
    """A target in words, within the bounds the API enforces."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of words, not {v!r}") from None
    if not MIN_TARGET_WORDS <= n <= MAX_TARGET_WORDS:
        raise argparse.ArgumentTypeError(f"must be between {MIN_TARGET_WORDS} and {MAX_TARGET_WORDS:,}, not {n}")
    return n


def register_jobs(sub: Any) -> None:
    """``submit``, ``status``, ``coherence``, ``audit``, ``output``: a job over the API."""
    s = sub.add_parser("submit", help="submit a job")
    s.add_argument("brief", nargs="?", help="what to write (for rewrites: optional guidance)")
    s.add_argument(
        "--words", type=words, required=True, help=f"target words ({MIN_TARGET_WORDS}..{MAX_TARGET_WORDS:,})"
    )
    s.add_argument("--kind", choices=JOB_KINDS, default="generate")
    s.add_argument("--input", help="input document for --kind rewrite (.txt or .md)")
    s.add_argument("--title")
    s.add_argument("--webhook", metavar="URL", help="POST the job's end here, signed (default: your webhook)")
    s.add_argument("--follow", action="store_true", help="show live progress until the job ends")
    s.add_argument("--quiet", action="store_true", help="with --follow: progress bar only")
    s.add_argument(
        "--estimate", action="store_true", help="print what it would cost (calls, tokens, $, time); submit nothing"
    )
    s.add_argument("--review-plan", action="store_true", help="stop after planning until `quire plan JOB_ID --approve`")
    client_opts(s)
    s.set_defaults(fn=cmd_submit)

    st = sub.add_parser("status", help="a job's status; without a job, the local stack's parts")
    st.add_argument("job_id", nargs="?", help="omit for the state, pid, uptime and restarts of each part")
    st.add_argument("--json", action="store_true")
    client_opts(st)
    st.set_defaults(fn=cmd_status)

    co = sub.add_parser(
        "coherence", help="a job's coherence report: continuity findings with their evidence, by category"
    )
    co.add_argument("job_id")
    co.add_argument("--json", action="store_true", help="the whole report as JSON")
    client_opts(co)
    co.set_defaults(fn=cmd_coherence)

    a = sub.add_parser(
        "audit",
        help="a job's audit log; `quire audit verify JOB_ID | --file LOG | --proof FILE` checks it",
        epilog="quire audit verify JOB_ID | --file LOG | --proof FILE [--key audit.pub]: verify (see its --help)",
    )
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
    o.add_argument("--format", choices=["md", "txt", "html", "docx", "epub"], default="md", help="default: md")
    o.add_argument("--version", type=int, help="an earlier version of the document (quire versions JOB_ID)")
    client_opts(o)
    o.set_defaults(fn=cmd_output)


def register_account(sub: Any) -> None:
    """``webhook``, ``history``: the user's settings and jobs."""
    w = sub.add_parser("webhook", help="your default webhook and its signing secret")
    w.add_argument("action", nargs="?", choices=["show", "set", "unset", "secret"], default="show")
    w.add_argument("url", nargs="?", help="for set: an http(s) URL")
    client_opts(w)
    w.set_defaults(fn=cmd_webhook)

    h = sub.add_parser("history", help="your jobs, newest first")
    h.add_argument("--status", choices=JOB_STATUSES)
    h.add_argument("--kind", choices=JOB_KINDS)
    h.add_argument("--limit", type=int, default=20)
    client_opts(h)
    h.set_defaults(fn=cmd_history)


def register_control(sub: Any) -> None:
    """``cancel``, ``resume``: stop a job, or continue it as a new run."""
    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job_id")
    client_opts(c)
    c.set_defaults(fn=cmd_cancel)

    r = sub.add_parser("resume", help="continue a failed or cancelled job from what it committed (a new run)")
    r.add_argument("job_id")
    r.add_argument("--follow", action="store_true", help="show live progress until the job ends")
    r.add_argument("--quiet", action="store_true", help="with --follow: progress bar only")
    client_opts(r)
    r.set_defaults(fn=cmd_resume)


# Each group adds its commands to ``quire``'s parser, in this order (``quire --help`` lists them so).
GROUPS: tuple[Callable[[Any], None], ...] = (
    register_stack,
    register_db,
    register_users,
    register_jobs,
    keys.register,
    witness.register,
    register_account,
    register_control,
    loop.register,
    doctor.register,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quire", description="Durable, audited long-document writing.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for register in GROUPS:
        register(sub)
    return p


def _configure_logging() -> None:
    """structlog to stderr: stdout is for results (`quire db sql > schema.sql`, `quire user add`)."""
    import structlog

    from services.logging import configure

    configure(os.environ.get("QUIRE_LOG_LEVEL", "info"))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    # Libraries' info lines (every health poll, every pg_ctl call) are noise on a terminal;
    # Quire's own lines come from structlog.
    logging.getLogger().setLevel(logging.WARNING)
    # platformdirs warns on every run where XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `quire audit JOB_ID` takes any word as its id, so `quire audit verify ...` is parsed apart.
    verifying = argv[:2] == ["audit", "verify"]
    args = None if verifying else parse_args(parser(), argv)
    _configure_logging()
    try:
        if args is None:
            from quire import verify

            return int(verify.main(argv[2:]))
        code = int(args.fn(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:  # the reader went away (`quire history | head`)
        return closed_pipe()
    except SettingsError as exc:
        _err(str(exc))
        return Exit.USAGE
    except CliError as exc:  # ApiError too
        _err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
