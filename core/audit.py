"""The audit log's formats: the event kinds, one event as a line of words, and the TXT format.

Pure functions of an event (a dict as the JSON log gives it): the API's TXT download, the CLI's
lines and anyone re-reading a TXT log use the same ones.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, get_args

EventKind = Literal["sql", "row", "llm", "chunk", "length", "activity", "error", "workflow", "job", "plan", "stitch"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

# The TXT format: one line per event, tab-separated, a header line first. The first seven columns
# are for reading (the summary of an sql event is its SQL text); the last, the event's data as
# JSON, makes the line complete, so a TXT log holds exactly what the JSON and NDJSON logs hold.
TXT_COLUMNS = ("seq", "ts", "kind", "action", "table", "row", "summary", "data")
TXT_HEADER = "\t".join(TXT_COLUMNS) + "\n"


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
    """One event as a line of the TXT format: ``seq ts kind action table row summary data``,
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
        cols.append(_json_line(e.get("data") or {}))
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
    seq, ts, kind, action, table, row, summ, data = line.rstrip("\n").split("\t", 7)
    return {
        "seq": int(seq),
        "ts": ts,
        "kind": kind,
        "action": action,
        "table_name": _unesc(table),
        "row_id": _unesc(row),
        "sql_text": _unesc(summ) if kind == "sql" else None,
        "data": json.loads(data),
    }
