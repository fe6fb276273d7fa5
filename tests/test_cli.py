"""The CLI: schema commands, the embedded stack's lifecycle, and the job commands over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from db.models import Base
from tests.helpers import arun, free_ports, listening, run

# --- db ----------------------------------------------------------------------------------------


def test_db_sql_needs_no_database():
    r = run("db", "sql")
    assert r.returncode == 0
    assert "CREATE TABLE audit_events" in r.stdout and "CREATE TRIGGER chunks_chain" in r.stdout


def test_db_check_reports_every_missing_table_then_passes_then_finds_drift(fresh_db_url):
    url = fresh_db_url()
    r = run("db", "check", "--url", url)
    assert r.returncode == 1
    for table in Base.metadata.tables:
        assert f"{table}: table is missing" in r.stdout, table
    assert run("db", "upgrade", "--url", url).returncode == 0
    r = run("db", "check", "--url", url)
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE chunks DROP COLUMN brief")
        conn.execute("DROP TABLE stitch_results")
    r = run("db", "check", "--url", url)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert "chunks.brief: column is missing (TEXT)" in lines
    assert any(line.startswith("stitch_results: table is missing") for line in lines)
    assert len([ln for ln in lines if not ln.startswith("stitch_results")]) == 1, lines


def test_db_check_is_read_only(fresh_db_url):
    url = fresh_db_url()
    run("db", "check", "--url", url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'").fetchone() == (0,)


# --- the stack -----------------------------------------------------------------------------------


def test_up_detach_down_leaves_nothing_and_restart_reuses_data(tmp_path_factory):
    home = Path("/tmp") / f"qh-{uuid.uuid4().hex[:6]}"  # short: Postgres' socket path is limited
    api, tport, ui, metrics, witness = free_ports(5)
    env = {
        "QUIRE_HOME": str(home),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "API_PORT": str(api),
        "TEMPORAL_PORT": str(tport),
        "TEMPORAL_UI_PORT": str(ui),
        "QUIRE_WORKER_METRICS_PORT": str(metrics),
        "QUIRE_WITNESS_PORT": str(witness),
    }
    try:
        r = run("up", "--detach", env=env)
        assert r.returncode == 0, r.stderr
        assert f"http://127.0.0.1:{api}/docs" in r.stdout and f"http://127.0.0.1:{ui}" in r.stdout
        key = (home / "local-user.key").read_text().strip()
        assert oct((home / "local-user.key").stat().st_mode)[-3:] == "600"
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"http://127.0.0.1:{api}/readyz").json()["status"] == "ready"
        created = httpx.post(
            f"http://127.0.0.1:{api}/v1/jobs",
            headers=headers,
            json={"kind": "generate", "prompt": "kept", "target_words": 5},
        ).json()
        state = json.loads((home / "stack.json").read_text())
        pids = [state["pid"], *state["procs"].values()]
        # The CLI finds the stack on its non-default port by QUIRE_HOME alone (no QUIRE_API_URL, no API_PORT).
        r = run("status", created["id"], "--json", env={"QUIRE_HOME": str(home)})
        assert r.returncode == 0 and json.loads(r.stdout)["target_words"] == 5, r.stderr

        assert run("down", env=env).returncode == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        assert not any(listening(p) for p in (api, tport, ui))
        pg_procs = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
        assert pg_procs == []

        r = run("up", "--detach", env=env)
        assert r.returncode == 0, r.stderr
        assert "(new)" not in r.stdout  # the same local user, the same key
        job = httpx.get(f"http://127.0.0.1:{api}/v1/jobs/{created['id']}", headers=headers)
        assert job.status_code == 200 and job.json()["target_words"] == 5
    finally:
        run("down", env=env)


def test_port_in_use_is_a_clear_error(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        env = {"QUIRE_HOME": str(tmp_path), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "API_PORT": str(port)}
        r = run("up", "--detach", env=env, timeout=30)
        assert r.returncode == 1
        assert f"port {port} (API_PORT) is already in use" in r.stderr
        assert not (tmp_path / "pg").exists(), "nothing was started"
    finally:
        busy.close()


def test_invalid_setting_names_the_setting(tmp_path):
    r = run("history", env={"API_PORT": "seventy"})
    assert r.returncode == 2 and "invalid setting API_PORT" in r.stderr


# --- jobs over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(api_url, user) -> dict[str, str]:
    return {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": user.api_key, "QUIRE_HOME": "/nonexistent"}


@pytest.mark.usefixtures("worker")
async def test_submit_follow_renders_progress_and_exits_0(cli_env, fake, tmp_path):
    code, out, err = await arun("submit", "Wind and tide", "--words", "400", "--follow", env=cli_env)
    assert code == 0, err
    job_id = out.strip().splitlines()[0]
    assert "words" in err and "400/400" in err  # the progress bar's last frame
    assert " llm " in err and " chunk " in err  # audit lines scrolled above it
    assert "succeeded" in err
    code, _, _ = await arun("output", job_id, "-o", str(tmp_path / "doc.md"), env=cli_env)
    assert code == 0 and len((tmp_path / "doc.md").read_text().split()) >= 400
    code, _, _ = await arun("audit", job_id, "--format", "json", "-o", str(tmp_path / "a.json"), env=cli_env)
    events = json.loads((tmp_path / "a.json").read_text())["events"]
    assert code == 0 and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    code, out, _ = await arun("history", env=cli_env)
    assert code == 0 and job_id in out
    code, out, _ = await arun("status", job_id, env=cli_env)
    assert code == 0 and "the model wrote" in out and "cut as junk" in out


@pytest.mark.usefixtures("worker")
async def test_failed_job_exits_nonzero_with_its_reason(cli_env, fake):
    fake.reset(mode="empty")
    code, _, err = await arun("submit", "Silence", "--words", "120", "--follow", "--quiet", env=cli_env)
    assert code == 1
    assert "job failed: E_LENGTH_NOT_MET" in err


async def test_bad_arguments_exit_2_with_usage(cli_env):
    for args in (["submit", "x", "--words", "lots"], ["submit", "x"], ["frobnicate"], ["audit"]):
        code, _, err = await arun(*args, env=cli_env)
        assert code == 2 and "usage: quire" in err, args
    code, _, err = await arun("status", "not-a-job", env=cli_env)
    assert code == 2 and "no job 'not-a-job'" in err


async def test_inputs_that_are_not_text_are_refused_naming_the_file(cli_env, tmp_path):
    pdf, empty, notes = tmp_path / "draft.pdf", tmp_path / "empty.md", tmp_path / "notes.md"
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    empty.write_text("")
    notes.write_text("Notes on tides.")
    code, _, err = await arun("submit", "--kind", "rewrite", "--input", str(pdf), "--words", "50", env=cli_env)
    assert code == 2
    assert "quire: draft.pdf is a PDF document, not text; accepted: a .txt or .md file of UTF-8 text" in err
    code, _, err = await arun("submit", "Tides", "--input", str(notes), "--words", "50", env=cli_env)
    assert code == 2 and "--input is for --kind rewrite" in err  # never silently ignored
    code, _, err = await arun("submit", "--kind", "rewrite", "--input", str(empty), "--words", "50", env=cli_env)
    assert code == 2 and "HTTP 422: kind 'rewrite' needs a non-empty 'input_text'" in err and ": :" not in err


async def test_unreachable_api_exits_3(user):
    code, _, err = await arun("history", env={"QUIRE_API_URL": "http://127.0.0.1:9", "QUIRE_API_KEY": user.api_key})
    assert code == 3 and "cannot reach the Quire API" in err


async def test_user_keys_lists_handles_and_revoke_stops_the_cli_at_once(api_url, pg_url):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    code, key, err = await arun("user", "add", name, "--url", pg_url, env={})
    key = key.strip()
    assert code == 0 and key.startswith("qk_"), err
    code, second, _ = await arun("user", "key", name, "--url", pg_url, env={})
    second = second.strip()
    env = {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": key, "QUIRE_HOME": "/nonexistent"}
    assert (await arun("history", env=env))[0] == 0
    code, out, _ = await arun("user", "keys", name, "--url", pg_url, env={})
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["key", "created", "(UTC)", "revoked", "(UTC)"]
    assert [ln.split()[0] for ln in lines[1:]] == [f"qk_{k.split('_')[1]}_…" for k in (key, second)]
    assert all(ln.split()[-1] == "-" for ln in lines[1:])
    assert key.split("_", 2)[2] not in out and second.split("_", 2)[2] not in out  # never the secret part
    code, out, _ = await arun("user", "revoke", name, "--url", pg_url, env={})
    assert code == 0 and out.startswith(f"revoked 2 key(s) of '{name}': qk_")
    # Effective at once: the very next command with the old key is refused, exit 2 with the reason.
    code, _, err = await arun("history", env=env)
    assert code == 2 and "HTTP 401: invalid or revoked API key" in err
    code, out, _ = await arun("user", "keys", name, "--url", pg_url, env={})
    assert all(ln.split()[-1] != "-" for ln in out.splitlines()[1:])  # both show when they were revoked
    code, out, _ = await arun("user", "revoke", name, "--url", pg_url, env={})
    assert code == 0 and out.strip() == f"'{name}' has no key in use: nothing to revoke"
    code, _, err = await arun("user", "revoke", "nobody-here", "--url", pg_url, env={})
    assert code == 2 and "no user 'nobody-here'" in err
