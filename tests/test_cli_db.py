"""`quire db sql|check|upgrade`: the schema report, run as a user runs it (a subprocess).

The databases come from the shared embedded Postgres (``fresh_db_url`` gives empty ones).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from db import schema
from db.ddl import TRIGGER_NAMES, VIEW_NAMES
from db.models import Base

QUIRE = [sys.executable, "-m", "quire.cli"]
SCRUB = ("DATABASE_URL", "OPENAI_", "TEMPORAL_", "QUIRE_", "API_", "LLM_PORT")


@pytest.fixture
def quire(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run the CLI with a clean environment: no DATABASE_URL, a QUIRE_HOME with no stack in it."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
        base["QUIRE_HOME"] = str(tmp_path / "home")
        return subprocess.run(
            [*QUIRE, *args], env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    return run


def tables_in(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_db_sql_needs_no_database_and_no_server(quire):
    r = quire("db", "sql")
    assert r.returncode == 0, r.stderr
    for table in Base.metadata.tables:
        assert f"CREATE TABLE {table} (" in r.stdout, table
    for trigger in TRIGGER_NAMES:
        assert f"CREATE TRIGGER {trigger} " in r.stdout, trigger
    for view in VIEW_NAMES:
        assert f"VIEW {view} AS" in r.stdout, view
    assert r.stdout.rstrip().endswith("COMMIT;")  # the whole script, in one transaction


def test_db_check_on_an_empty_database_lists_every_table_and_changes_nothing(quire, fresh_db_url):
    url = fresh_db_url()
    r = quire("db", "check", "--url", url)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    for name, table in Base.metadata.tables.items():
        cols = ", ".join(c.name for c in table.columns)
        mine = [ln for ln in lines if ln.startswith(f"{name}:")]
        assert len(mine) == 1, mine  # one line per missing table, its indexes and triggers folded in
        assert mine[0].startswith(f"{name}: table is missing (columns: {cols}"), mine[0]
        for index in table.indexes:
            assert str(index.name) in mine[0]
    assert f"alembic_version: no migration has been applied (head is {schema.head_revision()})" in lines
    assert [f"{v}: view is missing" for v in VIEW_NAMES] == [ln for ln in lines if "view" in ln]
    assert len(lines) == len(Base.metadata.tables) + 1 + len(VIEW_NAMES)
    assert f"none of Quire's {len(Base.metadata.tables)} tables exist here" in r.stderr
    assert tables_in(url) == set()  # read-only: the check created nothing


def test_upgrade_takes_an_empty_database_to_head_then_check_reports_drift_precisely(quire, fresh_db_url):
    url = fresh_db_url()
    r = quire("db", "upgrade", "--url", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"database at revision {schema.head_revision()}"
    assert tables_in(url) == {*Base.metadata.tables, "alembic_version"}

    r = quire("db", "check", DATABASE_URL=url)  # DATABASE_URL, as well as --url
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing missing or different" in r.stdout

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE chunks DROP COLUMN brief")
        conn.execute("DROP TABLE stitch_results")
        conn.execute("DROP TRIGGER chunks_chain ON chunks")
    r = quire("db", "check", "--url", url)
    assert r.returncode == 1
    stitch = Base.metadata.tables["stitch_results"]
    lines = r.stdout.splitlines()
    assert lines[:2] == ["chunks: trigger chunks_chain is missing", "chunks.brief: column is missing (TEXT)"]
    assert len(lines) == 3, lines
    assert lines[2].startswith(
        f"stitch_results: table is missing (columns: {', '.join(c.name for c in stitch.columns)}"
    )
    assert "3 difference(s) in 2 table(s)" in r.stderr and "quire db upgrade" in r.stderr


def test_db_commands_without_a_database_say_what_to_do(quire):
    r = quire("db", "check")
    assert r.returncode == 2
    assert "no database: set DATABASE_URL, pass --url, or start the stack" in r.stderr
    r = quire("user", "add", "nobody")
    assert r.returncode == 2 and "no database" in r.stderr


def test_unreachable_database_is_one_line_without_the_password(quire):
    r = quire("db", "check", "--url", "postgresql://quire:s3cret-pw@127.0.0.1:9/quire")
    assert r.returncode == 3
    assert r.stderr.startswith("quire: cannot connect to postgresql://quire:***@127.0.0.1:9/quire")
    assert "s3cret-pw" not in r.stderr and "Traceback" not in r.stderr
