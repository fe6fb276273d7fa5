"""Schema lifecycle: apply migrations, print their DDL offline, and compare a live database.

Quire never creates or alters tables on a database it was pointed at unless ``upgrade`` is
called (``quire db upgrade``; the embedded default calls it itself).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from db import manuscript  # noqa: F401 - its tables are part of the metadata
from db.ddl import FUNCTIONS_AND_TRIGGERS, TRIGGER_NAMES, VIEW_NAMES
from db.models import Base
from db.session import async_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None, stdout: TextIO | None = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", async_url(url) if url else "postgresql+psycopg://")
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    engine = create_engine(async_url(url))
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def offline_sql() -> str:
    """The DDL of every migration, produced without connecting anywhere."""
    buf = io.StringIO()
    cfg = alembic_config(None, stdout=buf)
    cfg.output_buffer = buf  # type: ignore[attr-defined]
    command.upgrade(cfg, "head", sql=True)
    return buf.getvalue()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@dataclass
class Difference:
    table: str
    column: str | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{where}: {self.problem}"


def check(url: str) -> list[Difference]:
    """Compare the live database with the models, read-only; an empty list means it matches.

    A missing table is one line that names its columns, indexes and triggers, rather than one
    line per index: on an empty database the report is then one line per table of Quire's.
    """
    engine = create_engine(async_url(url), connect_args={"options": "-c default_transaction_read_only=on"})
    raw: list[Difference] = []
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            for diff in compare_metadata(ctx, Base.metadata):
                raw.extend(_describe(diff))
            current = ctx.get_current_revision()
            head = head_revision()
            have_triggers = {r[0] for r in conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))}
            have_views = {r[0] for r in conn.execute(text("SELECT viewname FROM pg_views"))}
    finally:
        engine.dispose()
    missing_tables = {d.table for d in raw if d.column is None and d.problem.startswith("table is missing")}
    # Which table each trigger belongs to, read from its own DDL (CREATE TRIGGER name ... ON table).
    trigger_table = {
        m.group(1): m.group(2)
        for _, ddl in FUNCTIONS_AND_TRIGGERS
        for m in re.finditer(r"CREATE TRIGGER (\w+)\s.*?\sON (\w+)", ddl, re.S)
    }
    out: list[Difference] = []
    for d in raw:
        if d.table == "alembic_version" and d.problem == "table is not in the models":
            continue  # Alembic's own bookkeeping table
        if d.table in missing_tables and d.problem.startswith(("index ", "constraint ")):
            continue  # implied by the missing table; folded into its line below
        if d in out:
            continue
        if d.table in missing_tables and d.column is None:
            extra = [ln.problem.split(" ")[1] for ln in raw if ln.table == d.table and ln.problem.startswith("index ")]
            extra_t = [t for t in TRIGGER_NAMES if trigger_table.get(t) == d.table]
            d = Difference(
                d.table,
                None,
                d.problem[:-1]
                + (f"; indexes: {', '.join(extra)}" if extra else "")
                + (f"; triggers: {', '.join(extra_t)}" if extra_t else "")
                + ")",
            )
        out.append(d)
    if current is None:
        out.append(Difference("alembic_version", None, f"no migration has been applied (head is {head})"))
    elif current != head:
        out.append(Difference("alembic_version", None, f"revision is {current}, head is {head}"))
    for name in TRIGGER_NAMES:
        table = trigger_table.get(name, name)
        if name not in have_triggers and table not in missing_tables:
            out.append(Difference(table, None, f"trigger {name} is missing"))
    for name in VIEW_NAMES:
        if name not in have_views:
            out.append(Difference(name, None, "view is missing"))
    return out


def _describe(diff: object) -> list[Difference]:
    if isinstance(diff, list):  # column modifications come grouped
        return [d for item in diff for d in _describe(item)]
    assert isinstance(diff, tuple)
    op = diff[0]
    if op == "add_table":
        t = diff[1]
        cols = ", ".join(c.name for c in t.columns)
        return [Difference(t.name, None, f"table is missing (columns: {cols})")]
    if op == "remove_table":
        return [Difference(diff[1].name, None, "table is not in the models")]
    if op == "add_column":
        return [Difference(diff[2], diff[3].name, f"column is missing ({diff[3].type})")]
    if op == "remove_column":
        return [Difference(diff[2], diff[3].name, "column is not in the models")]
    if op == "modify_type":
        return [Difference(diff[2], diff[3], f"type is {diff[5]}, expected {diff[6]}")]
    if op == "modify_nullable":
        want = "NULL" if diff[6] else "NOT NULL"
        return [Difference(diff[2], diff[3], f"nullability differs, expected {want}")]
    if op in ("add_index", "remove_index"):
        ix = diff[1]
        what = "missing" if op == "add_index" else "not in the models"
        return [Difference(ix.table.name, None, f"index {ix.name} is {what}")]
    if op in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        c = diff[1]
        what = "missing" if op.startswith("add") else "not in the models"
        return [Difference(c.table.name, None, f"constraint {c.name} is {what}")]
    if op == "modify_default":
        return []  # server defaults are compared loosely by alembic; not a schema break
    return [Difference("?", None, f"{op}: {diff[1:]}")]
