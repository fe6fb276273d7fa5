"""The audit log's formats: the event kinds, the hash chain's canonical form, one event as a line
of words, and the TXT format.

Pure functions of an event (a dict as the JSON log gives it): the database writer, the verifier,
the API's TXT download, the CLI's lines and anyone re-reading a log use the same ones.

The hash chain (README, "Verifying the audit log"): ``hash = sha256(prev_hash + canonical(event))``
as lowercase hex, where ``prev_hash`` is the previous event's hash (``GENESIS`` for seq 1) and
``canonical(event)`` is the RFC 8785 (JCS) JSON, UTF-8, of the event's ``chain, job_id, seq, ts,
kind, action, table_name, row_id, sql_text, data`` (chain version 2: the job and the form are
hashed into every event, so a log cannot pass for another job's), ``ts`` written as ``ts_text``
writes it. Events written before version 2 (``chain`` 1) hash the same fields without ``chain``
and ``job_id``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from typing import Any, Literal

import rfc8785

from core.controls import escape_controls, storable

# Every kind of event the code writes, and what one records. The API's ``?kind=`` accepts exactly
# these and /docs lists them; tests/test_api_audit.py finds every kind the code emits and checks
# that each is here (and each here is emitted), so a new kind cannot be written unfilterable.
EVENT_KINDS: dict[str, str] = {
    "sql": "a statement run for the job: its text, parameters, tables, rows written, duration",
    "row": "a row written that no single captured statement can be shown to have written",
    "llm": "a model call: model, tokens in and out, latency, prompt and response summaries",
    "chunk": "a chunk's attempt: words in, out and asked, the gate's cuts, pass or fail",
    "length": "a length check of a chunk or of the document",
    "activity": "a step's attempt: start, end, error, duration",
    "error": "an error: a transaction rolled back, a call failed, the job failed",
    "workflow": "a workflow started, queried, signalled, updated or cancelled",
    "job": "the job's life: created, succeeded, failed, cancelled, resumed",
    "plan": "the plan: made, proposed for review, approved",
    "stitch": "a section's seams repaired as text",
    "user": "what a user asked: submit, cancel, resume, a review, an edit, a lock",
    "coherence": "a chapter started from a handoff state",
    "memory": "the story memory after a passage: the model's delta or the fallback's",
    "continuity": "a continuity finding: found or repaired, with its evidence",
    "seam": "a seam between chapters checked (and repaired)",
    "unit": "a chapter (or the book) completed",
    "edit": "an author's edit: its steps and its outcome",
    "coverage": "an instruction's or a key point's check against the text: its verdicts, a retry made or refused",
    "webhook": "a webhook delivery attempt: status, latency, error",
}
EventKind = Literal[tuple(EVENT_KINDS)]  # type: ignore[valid-type]

# The TXT format: one line per event, tab-separated, a header line first. The first seven columns
# are for reading (the summary of an sql event is its SQL text); the event's data as JSON makes the
# line complete, so a TXT log holds exactly what the JSON and NDJSON logs hold (and verifies like
# them); its place in the hash chain comes last, where a reader can hide it (``cut -f1-7``).
TXT_COLUMNS = (
    "seq", "ts", "kind", "action", "table", "row", "summary", "data", "chain", "job_id", "prev_hash", "hash"
)  # fmt: skip
TXT_HEADER = "\t".join(TXT_COLUMNS) + "\n"
# Logs downloaded before chain version 2 put the hashes before the data; they still verify.
TXT_HEADER_V1 = "seq\tts\tkind\taction\ttable\trow\tsummary\tprev_hash\thash\tdata\n"

# --- the hash chain ------------------------------------------------------------------------

GENESIS = "0" * 64  # the prev_hash of seq 1
CHAIN_VERSION = 2  # what events are written with; 1: before the job id was hashed into each event
MAX_SAFE_INT = 2**53 - 1  # beyond it JSON readers (JavaScript, JCS) cannot hold a number exactly


def ts_text(ts: dt.datetime | str) -> str:
    """The log's one timestamp format: UTC, microseconds, ``Z`` (``2026-11-23T14:05:30.271690Z``).
    A string is taken as written: a log's hashes cover its timestamps exactly as it gives them."""
    if isinstance(ts, str):
        return ts
    return ts.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def normalize(v: Any) -> Any:
    """A JSON value as the log stores and hashes it: what JSON cannot carry exactly (numbers past
    +-2**53, NaN, infinities) becomes its decimal text, and what Postgres cannot store in a string
    (NUL, a lone surrogate) its visible stand-in (``core.controls.storable``), so that storing the
    value (Postgres jsonb) and reading it back, in any language, gives the same canonical bytes.
    Idempotent."""
    if isinstance(v, str):
        return storable(v)
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if abs(v) <= MAX_SAFE_INT else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) and abs(v) <= MAX_SAFE_INT else repr(v)
    if isinstance(v, dict):
        return {str(k): normalize(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [normalize(x) for x in v]
    return str(v)


def canonical(v: Any) -> bytes:
    """RFC 8785 canonical JSON (sorted keys, no whitespace, UTF-8, ECMAScript numbers).

    The C JSON encoder gives the same bytes as RFC 8785 for nearly every event, at a quarter of the
    cost (tests/test_audit_chain.py checks the two agree on random values): its string escapes are
    RFC 8785's, and its key order is too unless a key holds a character past U+FFFF; its numbers
    differ only for integral floats (made ints here) and floats under 1e-4 (written 1e-05, where
    ECMAScript writes 0.00001). Those few go through the rfc8785 library."""
    slow: list[bool] = []
    ready = _fast_ready(v, slow)
    if slow:
        return rfc8785.dumps(normalize(v))
    return json.dumps(ready, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _fast_ready(v: Any, slow: list[bool]) -> Any:
    """``normalize(v)`` with integral floats as ints; notes in ``slow`` what only JCS writes right.
    (Dispatch on exact types first: this runs for every event written or verified.)"""
    t = type(v)
    if t is str:
        return storable(v) if "\x00" in v or not v.isascii() else v
    if v is None or t is bool:
        return v
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                k = str(k)
            if not k.isascii() and max(k) > "\uffff":
                slow.append(True)
            out[k] = _fast_ready(x, slow)
        return out
    if t is int:
        return v if -MAX_SAFE_INT <= v <= MAX_SAFE_INT else str(v)
    if t is list:
        return [_fast_ready(x, slow) for x in v]
    if t is float:
        if not (math.isfinite(v) and abs(v) <= MAX_SAFE_INT):
            return repr(v)
        if v.is_integer():
            return int(v)
        if abs(v) < 1e-4:
            slow.append(True)
        return v
    # Subclasses (enums, tuples, ordered dicts): as their base type.
    if isinstance(v, float):
        return _fast_ready(float(v), slow)
    if isinstance(v, str | int):
        return normalize(v)
    if isinstance(v, dict):
        return _fast_ready(dict(v), slow)
    if isinstance(v, list | tuple):
        return _fast_ready(list(v), slow)
    return str(v)


def event_content(e: dict[str, Any]) -> dict[str, Any]:
    """What an event's hash covers (by its chain version; ``job_id`` from 2 on)."""
    head: dict[str, Any] = {}
    version = e.get("chain") or 1
    if version >= 2:
        head = {"chain": version, "job_id": str(e["job_id"])}
    return {
        **head,
        "seq": e["seq"],
        "ts": ts_text(e["ts"]),
        "kind": e["kind"],
        "action": e["action"],
        "table_name": e.get("table_name"),
        "row_id": e.get("row_id"),
        "sql_text": e.get("sql_text"),
        "data": e.get("data") or {},
    }


def event_hash(prev_hash: str, e: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(event_content(e))).hexdigest()


def value_digest(v: Any) -> str:
    """The SHA-256 of a stored value: of its UTF-8 bytes for text (bytes as the log writes them, in
    hex), of its canonical JSON otherwise."""
    if isinstance(v, bytes | memoryview):
        v = bytes(v).hex()
    raw = v.encode("utf-8") if isinstance(v, str) else canonical(v)
    return hashlib.sha256(raw).hexdigest()


# A value too long to inline is logged as a reference: {"$ref": "table.column#id", "length": n,
# "sha256": hex, "head": the first characters}. "before": true marks the old side of an update
# (the value that location held until this event).
REF_KEY = "$ref"


def is_ref(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get(REF_KEY), str) and isinstance(v.get("sha256"), str)


def parse_location(loc: str) -> tuple[str, str, str] | None:
    """``chunk_attempts.text_after#123`` -> (table, column, row id)."""
    m = re.fullmatch(r"([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)#(.+)", loc)
    return (m.group(1), m.group(2), m.group(3)) if m else None


_WRITE_VERB = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.I)


def written_rows(e: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Each row an event says it wrote, as (insert|update|delete, table, row id, the values it
    wrote: all of an insert's, the new side of an update's changes). An sql event carries the rows
    it wrote in ``data.rows``; a ``row`` event is one row no single statement could be shown to
    have written."""
    d: dict[str, Any] = e.get("data") or {}
    table = e.get("table_name")
    if not table:
        return []
    if e.get("kind") == "row" and e.get("row_id") is not None:
        action, rows = str(e.get("action")), [{"id": e["row_id"], **d}]
    elif e.get("kind") == "sql" and isinstance(d.get("rows"), list):
        m = _WRITE_VERB.match(str(e.get("sql_text") or ""))
        if m is None:
            return []
        action, rows = m.group(1).lower(), [r for r in d["rows"] if isinstance(r, dict)]
    else:
        return []
    out = []
    for r in rows:
        changes = r.get("changes") if action == "update" else None
        new = r.get("values") if action == "insert" else {}
        if isinstance(changes, dict):
            new = {k: c.get("new") for k, c in changes.items() if isinstance(c, dict)}
        out.append((action, str(table), str(r.get("id")), new if isinstance(new, dict) else {}))
    return out


def _short(v: Any, n: int = 40) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


def _n(v: Any) -> str:
    return "?" if v is None else str(v)


def summary(e: dict[str, Any]) -> str:
    """What one event says, in one line of words (the TXT format's summary column; the CLI's and
    the Audit Panel's lines show the same). For an sql event: its SQL text, exactly."""
    d: dict[str, Any] = e.get("data") or {}
    kind, action = e.get("kind"), e.get("action")
    if kind == "sql":
        return str(e.get("sql_text") or "")
    if kind == "row":
        changes = d.get("changes") or {}
        what = ", ".join(f"{k}: {_short(c.get('old'))} → {_short(c.get('new'))}" for k, c in changes.items())
        return f"{e.get('table_name')} #{e.get('row_id')}" + (f" {what}" if what else "")
    if kind == "llm":
        err = f" · ERROR {d.get('error') or ''}" if d.get("status") == "error" else ""
        return (
            f"{d.get('purpose') or ''} · {d.get('model') or ''} · tokens {_n(d.get('tokens_in'))} in / "
            f"{_n(d.get('tokens_out'))} out · {_n(d.get('latency_ms'))} ms{err}"
        )
    if kind == "chunk" and isinstance(d.get("chunk"), int):
        out = d.get("words_out", d.get("words"))
        verdict = "" if d.get("passed") is None else (" · PASS" if d["passed"] else " · FAIL")
        words = f"{d['words_in']} → {_n(out)}" if d.get("words_in") is not None else _n(out)
        return (
            f"chunk {d['chunk'] + 1} {action}"
            + (f" attempt {d['attempt']}" if d.get("attempt") else "")
            + f" · words {words} / target {_n(d.get('target_words'))}{verdict}"
        )
    if kind == "length":
        where = f"chunk {d['chunk'] + 1}" if isinstance(d.get("chunk"), int) else str(d.get("scope"))
        limit = d.get("min_words", d.get("target_words"))
        return f"{where} · {_n(d.get('words'))} / {_n(limit)} words · {'PASS' if d.get('passed') else 'FAIL'}"
    if kind == "activity":
        ms = f" {d['duration_ms']} ms" if d.get("duration_ms") is not None else ""
        err = f" · {d['error']}" if d.get("error") else ""
        return f"{d.get('activity') or ''} (attempt {_n(d.get('attempt'))}){ms}{err}"
    if kind == "user":
        return f"{d.get('user') or '?'} {action} · {d.get('ip') or '?'} · {d.get('user_agent') or '?'}"
    return _short(json.dumps(d, ensure_ascii=False, separators=(",", ":")), 240)


# Characters that end a line for some readers (str.splitlines, editors) and every other control
# (ESC, BEL, C1...: a terminal acts on them): never raw in a TXT line, always \\uXXXX.
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _esc(s: str | None) -> str:
    if s is None:
        return "-"
    return _UNSAFE.sub(lambda m: _ESCAPES.get(m.group()) or f"\\u{ord(m.group()):04x}", s)


def _json_line(v: Any) -> str:
    # json.dumps escapes C0 controls; C1 controls and U+2028/9 it leaves raw (valid JSON either way).
    return _LINE_BREAKS.sub(
        lambda m: f"\\u{ord(m.group()):04x}", json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    )


def txt_line(e: dict[str, Any], *, with_data: bool = True) -> str:
    """One event as a line of the TXT format: ``seq ts kind action table row summary data chain
    job_id prev_hash hash``, tab-separated; tabs, newlines, backslashes and every other control
    character inside a field are escaped (\\t \\n \\\\ \\uXXXX) and a missing value is ``-``.
    ``with_data=False`` leaves out everything after the summary (for display)."""
    cols = [
        str(e["seq"]),
        str(e["ts"]),
        _esc(str(e["kind"])),
        _esc(str(e["action"])),
        _esc(e.get("table_name")),
        _esc(e.get("row_id")),
        _esc(e.get("sql_text") if e["kind"] == "sql" else summary(e)),
    ]
    if with_data:
        job = e.get("job_id")
        cols += [
            _json_line(e.get("data") or {}),
            str(e.get("chain") or 1),
            "-" if job is None else str(job),
            _esc(e.get("prev_hash")),
            _esc(e.get("hash")),
        ]
    return "\t".join(cols) + "\n"


def _unesc(s: str) -> str | None:
    if s == "-":
        return None
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            c = s[i + 1]
            if c == "u":
                out.append(chr(int(s[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(c, c))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_txt_line(line: str, header: str = TXT_HEADER) -> dict[str, Any]:
    """The inverse of ``txt_line``: the event as the JSON formats give it (``header``: the log's
    first line, for logs in the format before chain version 2)."""
    fields = line.rstrip("\n").split("\t")
    if header == TXT_HEADER_V1:
        seq, ts, kind, action, table, row, summ, prev, hsh = fields[:9]
        data, chain, job = "\t".join(fields[9:]), "1", "-"
    else:
        seq, ts, kind, action, table, row, summ = fields[:7]
        data, chain, job, prev, hsh = "\t".join(fields[7:-4]), *fields[-4:]
    kind = _unesc(kind) or ""
    return {
        "seq": int(seq),
        "ts": ts,
        "kind": kind,
        "action": _unesc(action),
        "table_name": _unesc(table),
        "row_id": _unesc(row),
        "sql_text": _unesc(summ) if kind == "sql" else None,
        "data": json.loads(data),
        "chain": int(chain),
        "job_id": None if job == "-" else job,
        "prev_hash": _unesc(prev),
        "hash": _unesc(hsh),
    }


def shown(text: str) -> str:
    """Text for a terminal: every control character but tab and newline escaped (\\uXXXX)."""
    return escape_controls(text, keep="\t\n")
