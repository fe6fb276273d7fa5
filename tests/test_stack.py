"""`quire up` / `quire down`: the embedded stack's lifecycle, end to end, as a user runs it.

Real processes throughout: embedded Postgres, the Temporal dev server, worker.py and the API
under uvicorn. Each test uses its own short QUIRE_HOME under /tmp (Postgres' Unix socket path is
limited to ~107 bytes) and free ports, so a developer's running stack is never touched.
OPENAI_BASE_URL points at a dead port (no model is needed to bring the stack up), or at the
scripted model when a job runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from quire.pg import embedded_database_url
from quire.supervisor import HEALTHY_RESET_S, after_death, backoff, stack_status
from services.deploys import version, version_status
from services.temporal import SA_JOB_ID
from tests.fake_llm import FakeLLM
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
    api, grpc, ui, metrics, witness = free_ports(5)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(SCRUB)},
        "QUIRE_HOME": str(home),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "API_PORT": str(api),
        "TEMPORAL_PORT": str(grpc),
        "TEMPORAL_UI_PORT": str(ui),
        "QUIRE_WORKER_METRICS_PORT": str(metrics),
        "QUIRE_WITNESS_PORT": str(witness),
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
    keys = ("API_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT", "QUIRE_WORKER_METRICS_PORT", "QUIRE_WITNESS_PORT")
    return [int(env[k]) for k in keys]


async def _start_probe_workflow(address: str) -> None:
    # A workflow nobody runs: it stays open in Temporal's SQLite file, so a restart can find it.
    client = await Client.connect(address)
    await client.start_workflow(
        "QuirePersistenceProbe",
        id="persistence-probe",
        task_queue="nobody-polls-this",
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_JOB_ID, "probe")]),
    )


async def _worker_version_status(address: str) -> str:
    status = await version_status(await Client.connect(address), version("quire", "local"))
    return str(WorkerDeploymentVersionStatus.Name(status))


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
    # The worker serves its own metrics where `quire up` said, the API its own (and the jobs).
    worker_metrics = f"http://127.0.0.1:{env['QUIRE_WORKER_METRICS_PORT']}/metrics"
    assert f"Worker metrics   {worker_metrics}" in text and f"Metrics          {api}/metrics" in text
    assert "quire_chunks_written_total 0.0" in httpx.get(worker_metrics, timeout=10).text
    assert 'quire_jobs{kind="generate",status="queued"} 0.0' in httpx.get(f"{api}/metrics", timeout=10).text
    assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    r = quire("user", "add", "alice", env=env)  # finds the running embedded database by itself
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("qk_")
    temporal = f"127.0.0.1:{env['TEMPORAL_PORT']}"
    asyncio.run(_start_probe_workflow(temporal))
    # The worker declared its build and made it current (new jobs start on it).
    assert asyncio.run(_worker_version_status(temporal)) == "WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT"
    # The embedded UI decodes through the API's codec server, which answers operators only.
    ui_settings = httpx.get(f"http://127.0.0.1:{env['TEMPORAL_UI_PORT']}/api/v1/settings", timeout=10).json()
    assert ui_settings["Codec"]["Endpoint"] == f"{api}/codec" and f"Codec server     {api}/codec" in text
    assert oct((home / "operator.token").stat().st_mode & 0o777) == "0o600"
    operator = {"Authorization": f"Bearer {(home / 'operator.token').read_text().strip()}"}
    assert httpx.post(f"{api}/codec/decode", json={"payloads": []}, timeout=10).status_code == 401
    assert httpx.post(f"{api}/codec/decode", json={"payloads": []}, headers=operator, timeout=10).status_code == 200
    assert operator["Authorization"][7:] not in "".join(p.read_text() for p in (home / "logs").glob("*.log"))

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
    assert r.returncode == 2 and "already exists" in r.stderr  # the row from the first run is there: refused
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
    with pytest.raises(StackError, match=r"python -m quire.localmodel.*about 9 minutes"):
        stack.start_local_model()
    assert stack.procs == {}


# --- supervision: every part killed mid-job comes back; the job loses nothing ---------------------


def test_restart_backoff_doubles_to_a_cap_and_starts_over_after_a_healthy_run():
    assert [backoff(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert after_death(failures=5, ran_s=HEALTHY_RESET_S - 1) == 6  # crash-looping: wait longer each time
    assert after_death(failures=5, ran_s=HEALTHY_RESET_S) == 1  # it had been healthy: start over


def wait_for(what: str, check: Callable[[], object], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)  # other processes getting somewhere: polled, with a deadline
    return result


def test_the_readme_says_the_modes_the_stack_keeps():
    """What assert_private allows is what the README promises: 0700/0600, and 0710 for the two
    directories Postgres' own user passes through when Quire runs as root."""
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "(directories 0700, files 0600)" in readme
    assert "run as root, QUIRE_HOME and QUIRE_HOME/pg are 0710" in readme


def assert_private(home: Path) -> None:
    """Nothing under QUIRE_HOME is open to group or others. One exception: when Postgres runs as
    another system user (we are root), QUIRE_HOME and QUIRE_HOME/pg let its group through (0710)."""
    server_elsewhere = (home / "pg" / "data").stat().st_uid != os.getuid()
    passages = {home, home / "pg"} if server_elsewhere else set()
    loose = []
    for path in [home, *home.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
            continue  # Postgres' socket, inside its 0700 data directory
        allowed = 0o710 if path in passages else 0o700
        if stat.S_IMODE(mode) & ~allowed:
            loose.append(f"{oct(stat.S_IMODE(mode))} {path}")
    assert loose == []
    for name in ("temporal.db", "local-user.key", "stack.json", "quire.pid", "logs/supervisor.log", "logs/worker.log"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


TEMPORAL_FAILED = r"restart failed .* part=temporal retry_in_s=(\S+)"  # a supervisor.log line


def bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def supervisor_log(home: Path) -> str:
    return (home / "logs" / "supervisor.log").read_text()


def umask_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line.split()[1] for line in lines if line.startswith("Umask:"))


def test_each_part_killed_mid_job_comes_back_and_the_job_loses_nothing(stack_env, fake: FakeLLM):
    env, home = {**stack_env, "OPENAI_BASE_URL": fake.url}, Path(stack_env["QUIRE_HOME"])
    api = f"http://127.0.0.1:{env['API_PORT']}"
    # A QUIRE_HOME left open by an earlier version: Quire closes it.
    (home / "logs").mkdir(parents=True)
    for d in (home, home / "logs"):
        d.chmod(0o755)
    (home / "logs" / "worker.log").write_text("an earlier run\n")
    (home / "logs" / "worker.log").chmod(0o644)
    fake.reset(delay_s=4.0)  # each model call takes a while: the job is in flight through every kill

    r = quire("up", "--detach", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_private(home)
    assert (home / "logs" / "worker.log").read_text().startswith("an earlier run")
    key = (home / "local-user.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    created = httpx.post(
        f"{api}/v1/jobs",
        headers=auth,
        json={"kind": "generate", "prompt": "Lighthouses", "target_words": 2000, "options": {"chunk_words": 250}},
        timeout=30,
    )
    assert created.status_code == 202, created.text
    jid = created.json()["id"]

    def parts() -> dict[str, dict[str, object]]:
        return stack_status(home, [])["parts"]  # what `quire status` reads

    def ready() -> bool:
        try:
            return httpx.get(f"{api}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def job() -> dict[str, object]:
        return httpx.get(f"{api}/v1/jobs/{jid}", headers=auth, timeout=10).json()  # type: ignore[no-any-return]

    during_outage: list[int] = []
    calls = 0
    for name in ("postgres", "temporal", "witness", "worker", "api"):
        # Mid-job, and writing again since the last kill: a new model call has come in.
        wait_for(f"a model call before killing {name}", lambda calls=calls: len(fake.requests) > calls)
        calls = len(fake.requests)
        assert job()["status"] == "running"
        old = parts()[name]["pid"]
        assert isinstance(old, int)
        os.kill(old, signal.SIGKILL)

        def back(name: str = name, old: int = old) -> bool:
            p = parts()[name]
            return p["state"] == "running" and p["pid"] not in (None, old)

        if name == "postgres":  # while it is down, the API says so: JSON 503s with Retry-After, no 500s
            deadline = time.monotonic() + 60
            while not back() and time.monotonic() < deadline:
                r = httpx.get(f"{api}/v1/jobs/{jid}", headers=auth, timeout=10)
                if r.status_code != 200:
                    assert (r.status_code, r.headers.get("retry-after")) == (503, "5"), r.text
                    assert "database is unavailable" in r.json()["detail"]
                during_outage.append(r.status_code)
        if name == "temporal":  # its port is taken: restarts fail, and are retried with a growing backoff
            with socket.socket() as squatter:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                wait_for("Temporal's port free", lambda s=squatter: bind(s, int(env["TEMPORAL_PORT"])))
                squatter.listen()
                wait_for("two failed restarts", lambda: len(re.findall(TEMPORAL_FAILED, supervisor_log(home))) >= 2)
                assert re.findall(TEMPORAL_FAILED, supervisor_log(home))[:2] == ["2.0", "4.0"]
                assert parts()["temporal"]["state"] == "restarting"
        wait_for(f"{name} restarted", back)
        wait_for(f"the API ready after {name} restarted", ready)
        if name in ("postgres", "temporal"):  # the worker and the API rode it out, not restarted
            assert [parts()[p]["restarts"] for p in ("worker", "api")] == [0, 0]
    assert 503 in during_outage  # the outage was seen (Postgres is down >= 1 s: the first backoff)

    fake.set(delay_s=0.0)  # every part has died once: let the job finish
    wait_for("the job finished", lambda: job()["status"] in ("succeeded", "failed", "cancelled"), 240)
    assert job()["status"] == "succeeded", job()

    url = embedded_database_url(home)
    assert url is not None
    with psycopg.connect(url) as conn:
        n, lo, hi = conn.execute(
            "SELECT count(*), min(seq), max(seq) FROM audit_events WHERE job_id = %s", [jid]
        ).fetchone()
        assert (lo, hi) == (1, n)  # gap-free, no seq twice
        chunks = conn.execute(
            "SELECT c.ordinal, c.attempts, array_agg(a.attempt_no ORDER BY a.attempt_no) FROM chunks c "
            "LEFT JOIN chunk_attempts a ON a.chunk_id = c.id WHERE c.job_id = %s GROUP BY c.id",
            [jid],
        ).fetchall()
        assert len(chunks) > 1
        for ordinal, attempts, nos in chunks:
            assert nos == list(range(1, attempts + 1)), f"chunk {ordinal}: attempts {nos}"
        outputs = conn.execute("SELECT count(*) FROM documents WHERE job_id = %s AND role = 'output'", [jid])
        assert outputs.fetchone() == (1,)

    # The stack's own witness (storage of its own, outside Postgres) cosigned the log, though it was
    # killed mid-job: checkpoints left unwitnessed meanwhile were caught up by the next.
    state = json.loads((home / "stack.json").read_text())
    assert (home / "witness" / "witness.db").exists() and state["witness_key"].startswith("quire-witness+")
    log_file = home.parent / f"{home.name}-audit.json"
    log_file.write_bytes(httpx.get(f"{api}/v1/jobs/{jid}/audit?download=1", headers=auth, timeout=60).content)
    r = quire("audit", "verify", "--file", str(log_file), "--key", str(home / "audit.pub"),
              "--witness", state["witness_key"], env=env)  # fmt: skip
    assert r.returncode == 0 and "intact, whole to its job's end" in r.stdout, r.stdout + r.stderr
    r = quire("audit", "verify", jid, env=env)  # from the database, asking the stack's witness
    assert r.returncode == 0 and "holds this very tree" in r.stdout, r.stdout + r.stderr
    log_file.unlink()

    r = quire("status", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("postgres", "temporal", "witness", "worker", "api"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(name))
        assert line.split()[1] == "running" and "killed by SIGKILL" in line, line
        assert int(line.split()[4]) >= 1, line  # restarts (more if a restart had to be retried)
    log = supervisor_log(home)
    for name in ("postgres", "temporal", "witness", "worker", "api"):
        assert re.search(rf"part died; restarting it .*exit='killed by SIGKILL'.* part={name} ", log), name
        assert len(re.findall(rf"\] restarted +part={name} ", log)) == 1, name
    for name, p in parts().items():  # the restarted parts too: what they create is private
        assert umask_of(int(p["pid"])) == "0077", name  # type: ignore[call-overload]
    assert_private(home)
