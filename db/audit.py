"""SQL-level audit capture.

Every statement run inside a ``JobTx`` (see ``db.session``) is recorded with its real text,
its parameters (secrets redacted, long values shortened), the tables it read or wrote, its
rowcount and duration. ORM flushes add row events (row id, key fields, and old -> new for each
changed column). Events are buffered in memory and written to ``audit_events`` just before the
transaction commits, so a rollback leaves neither rows nor events.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

CAPTURE_KEY = "quire_audit_buffer"
MAX_VALUE_CHARS = 200
MAX_ROWS_PER_EXECUTEMANY = 20
# Parameter names whose values are secrets: api_key, key_hash, access_token... (not max_tokens).
SECRET_NAME = re.compile(r"(api_?key|key_hash|password|passwd|secret|(^|_)token$|authorization)", re.I)
_TABLE_RE = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE)\s+(?:ONLY\s+)?"?([a-z_][a-z0-9_]*)"?', re.I)
_FIRST_WORD = re.compile(r"^\s*(?:WITH\b.*?\)\s*)?([A-Za-z]+)", re.S)


def shorten(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… (+{len(value) - limit} chars)"


def jsonable(value: Any, limit: int = MAX_VALUE_CHARS) -> Any:
    """A JSON-safe, size-bounded rendering of a value for an audit row."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return shorten(value, limit)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): jsonable(v, limit) for k, v in items[:50]}
        if len(items) > 50:
            out["…"] = f"+{len(items) - 50} keys"
        return out
    if isinstance(value, list | tuple | set):
        seq = list(value)
        out_list = [jsonable(v, limit) for v in seq[:50]]
        if len(seq) > 50:
            out_list.append(f"… +{len(seq) - 50} items")
        return out_list
    return shorten(repr(value), limit)


class Redactor:
    """Removes configured secret values and secret-named parameters from captured data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def text(self, value: str) -> str:
        for s in self.secrets:
            if s in value:
                value = value.replace(s, "[REDACTED]")
        return value

    def value(self, name: str | None, value: Any) -> Any:
        if name is not None and SECRET_NAME.search(name) and value is not None:
            return "[REDACTED]"
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(None, v) for v in value]
        return value


def statement_tables(sql: str) -> tuple[str, list[str]]:
    """('read'|'write', tables) for a SQL statement, from its text."""
    m = _FIRST_WORD.match(sql)
    verb = (m.group(1).upper() if m else "").strip()
    access = "write" if verb in {"INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE"} else "read"
    seen: list[str] = []
    for t in _TABLE_RE.findall(sql):
        t = t.lower()
        if t not in seen and t not in {"select", "lateral"}:
            seen.append(t)
    return access, seen


@dataclass
class AuditBuffer:
    job_id: uuid.UUID
    redactor: Redactor
    capturing: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)
    _t0: float = 0.0

    def add(
        self,
        kind: str,
        action: str,
        data: dict[str, Any] | None = None,
        *,
        table_name: str | None = None,
        row_id: Any = None,
        sql_text: str | None = None,
    ) -> None:
        self.events.append(
            {
                "ts": dt.datetime.now(dt.UTC),
                "kind": kind,
                "action": action,
                "table_name": table_name,
                "row_id": None if row_id is None else str(row_id),
                "sql_text": sql_text,
                "data": self.redactor.value(None, jsonable(data or {}, limit=4000)),
            }
        )

    def add_sql(self, statement: str, parameters: Any, executemany: bool, rowcount: int, ms: float) -> None:
        access, tables = statement_tables(statement)
        if executemany and isinstance(parameters, Sequence):
            params: Any = [self._params(p) for p in list(parameters)[:MAX_ROWS_PER_EXECUTEMANY]]
            if len(parameters) > MAX_ROWS_PER_EXECUTEMANY:
                params.append(f"… +{len(parameters) - MAX_ROWS_PER_EXECUTEMANY} rows")
        else:
            params = self._params(parameters)
        self.add(
            "sql",
            access,
            {
                "tables": tables,
                "params": params,
                "rowcount": rowcount,
                "duration_ms": round(ms, 3),
                "executemany": executemany,
            },
            table_name=tables[0] if tables else None,
            sql_text=self.redactor.text(statement),
        )

    def _params(self, p: Any) -> Any:
        if isinstance(p, dict):
            return {k: jsonable(self.redactor.value(str(k), v)) for k, v in p.items()}
        if isinstance(p, list | tuple):
            return [jsonable(self.redactor.value(None, v)) for v in p]
        return jsonable(self.redactor.value(None, p))


def _buffer(conn: Any) -> AuditBuffer | None:
    buf = conn.info.get(CAPTURE_KEY)
    if buf is not None and buf.capturing:
        return buf  # type: ignore[no-any-return]
    return None


def install_capture(engine: Engine) -> None:
    """Hook statement capture into an engine (once per engine)."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        buf = _buffer(conn)
        if buf is not None:
            buf._t0 = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        buf = _buffer(conn)
        if buf is not None:
            ms = (time.perf_counter() - buf._t0) * 1000
            buf.add_sql(statement, parameters, executemany, cursor.rowcount, ms)


def _key_fields(obj: Any) -> dict[str, Any]:
    # Only loaded values: touching an expired attribute here would run SQL inside the flush.
    state = inspect(obj)
    out: dict[str, Any] = {}
    for col in state.mapper.column_attrs:
        if col.key not in state.dict:
            continue
        v = state.dict[col.key]
        if isinstance(v, str) and len(v) > 80:
            out[col.key] = f"<text: {len(v)} chars>"
        else:
            out[col.key] = v
    return out


def _pk(obj: Any) -> str:
    state = inspect(obj)
    return ",".join(str(state.dict.get(c.key)) for c in state.mapper.primary_key)


@event.listens_for(Session, "after_flush")
def _row_events(session: Session, flush_context: Any) -> None:
    buf: AuditBuffer | None = session.info.get(CAPTURE_KEY)
    if buf is None or not buf.capturing:
        return
    for obj in session.new:
        table = inspect(obj).mapper.local_table.name
        buf.add("row", "insert", {"values": _key_fields(obj)}, table_name=table, row_id=_pk(obj))
    for obj in session.dirty:
        state = inspect(obj)
        changes: dict[str, Any] = {}
        for attr in state.mapper.column_attrs:
            hist = state.attrs[attr.key].history
            if hist.has_changes():
                old = hist.deleted[0] if hist.deleted else None
                new = hist.added[0] if hist.added else None
                if old != new:
                    changes[attr.key] = {"old": old, "new": new}
        if changes:
            buf.add("row", "update", {"changes": changes}, table_name=state.mapper.local_table.name, row_id=_pk(obj))
    for obj in session.deleted:
        buf.add("row", "delete", {}, table_name=inspect(obj).mapper.local_table.name, row_id=_pk(obj))
