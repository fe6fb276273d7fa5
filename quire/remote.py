"""The CLI's API client: ``quire submit/status/audit/output/history/cancel`` talk to the API over
HTTP like any other client, and ``--follow`` renders live progress with rich. ``client_opts`` and
``api_for`` are how a command of any group says which API, with which key."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.controls import escape_controls
from core.eventformat import shown, summary
from quire.errors import CliError, Exit


class ApiError(CliError):
    """The API could not be reached (exit 3) or refused the request (exit 2 for a bad request)."""

    def __init__(self, message: str, code: int = Exit.UNREACHABLE) -> None:
        super().__init__(message, code)


@dataclass
class Api:
    base_url: str
    key: str | None

    @classmethod
    def from_env(cls, url: str | None = None, key: str | None = None, home: Path | None = None) -> Api:
        base = url or os.environ.get("QUIRE_API_URL") or "http://127.0.0.1:8000"
        key = key or os.environ.get("QUIRE_API_KEY")
        if key is None and home is not None:
            key_file = home / "local-user.key"
            if key_file.exists():
                key = key_file.read_text().strip()
        return cls(base.rstrip("/"), key)

    def _client(self, timeout: float | None = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            with self._client() as c:
                r = c.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the Quire API at {self.base_url}: {exc}") from None
        if r.status_code >= 400:
            raise ApiError(f"{method} {path}: HTTP {r.status_code}: {_detail(r)}", _exit_for(r.status_code))
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()

    def stream_events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Audit events from the live stream, resuming with Last-Event-ID after a drop."""
        last = after
        while True:
            try:
                with (
                    self._client(timeout=None) as c,
                    c.stream("GET", f"/v1/jobs/{job_id}/audit/stream", headers={"Last-Event-ID": str(last)}) as r,
                ):
                    if r.status_code >= 400:
                        r.read()
                        raise ApiError(f"audit stream: HTTP {r.status_code}: {_detail(r)}", _exit_for(r.status_code))
                    event, data = "message", []
                    for line in r.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line.startswith("id:"):
                            last = int(line[3:].strip() or last)
                        elif line == "":
                            if data and event not in ("ping",):
                                payload = json.loads("\n".join(data))
                                if event == "end":
                                    return
                                yield payload
                            event, data = "message", []
                    return
            except httpx.HTTPError:
                time.sleep(0.5)  # dropped: reconnect and resume after the last seq seen


def client_opts(sp: argparse.ArgumentParser) -> None:
    """The options of a command that talks to the API."""
    sp.add_argument(
        "--api",
        help="API URL (default: QUIRE_API_URL, else the stack `quire up` started in QUIRE_HOME, "
        "else http://API_HOST:API_PORT)",
    )
    sp.add_argument("--key", help="API key (default QUIRE_API_KEY or the local user's key)")


def api_for(args: argparse.Namespace) -> Api:
    """The API to talk to: ``--api``, else QUIRE_API_URL, else the one the stack ``quire up`` started
    in this QUIRE_HOME is serving (its address, as it recorded it), else API_HOST:API_PORT."""
    from quire.stack import Stack
    from quire.supervisor import stack_status
    from services.config import load_settings

    settings = load_settings()
    url = args.api or os.environ.get("QUIRE_API_URL") or stack_status(settings.home, [])["api_url"]
    return Api.from_env(url or Stack(settings).api_url, args.key, settings.home)


def _exit_for(status: int) -> int:
    """A request the API refused (a bad key or argument) exits 2; anything else means it is not working."""
    return Exit.USAGE if 400 <= status < 500 and status != 429 else Exit.UNREACHABLE


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    d = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(d, list):  # FastAPI validation errors: "field: message", or the message alone
        return "; ".join(_field_error(e) for e in d)
    return str(d)


def _field_error(e: dict[str, Any]) -> str:
    field = ".".join(str(x) for x in e.get("loc", [])[1:])
    msg = str(e.get("msg", ""))
    return msg if not field or msg.startswith(field) else f"{field}: {msg}"


def event_line(e: dict[str, Any]) -> str:
    """One audit event as a line of text: seq, time, kind, action and what it says."""
    ts = str(e.get("ts", ""))[11:23]
    what = shown(" ".join(summary(e).split()))  # model text and endpoint errors never reach the terminal raw
    return shown(f"{e.get('seq', ''):>7} {ts} {e.get('kind', ''):<8} {e.get('action', ''):<8} {what[:200]}")


def follow(api: Api, job_id: str, console: Console, show_events: bool = True, after: int = 0) -> dict[str, Any]:
    """Live progress bar with audit lines (those after seq ``after``) scrolling above it, until the job ends."""
    job = api.json("GET", f"/v1/jobs/{job_id}")
    target = int(job.get("target_words") or 1)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]}"),
        TextColumn("{task.fields[step]}"),
        TextColumn("{task.fields[elapsed]}"),  # the job's own time, as its page shows it (elapsed_seconds)
        TimeRemainingColumn(),
    ]
    last_poll = 0.0
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("words", total=target, chunks="", step="queued", elapsed="")

        def refresh() -> dict[str, Any]:
            j = api.json("GET", f"/v1/jobs/{job_id}")
            p = j.get("progress") or {}
            progress.update(
                task,
                completed=min(int(j.get("words_written") or 0), target),
                chunks=f"chunks {p.get('chunks_done', 0)}/{p.get('chunks_total', 0)}"
                + (f" chapters {p.get('units_done', 0)}/{p['units_total']}" if p.get("units_total", 0) > 1 else ""),
                step=str(p.get("current_step") or j.get("status")),
                elapsed=f"{int((j.get('elapsed_seconds') or 0) + 0.5)} s",
            )
            return j

        for ev in api.stream_events(job_id, after):
            if show_events:
                progress.console.print(event_line(ev), markup=False, highlight=False, no_wrap=True, overflow="ellipsis")
            if time.monotonic() - last_poll > 0.5 or ev.get("kind") == "job":
                job = refresh()
                last_poll = time.monotonic()
        job = refresh()
    return job


def write_file(path: str | None, content: bytes | str) -> None:
    if path in (None, "-"):
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
        else:
            sys.stdout.write(content)
        return
    p = Path(path)  # type: ignore[arg-type]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def job_summary(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    parts = [
        f"{job.get('id')} {job.get('status')} {job.get('kind')}",
        f"words {job.get('words_written', 0)}/{job.get('target_words')}",
        f"chunks {p.get('chunks_done', 0)}/{p.get('chunks_total', 0)}",
    ]
    if job.get("error_code"):
        parts.append(f"{job['error_code']}: {job.get('failure_reason')}")
    account = job.get("account") or {}
    # What a model or an endpoint wrote reaches a terminal with its controls escaped, never raw.
    line = escape_controls("  ".join(str(p) for p in parts))
    if job.get("audit_alarm"):
        line += f"\n  AUDIT ALARM: a checkpoint of the log was refused: {escape_controls(str(job['audit_alarm']))}"
    return f"{line}\n  {account['summary']}" if account.get("words_model") else line  # none before the gate


def job_exit(job: dict[str, Any]) -> int:
    """The exit code for a job that ended: 0 if it succeeded, else 1 with its reason on stderr."""
    if job.get("status") == "succeeded":
        return Exit.OK
    why = escape_controls(": ".join(str(x) for x in (job.get("error_code"), job.get("failure_reason")) if x))
    print(f"quire: job {job.get('status')}" + (f": {why}" if why else ""), file=sys.stderr)
    return Exit.FAILED


def coherence_lines(rep: dict[str, Any]) -> list[str]:
    """The coherence report for a terminal: the summary, the categories, then each finding with
    where it was found, what it contradicts and what became of it."""
    out = [rep["summary"], ""]
    for c in rep["by_category"].values():
        out.append(f"  {c['name']:<16} {c['found']:>4} found  {c['open']:>4} open  {c['per_10k_words']:>7} / 10k words")
    seams = ", ".join(f"{n} {k}" for k, n in sorted(rep["seams"].items())) or "none"
    out += [f"  seams: {seams}", ""]
    for f in rep["items"]:
        there = f["contradicts"]
        where = f"chunk {f['chunk'] + 1}" + (f" v{f['version']}" if f["version"] else "")
        fate = f"repaired (v{f['repair_version']})" if f["status"] == "repaired" else "OPEN"
        fate += f" ({f['tried']})" if f.get("tried") else ""
        seq = f"  audit #{f['audit_seq']}" if f["audit_seq"] else ""
        out.append(f"[{f['category_name']}] {f['severity']} {f['subtype']} at {where} ({f['where']}): {fate}{seq}")
        out.append(f"    {f['message']}")
        out.append(f'    here:  "{f["quote"][:160]}"')
        if there["quote"]:
            src = f"chunk {there['chunk'] + 1}" if there["chunk"] is not None else "the plan"
            out.append(f'    there: "{there["quote"][:160]}" ({src})')
    return out
