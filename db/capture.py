"""SQL-level audit capture.

Every statement run inside a ``JobTx`` (see ``db.session``) is recorded with its real text,
its parameters (secrets redacted), the tables it read or wrote, its rowcount and duration; a
statement that fails is recorded with its error. The statement that wrote an ORM object's row
also carries that row: ``data.rows``, each with its id and its fields (an insert), old -> new for
each changed column (an update) or nothing more (a delete), and ``row_id`` when it wrote one row. A
row no single captured statement can be shown to have written gets a ``row`` event of its own
instead (``kind "row"``, the same fields). Events are buffered in memory and written to
``audit_events`` just before the transaction commits; if it rolls back instead, ``db.session``
writes them afterwards, marked ``rolled_back``, in a transaction of their own.

No value is cut without a reference: a value too long to inline is held as a ``Cut`` until the
transaction ends, then logged as ``{"$ref": "table.column#id", "length", "sha256", "head"}``
naming a row of this transaction that stores it whole (an immutable one where there is one), or,
when no row does, logged whole.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import chain
from typing import Any

from psycopg.types.json import Json, Jsonb
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core.eventformat import REF_KEY, normalize
from db.values import EVENT_VALUE_CHARS, MAX_VALUE_CHARS, ROW_VALUE_CHARS, Cut, Redactor, column_value, jsonable

CAPTURE_KEY = "quire_audit_buffer"
# Rows never updated once inserted: the best place to point at for a value's full text.
IMMUTABLE_TABLES = (
    "chunk_versions",
    "chunk_attempts",
    "llm_calls",
    "documents",
    "stitch_results",
    "length_checks",
    "coherence_states",
    "seam_checks",
)
_TABLE_RE = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE)\s+(?:ONLY\s+)?"?([a-z_][a-z0-9_]*)"?', re.I)
_FIRST_WORD = re.compile(r"^\s*(?:WITH\b.*?\)\s*)?([A-Za-z]+)", re.S)
# insertmanyvalues sends a flush's many rows as one statement, the nth row's parameters as ``key__n``.
_BATCHED_KEY = re.compile(r"^(.+)__(\d+)$")


@lru_cache(maxsize=4096)
def statement_verb(sql: str) -> str:
    """INSERT, UPDATE, SELECT... : a statement's first word, past any WITH clause."""
    m = _FIRST_WORD.match(sql)
    return (m.group(1).upper() if m else "").strip()


def statement_tables(sql: str) -> tuple[str, list[str]]:
    """('read'|'write', tables) for a SQL statement, from its text."""
    access, tables = _access_and_tables(sql)
    return access, list(tables)


@lru_cache(maxsize=4096)  # a worker runs a few hundred distinct statements, each thousands of times
def _access_and_tables(sql: str) -> tuple[str, tuple[str, ...]]:
    verb = statement_verb(sql)
    access = "write" if verb in {"INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE"} else "read"
    seen: list[str] = []
    for t in _TABLE_RE.findall(sql):
        t = t.lower()
        if t not in seen and t not in {"select", "lateral"}:
            seen.append(t)
    return access, tuple(seen)


@dataclass
class _Write:
    """A write statement run by the flush under way: its event, and its raw parameter sets (one
    per row it writes), to tell which of the flushed objects it wrote."""

    index: int  # in AuditBuffer.events
    verb: str
    table: str
    sets: list[dict[str, Any]]
    claimed: set[int] = field(default_factory=set)


def _param_sets(parameters: Any, executemany: bool) -> list[dict[str, Any]] | None:
    if isinstance(parameters, dict):
        sets: dict[int, dict[str, Any]] = {}
        for k, v in parameters.items() if executemany else ():
            m = _BATCHED_KEY.match(k)
            if m is not None:
                sets.setdefault(int(m.group(2)), {})[m.group(1)] = v
        return [sets[i] for i in sorted(sets)] if sets else [parameters]
    if isinstance(parameters, Sequence) and parameters and all(isinstance(p, dict) for p in parameters):
        return list(parameters)
    return None


@dataclass
class AuditBuffer:
    job_id: uuid.UUID
    redactor: Redactor
    capturing: bool = True
    # The step a transaction runs in: the seq of its activity attempt's ``activity start`` event
    # (db.session.StepEvents). Every event written inside the activity carries it as
    # ``data.activity_seq``, so a reader can group a log by step however parallel chapters
    # interleave it. A pointer, not the activity's ids: ~20 bytes an event instead of ~170, and
    # unique even where Temporal reuses an activity id (each continue-as-new run counts from 1).
    activity_seq: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # digest -> locations of this transaction's rows that store that value whole
    stored: dict[str, list[str]] = field(default_factory=dict)
    _t0: float = 0.0
    _flushing: bool = False  # an ORM flush is under way: its writes are noted in _writes
    _writes: list[_Write] = field(default_factory=list)

    def add(
        self,
        kind: str,
        action: str,
        data: dict[str, Any] | None = None,
        *,
        table_name: str | None = None,
        row_id: Any = None,
        sql_text: str | None = None,
        raw: bool = False,
    ) -> None:
        self.events.append(
            {
                "ts": dt.datetime.now(dt.UTC),
                "kind": kind,
                "action": action,
                "table_name": table_name,
                "row_id": None if row_id is None else str(row_id),
                "sql_text": sql_text,
                "data": data if raw else self.redactor.value(None, jsonable(data or {}, limit=EVENT_VALUE_CHARS)),
            }
        )

    def add_sql(
        self,
        statement: str,
        parameters: Any,
        executemany: bool,
        rowcount: int,
        ms: float,
        error: str | None = None,
    ) -> None:
        access, tables = statement_tables(statement)
        if executemany and isinstance(parameters, Sequence):
            params: Any = [self._params(p) for p in parameters]
        else:
            params = self._params(parameters)
        data: dict[str, Any] = {
            "tables": tables,
            "params": params,
            "rowcount": rowcount,
            "duration_ms": round(ms, 3),
            "executemany": executemany,
        }
        if error is not None:
            data["error"] = self.redactor.text(error)
        verb = statement_verb(statement)
        if self._flushing and error is None and tables and verb in {"INSERT", "UPDATE", "DELETE"}:
            sets = _param_sets(parameters, executemany)
            if sets is not None:
                self._writes.append(_Write(len(self.events), verb, tables[0], sets))
        self.add(
            "sql",
            access,
            data,
            table_name=tables[0] if tables else None,
            sql_text=self.redactor.text(statement),
            raw=True,
        )

    def _params(self, p: Any) -> Any:
        if isinstance(p, dict):
            return {k: column_value(self.redactor.value(str(k), v), MAX_VALUE_CHARS) for k, v in p.items()}
        if isinstance(p, list | tuple):
            return [column_value(self.redactor.value(None, v), MAX_VALUE_CHARS) for v in p]
        return column_value(self.redactor.value(None, p), MAX_VALUE_CHARS)

    def store(self, cut: Cut) -> None:
        """Note that this transaction's row at ``cut.home`` stores ``cut``'s value whole."""
        if cut.home is not None and not cut.before:
            self.stored.setdefault(cut.digest, []).append(cut.home)

    def finished(self, *, rolled_back: bool = False) -> list[dict[str, Any]]:
        """The events as they are written: every Cut a reference or the whole value, every number
        JSON can carry exactly. A rolled-back transaction's rows are gone: its values go whole."""
        out = []
        for ev in self.events:
            data = self._finish(ev["data"], rolled_back)
            if self.activity_seq is not None:
                data = {**data, "activity_seq": self.activity_seq}
            if rolled_back:
                data = {**data, "rolled_back": True}
            out.append({**ev, "data": data})
        return out

    def _finish(self, v: Any, rolled_back: bool) -> Any:
        if isinstance(v, Cut):
            where = None if rolled_back else self._where(v)
            if where is None:
                return normalize(self.redactor.value(None, v.value))
            ref = {REF_KEY: where, "length": v.length, "sha256": v.digest, "head": self.redactor.text(v.head)}
            return {**ref, "before": True} if v.before else ref
        if isinstance(v, dict):
            return {k: self._finish(x, rolled_back) for k, x in v.items()}
        if isinstance(v, list):
            return [self._finish(x, rolled_back) for x in v]
        return normalize(v)

    def _where(self, cut: Cut) -> str | None:
        if cut.before:
            return cut.home
        places = self.stored.get(cut.digest, [])
        for p in places:
            if p.split(".", 1)[0] in IMMUTABLE_TABLES:
                return p
        return cut.home if cut.home is not None else (places[0] if places else None)


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

    @event.listens_for(engine, "handle_error")
    def _failed(ctx):  # type: ignore[no-untyped-def]
        # The statement that failed never reaches after_cursor_execute: record it with its error.
        buf = _buffer(ctx.connection) if ctx.connection is not None and ctx.statement else None
        if buf is not None:
            ms = (time.perf_counter() - buf._t0) * 1000
            many = bool(getattr(ctx.execution_context, "executemany", False))
            err = ctx.original_exception
            buf.add_sql(ctx.statement, ctx.parameters, many, -1, ms, error=f"{type(err).__name__}: {err}")


def _fields(buf: AuditBuffer, obj: Any, table: str, pk: str) -> dict[str, Any]:
    # Only loaded values: touching an expired attribute here would run SQL inside the flush.
    state = inspect(obj)
    out: dict[str, Any] = {}
    for col in state.mapper.column_attrs:
        if col.key in state.dict:
            out[col.key] = _row_value(buf, col.key, state.dict[col.key], f"{table}.{col.key}#{pk}")
    return out


def _changes(buf: AuditBuffer, obj: Any, table: str, pk: str) -> dict[str, Any]:
    state = inspect(obj)
    changes: dict[str, Any] = {}
    for attr in state.mapper.column_attrs:
        hist = state.attrs[attr.key].history
        if hist.has_changes():
            old = hist.deleted[0] if hist.deleted else None
            new = hist.added[0] if hist.added else None
            if old != new:
                home = f"{table}.{attr.key}#{pk}"
                changes[attr.key] = {
                    "old": _row_value(buf, attr.key, old, home, before=True),
                    "new": _row_value(buf, attr.key, new, home),
                }
    return changes


def _row_value(buf: AuditBuffer, name: str, value: Any, home: str, before: bool = False) -> Any:
    shown = buf.redactor.value(name, value)
    # A redacted value is not the stored one: it cannot point there, so it is logged whole.
    v = column_value(shown, ROW_VALUE_CHARS, home if shown == value else None, before)
    if isinstance(v, Cut):
        buf.store(v)
    return v


def _pk(obj: Any) -> str:
    state = inspect(obj)
    return ",".join(str(state.dict.get(c.key)) for c in state.mapper.primary_key)


@cache  # one entry per mapped class
def _param_keys(mapper: Any) -> dict[str, str]:
    """The flush's parameter names for a mapper's table -> attribute keys: a column's key (INSERT
    values, UPDATE SET, DELETE WHERE), and a primary key's label (UPDATE WHERE: ``jobs_id``)."""
    out: dict[str, str] = {}
    for prop in mapper.column_attrs:
        for col in prop.columns:
            if getattr(col, "table", None) is mapper.local_table:
                out[col.key] = prop.key
                if col.primary_key:
                    out[col._label] = prop.key
    return out


def _same(held: Any, sent: Any) -> bool:
    """Whether a value an object holds is the one a statement sent (as the driver got it)."""
    if isinstance(sent, Json | Jsonb):
        sent = sent.obj
    return bool(held == sent) or (held is not None and sent is not None and str(held) == str(sent))


_UNKNOWN = object()


def _wrote(obj: Any, keys: dict[str, str], params: dict[str, Any]) -> bool:
    state = inspect(obj)
    for name, value in params.items():
        attr = keys.get(name)
        if attr is None:
            continue
        # An attribute never set holds nothing (the INSERT sent None); an expired one is unknown here.
        held = state.dict.get(attr, _UNKNOWN if attr in state.expired_attributes else None)
        if held is _UNKNOWN or not _same(held, value):
            return False
    return True


def _statement_of(writes: list[_Write], verb: str, obj: Any) -> tuple[_Write, int] | None:
    """The one captured statement of this flush that wrote ``obj``'s row, and which of its rows
    that is; None when no statement's parameters fit, or those of more than one do."""
    mapper = inspect(obj).mapper
    keys = _param_keys(mapper)
    fits = []
    for w in writes:
        if w.verb == verb and w.table == mapper.local_table.name:
            # Unclaimed rows first (objects come in the flush's order: the first one tried fits);
            # rows of one statement with the same parameters are alike, so which is this one's is moot.
            order = chain((i for i in range(len(w.sets)) if i not in w.claimed), sorted(w.claimed))
            i = next((i for i in order if _wrote(obj, keys, w.sets[i])), None)
            if i is not None:
                fits.append((w, i))
    return fits[0] if len(fits) == 1 else None


@event.listens_for(Session, "before_flush")
def _flush_starts(session: Session, flush_context: Any, instances: Any) -> None:
    buf: AuditBuffer | None = session.info.get(CAPTURE_KEY)
    if buf is not None and buf.capturing:
        buf._flushing, buf._writes = True, []


@event.listens_for(Session, "after_flush")
def _row_events(session: Session, flush_context: Any) -> None:
    """Each flushed row onto the statement that wrote it (or a row event of its own: see the module)."""
    buf: AuditBuffer | None = session.info.get(CAPTURE_KEY)
    if buf is None or not buf.capturing:
        return
    writes, buf._flushing, buf._writes = buf._writes, False, []
    paired: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # id(write) -> (row index, row)
    alone: list[tuple[str, str, str, dict[str, Any]]] = []  # (action, table, pk, data)
    written: list[tuple[str, Any, dict[str, Any]]] = []
    for obj in sorted(session.new, key=lambda o: inspect(o).insert_order or 0):
        table, pk = inspect(obj).mapper.local_table.name, _pk(obj)
        written.append(("insert", obj, {"id": pk, "values": _fields(buf, obj, table, pk)}))
    for obj in session.dirty:
        table, pk = inspect(obj).mapper.local_table.name, _pk(obj)
        changes = _changes(buf, obj, table, pk)
        if changes:
            written.append(("update", obj, {"id": pk, "changes": changes}))
    for obj in session.deleted:
        written.append(("delete", obj, {"id": _pk(obj)}))
    by_id = {id(w): w for w in writes}
    for action, obj, row in written:
        hit = _statement_of(writes, action.upper(), obj)
        if hit is None:
            alone.append((action, inspect(obj).mapper.local_table.name, row["id"], row))
        else:
            hit[0].claimed.add(hit[1])
            paired.setdefault(id(hit[0]), []).append((hit[1], row))
    for key, rows in paired.items():
        w = by_id[key]
        if len(rows) > len(w.sets):  # more objects than it wrote rows: which are its own is unknown
            alone += [(w.verb.lower(), w.table, r["id"], r) for _, r in rows]
            continue
        ev = buf.events[w.index]
        ev["data"]["rows"] = [r for _, r in sorted(rows, key=lambda x: x[0])]
        if len(w.sets) == 1 and len(rows) == 1:
            ev["row_id"] = str(rows[0][1]["id"])
    for action, table, pk, row in alone:
        data = {k: v for k, v in row.items() if k != "id"}
        buf.add("row", action, data, table_name=table, row_id=pk, raw=True)
