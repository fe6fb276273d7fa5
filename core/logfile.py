"""A downloaded audit log read for verification: JSON, NDJSON or TXT, every field checked for its
type before any of it is trusted, so that what is not a log is a clear error (``LogError``: the
CLI's exit 2), never a traceback or a verdict about something else.

Checkpoints ride as a JSON log's ``checkpoints`` (``{"note": ...}`` each), NDJSON lines
``{"checkpoint": note}`` and TXT lines ``checkpoint<TAB>"note"``; each note must read as a
checkpoint (``core.checkpoint.parse``), or the file is malformed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from core import checkpoint
from core.eventformat import TXT_HEADER, TXT_HEADER_V1, parse_txt_line

CHECKPOINT_TXT = "checkpoint\t"  # a TXT log's checkpoint lines: the tag, then the note, escaped
_HASH = re.compile(r"[0-9a-f]{64}")
MAX_SEQ = 2**62


class LogError(ValueError):
    """Not a Quire audit log, or one whose fields have the wrong form (the message names which)."""


@dataclass
class Log:
    """A downloaded log: its events, the head and job it states (JSON), its checkpoints."""

    events: list[dict[str, Any]]
    head_hash: str | None = None
    head_seq: int | None = None
    job_id: str | None = None
    checkpoints: list[str] = field(default_factory=list)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_event(e: Any, where: str) -> dict[str, Any]:
    """``e`` if it has an event's fields with their types; LogError naming the first that has not."""
    if not isinstance(e, dict):
        raise LogError(f"{where}: an event is a JSON object, not {type(e).__name__}")
    seq = e.get("seq")
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        raise LogError(f"{where}: seq is a positive integer, not {seq!r:.40}")
    where = f"{where} (seq {seq})"
    for name in ("ts", "kind", "action", "prev_hash", "hash"):
        if not isinstance(e.get(name), str):
            raise LogError(f"{where}: {name} is a string, not {e.get(name)!r:.40}")
    for name in ("prev_hash", "hash"):
        if not _HASH.fullmatch(e[name]):
            raise LogError(f"{where}: {name} is 64 lowercase hex digits, not {e[name]!r:.80}")
    for name in ("table_name", "row_id", "sql_text", "job_id"):
        if e.get(name) is not None and not isinstance(e[name], str):
            raise LogError(f"{where}: {name} is a string or null, not {e[name]!r:.40}")
    if e.get("data") is not None and not isinstance(e["data"], dict):
        raise LogError(f"{where}: data is a JSON object, not {type(e['data']).__name__}")
    chain = e.get("chain")
    if chain is not None and (not _is_int(chain) or chain not in (1, 2)):
        raise LogError(f"{where}: chain is 1 or 2 (a number), not {chain!r:.40}")
    if chain == 2 and not isinstance(e.get("job_id"), str):
        raise LogError(f"{where}: an event of chain 2 names its job (job_id)")
    return e


def _note(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise LogError(f"{where}: a checkpoint note is a string, not {type(v).__name__}")
    try:
        checkpoint.parse(v)
    except checkpoint.CheckpointError as exc:
        raise LogError(f"{where}: not a checkpoint: {exc}") from None
    return v


def parse_log(text: str) -> Log:
    """A downloaded log: JSON, NDJSON or TXT; LogError if it is none of them, or malformed. The head
    is the one a JSON log states; for the others, that of its last line."""
    try:
        return _parse(text)
    except RecursionError:
        raise LogError("not a Quire audit log: nested too deeply") from None


def _parse(text: str) -> Log:
    for header in (TXT_HEADER, TXT_HEADER_V1):
        if text.startswith(header):
            log = Log([])
            for n, line in enumerate(text.split("\n")[1:], 2):
                if line.startswith(CHECKPOINT_TXT):
                    try:
                        note = json.loads(line[len(CHECKPOINT_TXT) :])
                    except json.JSONDecodeError as exc:
                        raise LogError(f"line {n}: a checkpoint line's note is a JSON string ({exc})") from None
                    log.checkpoints.append(_note(note, f"line {n}"))
                elif line.strip():
                    try:
                        e = parse_txt_line(line + "\n", header)
                    except (ValueError, TypeError, IndexError) as exc:
                        raise LogError(f"line {n}: not a TXT log line ({type(exc).__name__}: {exc})") from None
                    log.events.append(check_event(e, f"line {n}"))
            return _with_job(log)
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "events" in doc:
            return _json(doc)
    lines = []
    for n, line in enumerate(text.split("\n"), 1):  # at "\n" only: JSON strings may hold U+2028 raw
        if not line.strip():
            continue
        try:
            lines.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise LogError(f"not a Quire audit log (JSON, NDJSON or TXT): line {n}: {exc}") from None
    log = Log([])
    for n, v in lines:
        if isinstance(v, dict) and set(v) == {"checkpoint"}:
            log.checkpoints.append(_note(v["checkpoint"], f"line {n}"))
        else:
            log.events.append(check_event(v, f"line {n}"))
    return _with_job(log)


def _json(doc: dict[str, Any]) -> Log:
    events = doc["events"]
    if not isinstance(events, list):
        raise LogError("events is a list of events")
    for name in ("head_hash", "job_id"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise LogError(f"{name} is a string, not {doc[name]!r:.40}")
    if doc.get("head_seq") is not None and not _is_int(doc["head_seq"]):
        raise LogError(f"head_seq is an integer, not {doc['head_seq']!r:.40}")
    cps = doc.get("checkpoints")
    if cps is not None and not isinstance(cps, list):
        raise LogError("checkpoints is a list")
    notes = []
    for i, c in enumerate(cps or []):
        if not isinstance(c, dict) or "note" not in c:
            raise LogError(f"checkpoints[{i}] is an object with its note")
        notes.append(_note(c["note"], f"checkpoints[{i}]"))
    checked = [check_event(e, f"events[{i}]") for i, e in enumerate(events)]
    return Log(checked, doc.get("head_hash"), doc.get("head_seq"), doc.get("job_id"), notes)


def _with_job(log: Log) -> Log:
    """The job a log without a header belongs to, as its events say."""
    log.job_id = next((str(e["job_id"]) for e in log.events if e.get("job_id")), None)
    return log
