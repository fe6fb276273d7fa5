"""The author's loop on the command line, over the same API as the web pages: the plan and its
review, a node's text, regenerate / edit / rewrite / roll back / lock, the edits, the document's
versions and their diff, the book as a map, and a job's estimate.

    quire plan JOB_ID [--approve | --edit OUTLINE.json]   quire node JOB_ID NODE
    quire regenerate JOB_ID NODE [--instruction TEXT]     quire edit JOB_ID NODE FILE
    quire rewrite JOB_ID NODE --quote TEXT --instruction TEXT
    quire rollback JOB_ID NODE --to N                     quire lock|unlock JOB_ID NODE
    quire edits JOB_ID    quire versions JOB_ID    quire diff JOB_ID FROM TO    quire map JOB_ID

An edit's command prints its number and, with ``--wait``, waits for it and exits 1 if it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quire.errors import Exit
from quire.remote import api_for, client_opts

WAIT_POLL_S = 1.0


def estimate_lines(e: dict[str, Any]) -> list[str]:
    """An estimate as a reader wants it: calls, tokens, cost and time, each with its range."""

    def r(k: str, unit: str = "") -> str:
        v = e[k]
        return f"{v['expected']:,}{unit} ({v['low']:,}..{v['high']:,})"

    basis = f"learnt from {e['jobs_measured']} finished job(s)" if e["basis"] == "history" else "defaults (no history)"
    usd = (e["cost"].get("usd") or {}) if e["cost"]["priced"] else {}
    cost = f"${usd.get('expected')} (${usd.get('low')}..${usd.get('high')})" if usd else "not priced (QUIRE_PRICES)"
    shape = e["shape"]
    return [
        f"estimate for {shape['words']:,} planned words, {shape['chunks']} passages, {shape['units']} chapter(s), "
        f"parallelism {shape['parallelism']} ({e['model']}, {basis})",
        f"model calls   {r('calls')}",
        f"tokens in     {r('tokens_in')}",
        f"tokens out    {r('tokens_out')}",
        f"cost          {cost}",
        f"wall time     {r('wall_seconds', ' s')}",
        f"story memory  {round(100 * e['memory_share'])}% of the tokens"
        + (f"; compliance {e['compliance']}" if e.get("compliance") is not None else ""),
        f"based on      {e['based_on']}",
    ]


def cmd_plan(args: argparse.Namespace) -> int:
    api = api_for(args)
    if args.approve or args.edit:
        body: dict[str, Any] = {}
        if args.edit:
            body = json.loads(Path(args.edit).read_text(encoding="utf-8"))
        r = api.json("POST", f"/v1/jobs/{args.job_id}/plan", json=body)
        print(f"plan version {r['version']} approved ({len(r['changes'])} change(s)); the job writes it now")
        return Exit.OK
    p = api.json("GET", f"/v1/jobs/{args.job_id}/plan")
    if args.json:
        print(json.dumps(p, indent=2))
        return Exit.OK
    total = sum(i["budget_words"] for i in p["items"])
    state = (
        "awaiting review"
        if p["awaiting_review"]
        else f"version {p['versions'][-1]['version']}"
        if p["versions"]
        else ""
    )
    print(f"plan: {len(p['items'])} {p['items'][0]['level'] if p['items'] else 'node'}(s), {total:,} words "
          f"for a target of {p['target_words']:,} {('(' + state + ')') if state else ''}")  # fmt: skip
    for i, it in enumerate(p["items"], 1):
        print(f"{i:>3}. [{it['node']}] {it['title']}  ({it['budget_words']:,} words)")
    return Exit.OK


def cmd_node(args: argparse.Namespace) -> int:
    n = api_for(args).json("GET", f"/v1/jobs/{args.job_id}/nodes/{args.node}")
    print(n["text"])
    lock = f", locked by {n['locked_by']}" if n["locked"] else ""
    print(f"{n['level']} {n['node']} '{n['title']}': {n['words']:,}/{n['budget_words']:,} words{lock}; "
          f"versions {n['versions']}", file=sys.stderr)  # fmt: skip
    return Exit.OK


def _started(args: argparse.Namespace, r: dict[str, Any]) -> int:
    print(f"edit {r['number']}: {r['kind']} of node {r['node']} ({r['workflow_id']})", flush=True)
    if not args.wait:
        return Exit.OK
    api = api_for(args)
    while True:
        e = api.json("GET", r["link"])
        if e["status"] != "running":
            break
        time.sleep(WAIT_POLL_S)  # the CLI polls the API, a separate process, until the edit ends
    if e["status"] == "failed":
        print(f"edit {e['number']} failed: {e['error_code']}: {e['reason']}", file=sys.stderr)
        return Exit.FAILED
    print(f"edit {e['number']} done: document version {e['document_version']} ({e['llm_calls']} model calls)")
    return Exit.OK


def _edit(path: str, method: str = "POST", **body: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        payload = {k: (v(args) if callable(v) else v) for k, v in body.items()}
        payload = {k: v for k, v in payload.items() if v is not None}
        r = api_for(args).json(method, f"/v1/jobs/{args.job_id}/nodes/{args.node}/{path}", json=payload)
        return _started(args, r)

    return run


def _lock(locked: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        r = api_for(args).json("PUT" if locked else "DELETE", f"/v1/jobs/{args.job_id}/nodes/{args.node}/lock")
        print(f"node {r['node']} " + (f"locked by {r['locked_by']}" if r["locked"] else "unlocked"))
        return Exit.OK

    return run


def cmd_edits(args: argparse.Namespace) -> int:
    edits = api_for(args).json("GET", f"/v1/jobs/{args.job_id}/edits")
    if not edits:
        print(f"job {args.job_id} has no edits yet", file=sys.stderr)
    for e in edits:
        what = e["instruction"] or (f"to version {e['to']}" if e["to"] is not None else "")
        doc = f"-> v{e['document_version']}" if e["document_version"] else e["reason"] or ""
        print(f"{e['number']:>3} {e['created_at'][:19]} {e['by']:<12} {e['kind']:<10} node {e['node']:<8} "
              f"{e['status']:<7} {doc} {what}")  # fmt: skip
    return Exit.OK


def cmd_versions(args: argparse.Namespace) -> int:
    for v in api_for(args).json("GET", f"/v1/jobs/{args.job_id}/versions")["items"]:
        by = f"edit {v['edit']['number']} ({v['edit']['kind']} by {v['edit']['by']})" if v["edit"] else "the job"
        print(f"v{v['version']:<3} {v['created_at'][:19]} {v['words']:>8,} words  {by}")
    return Exit.OK


def cmd_diff(args: argparse.Namespace) -> int:
    d = api_for(args).json("GET", f"/v1/jobs/{args.job_id}/diff", params={"from": args.a, "to": args.b})
    sys.stdout.write(d["diff"])
    if not d["diff"]:  # said on stderr: stdout stays a diff (an empty one)
        print(f"versions {args.a} and {args.b} are the same text: no difference", file=sys.stderr)
    return Exit.OK


def cmd_map(args: argparse.Namespace) -> int:
    m = api_for(args).json("GET", f"/v1/jobs/{args.job_id}/map")
    for t in m["tiles"]:
        print(f"[{t['node']:>6}] {t['state']:<11} {t['words']:>7,}/{t['budget_words']:<7,} "
              f"findings {t['open_findings']}/{t['findings']}  {t['title']}")  # fmt: skip
    return Exit.OK


def register(sub: Any) -> None:
    """The loop's commands, added to ``quire``'s parser."""

    def cmd(name: str, help_: str, fn: Callable[[argparse.Namespace], int], node: bool = True) -> Any:
        p = sub.add_parser(name, help=help_)
        p.add_argument("job_id")
        if node:
            p.add_argument("node", type=int, help="the node's id (quire plan / quire map list them)")
        client_opts(p)
        p.set_defaults(fn=fn)
        return p

    p = cmd("plan", "a job's plan; --approve it, or --edit it, while it awaits review", cmd_plan, node=False)
    p.add_argument("--approve", action="store_true", help="approve the plan as it is")
    p.add_argument(
        "--edit", metavar="OUTLINE.json", help='approve it as edited: {"items": [...]} (see quire plan --json)'
    )
    p.add_argument("--json", action="store_true")
    cmd("node", "a node's text (what `quire edit` replaces) and state", cmd_node)
    waiting = {"help": "wait for the edit to end (exit 1 if it failed)", "action": "store_true"}
    p = cmd(
        "regenerate", "write a node of a finished job again", _edit("regenerate", instruction=lambda a: a.instruction)
    )
    p.add_argument("--instruction", help="what to do differently")
    p.add_argument("--wait", **waiting)
    p = cmd("edit", "replace a node's text by hand (Markdown, no headings)", _edit("text", "PUT", text=_read_text))
    p.add_argument("file", help="the node's new text ('-': stdin)")
    p.add_argument("--wait", **waiting)
    rewrite = _edit("rewrite", instruction=lambda a: a.instruction, quote=lambda a: a.quote)
    p = cmd("rewrite", "rewrite a selection of a node, the rest untouched", rewrite)
    p.add_argument("--quote", required=True, help="the selected words, exactly as in the node's text")
    p.add_argument("--instruction", required=True)
    p.add_argument("--wait", **waiting)
    p = cmd("rollback", "roll a node back to an earlier version", _edit("rollback", to=lambda a: a.to))
    p.add_argument("--to", type=int, required=True, help="0: as the job wrote it; n: as edit n left it")
    p.add_argument("--wait", **waiting)
    cmd("lock", "lock a node: no regeneration or repair touches it", _lock(True))
    cmd("unlock", "unlock a node", _lock(False))
    cmd("edits", "who changed what: a job's edits", cmd_edits, node=False)
    cmd("versions", "the document's versions", cmd_versions, node=False)
    p = cmd("diff", "what changed between two versions of the document", cmd_diff, node=False)
    p.add_argument("a", type=int, metavar="FROM")
    p.add_argument("b", type=int, metavar="TO")
    cmd("map", "the book at a glance: chapters, state, words against budget, findings", cmd_map, node=False)


def _read_text(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
