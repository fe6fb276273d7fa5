"""The audit log's formats: the event kinds, the hash chain's canonical form, one event as a line
of words, and the TXT format.

Pure functions of an event (a dict as the JSON log gives it): the database writer, the verifier,
the API's TXT download, the CLI's lines and anyone re-reading a log use the same ones.

The hash chain (README, "Verifying a log"): ``hash = sha256(prev_hash + canonical(event))`` as
lowercase hex, where ``prev_hash`` is the previous event's hash (``GENESIS`` for seq 1) and
``canonical(event)`` is the RFC 8785 (JCS) JSON, UTF-8, of the event's ``seq, ts, kind, action,
table_name, row_id, sql_text, data``, ``ts`` written as ``ts_text`` writes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from typing import Any, Literal, get_args

import rfc8785

EventKind = Literal[
    "sql", "row", "llm", "chunk", "length", "activity", "error", "workflow", "job", "plan", "stitch", "user"
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

# The TXT format: one line per event, tab-separated, a header line first. The first seven columns
# are for reading (the summary of an sql event is its SQL text); then the event's place in the
# hash chain; the last, the event's data as JSON, makes the line complete, so a TXT log holds
# exactly what the JSON and NDJSON logs hold (and verifies like them).
TXT_COLUMNS = ("seq", "ts", "kind", "action", "table", "row", "summary", "prev_hash", "hash", "data")
TXT_HEADER = "\t".join(TXT_COLUMNS) + "\n"

# --- the hash chain ------------------------------------------------------------------------

GENESIS = "0" * 64  # the prev_hash of seq 1
CONTENT_FIELDS = ("seq", "ts", "kind", "action", "table_name", "row_id", "sql_text", "data")
MAX_SAFE_INT = 2**53 - 1  # beyond it JSON readers (JavaScript, JCS) cannot hold a number exactly


def ts_text(ts: dt.datetime | str) -> str:
    """The log's one timestamp format: UTC, microseconds, ``Z`` (``2026-11-23T14:05:30.271690Z``).
    A string is taken as written: a log's hashes cover its timestamps exactly as it gives them."""
    if isinstance(ts, str):
        return ts
    return ts.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def normalize(v: Any) -> Any:
    """A JSON value as the log stores and hashes it: what JSON cannot carry exactly (numbers past
    +-2**53, NaN, infinities) becomes its decimal text, so that storing the value (Postgres jsonb)
    and reading it back, in any language, gives the same canonical bytes. Idempotent."""
    if v is None or isinstance(v, bool | str):
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
    if t is str or v is None or t is bool:
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
    """What an event's hash covers."""
    return {
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
    """The SHA-256 of a stored value: of its UTF-8 bytes for text, of its canonical JSON otherwise."""
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
        return (
            f"chunk {d['chunk'] + 1} {action}"
            + (f" attempt {d['attempt']}" if d.get("attempt") else "")
            + f" · words {_n(d.get('words_in'))} → {_n(out)} / target {_n(d.get('target_words'))}{verdict}"
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


# Characters that end a line for some readers (str.splitlines, editors): never raw in a TXT line.
_LINE_BREAKS = {c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", **_LINE_BREAKS}
_ESCAPE_RE = re.compile("[" + re.escape("".join(_ESCAPES)) + "]")


def _esc(s: str | None) -> str:
    if s is None:
        return "-"
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], s)


def _json_line(v: Any) -> str:
    # json.dumps escapes C0 controls; these it leaves raw (valid JSON either way).
    return _ESCAPE_RE.sub(
        lambda m: _LINE_BREAKS.get(m.group(), m.group()), json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    )


def txt_line(e: dict[str, Any], *, with_data: bool = True) -> str:
    """One event as a line of the TXT format: ``seq ts kind action table row summary prev_hash hash
    data``,
    tab-separated; tabs, newlines and backslashes inside a field are escaped as \\t \\n \\\\ and a
    missing value is ``-``. ``with_data=False`` leaves the data column out (for display)."""
    cols = [
        str(e["seq"]),
        str(e["ts"]),
        str(e["kind"]),
        str(e["action"]),
        _esc(e.get("table_name")),
        _esc(e.get("row_id")),
        _esc(e.get("sql_text") if e["kind"] == "sql" else summary(e)),
    ]
    if with_data:
        cols += [_esc(e.get("prev_hash")), _esc(e.get("hash")), _json_line(e.get("data") or {})]
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


def parse_txt_line(line: str) -> dict[str, Any]:
    """The inverse of ``txt_line``: the event as the JSON formats give it."""
    seq, ts, kind, action, table, row, summ, prev, hsh, data = line.rstrip("\n").split("\t", 9)
    return {
        "seq": int(seq),
        "ts": ts,
        "kind": kind,
        "action": action,
        "table_name": _unesc(table),
        "row_id": _unesc(row),
        "sql_text": _unesc(summ) if kind == "sql" else None,
        "data": json.loads(data),
        "prev_hash": _unesc(prev),
        "hash": _unesc(hsh),
    }
