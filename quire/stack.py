"""The embedded stack behind ``quire up``: Postgres, Temporal, the local model, worker and API.

Whatever is configured externally (DATABASE_URL, TEMPORAL_ADDRESS, OPENAI_BASE_URL/KEY) is used
as is; the rest is started here, with its data under QUIRE_HOME so a restart reuses it:

    QUIRE_HOME/pg/data          embedded Postgres (Unix socket only, in the data directory)
    QUIRE_HOME/temporal.db      the Temporal dev server's SQLite file (payloads encrypted; quire.temporal_dev)
    QUIRE_HOME/temporal.key     the key encrypting what Temporal stores (services.codec)
    QUIRE_HOME/models/          the local model's GGUF file
    QUIRE_HOME/logs/*.log       one log per child process (and the detached supervisor's)
    QUIRE_HOME/local-user.key   the local user's API key (mode 0600)
    QUIRE_HOME/operator.token   the operators' token for the codec server (/codec) the UI decodes with
    QUIRE_HOME/quire.pid        the supervisor's pid while it runs
    QUIRE_HOME/stack.json       URLs, and each part's state, pid and restarts: written once
                                everything is healthy, then by the supervisor on every change

All of it is private (0700/0600, see ``quire.privacy``). ``quire.supervisor`` starts the stack in
the foreground (``quire up``) or in the background (``quire up --detach``), restarts any part that
dies (``Stack.restart``), and stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from quire.localuser import ensure_local_user
from quire.pg import EmbeddedPostgres, stop_embedded_postgres
from quire.privacy import traverse_for_postgres
from quire.processes import StackError, port_in_use, stop_group, wait_until
from quire.temporal_dev import dev_server_command, temporal_healthy
from services.config import Settings

log = structlog.get_logger(__name__)
# How long each part may take to become healthy; generous, so a slow machine is not an error.
# The worker's metrics port under `quire up` when QUIRE_WORKER_METRICS_PORT is unset (the port
# commonly given to an exporter of OpenTelemetry's metrics: clear of Quire's other defaults).
WORKER_METRICS_PORT = 9464
TIMEOUTS = {"postgres": 60.0, "temporal": 90.0, "llm": 120.0, "worker": 60.0, "api": 60.0}
PARTS = tuple(TIMEOUTS)  # the start order; restarts of parts that died together follow it too


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # the child process of each part
    env: dict[str, str] = field(default_factory=dict)
    started_postgres: bool = False
    pg: EmbeddedPostgres | None = None

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

    @property
    def worker_metrics_port(self) -> int:
        """Where the worker serves its metrics: QUIRE_WORKER_METRICS_PORT, else 9464 (0: nowhere)."""
        port = self.settings.quire_worker_metrics_port
        return WORKER_METRICS_PORT if port is None else port

    @property
    def worker_metrics_url(self) -> str | None:
        if not self.worker_metrics_port:
            return None
        host = self.settings.quire_worker_metrics_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.worker_metrics_port}/metrics"

    def ports(self) -> list[tuple[str, int, str]]:
        """(host, port, setting) for every port this stack would listen on."""
        s = self.settings
        out = [(s.api_host, s.api_port, "API_PORT")]
        if self.worker_metrics_port:
            out.append((s.quire_worker_metrics_host, self.worker_metrics_port, "QUIRE_WORKER_METRICS_PORT"))
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
    def parts(self) -> list[str]:
        """The parts this stack runs itself (not those configured as external), in start order."""
        s = self.settings
        run = {
            "postgres": s.database_url is None,
            "temporal": s.temporal_address is None,
            "llm": s.uses_local_model,
            "worker": s.quire_start_worker,
            "api": True,
        }
        return [name for name in PARTS if run[name]]

    def children(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """(part, process) in start order, whatever order they were (re)started in."""
        return [(name, self.procs[name]) for name in PARTS if name in self.procs]

    def pid(self, name: str) -> int | None:
        if name == "postgres":
            return self.pg.pid if self.pg is not None else None
        proc = self.procs.get(name)
        return proc.pid if proc is not None else None

    def exited(self, name: str) -> int | None:
        """The part's exit code if it has died (negative: the signal that killed it), else None."""
        if name == "postgres":
            return self.pg.exited() if self.pg is not None else None
        proc = self.procs.get(name)
        return proc.poll() if proc is not None else None

    def clear(self, name: str) -> None:
        """After a part died, or failed to come back: whatever its process group left, killed and reaped."""
        proc = self.procs.get(name)
        if proc is not None:
            stop_group(name, proc.pid, proc)
            del self.procs[name]  # only now: a stop() that interrupts this still finds it

    def restart(self, name: str) -> None:
        """Start one part again, as ``up`` did (same data, ports and environment); returns once it is
        healthy, raises StackError if it is not."""
        self.clear(name)
        if name == "postgres":
            assert self.pg is not None
            t0 = time.monotonic()
            try:
                self.pg.restart()
            except Exception as exc:  # noqa: BLE001 - pg_ctl failed or timed out: the supervisor retries
                raise StackError(f"Postgres did not start: {exc}; see {self.pg.data / 'log'}") from None
            log.info("ready", part="postgres", pid=self.pg.pid, seconds=round(time.monotonic() - t0, 1))
            return
        starts: dict[str, Callable[[], object]] = {
            "temporal": self.start_temporal,
            "llm": self.start_local_model,
            "worker": self.start_worker,
            "api": self.start_api,
        }
        starts[name]()

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
        import psycopg

        t0 = time.monotonic()
        self.pg = EmbeddedPostgres(self.home)
        log.info("starting", part="postgres", data=str(self.pg.data))
        self.started_postgres = True  # set first: an interrupted start still gets a pg_ctl stop
        admin_url = self.pg.start()
        traverse_for_postgres(self.home, self.pg.pid)  # embedded-postgres opened QUIRE_HOME up for its user
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'quire'").fetchone() is None:
                conn.execute("CREATE DATABASE quire")
        url = str(self.pg.server.get_uri("quire"))
        schema.upgrade(url)  # the embedded database is Quire's own: keep it at head
        log.info("ready", part="postgres", pid=self.pg.pid, seconds=round(time.monotonic() - t0, 1))
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
        self.procs[name] = proc
        log.info("starting", part=name, pid=proc.pid, log=str(self.logs / f"{name}.log"))
        return proc

    def start_temporal(self) -> str:
        s = self.settings
        if s.temporal_address is not None:
            try:
                wait_until(lambda: temporal_healthy(s.temporal_address or "", s.temporal_namespace), "Temporal", 15)
            except StackError:
                raise StackError(f"TEMPORAL_ADDRESS {s.temporal_address} is not reachable (waited 15 s)") from None
            return s.temporal_address
        t0 = time.monotonic()
        proc = self.spawn("temporal", dev_server_command(s, self.home, f"{self.api_url}/codec"))
        address = f"127.0.0.1:{s.temporal_port}"
        wait_until(
            lambda: temporal_healthy(address, s.temporal_namespace),
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
            lambda: localmodel.answers(base),
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

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> tuple[dict[str, Any], str | None]:
        """Start every part in order and wait for each; returns (what to show of it, the local key
        if new). The supervisor adds each part's state and writes it all to ``state_file``."""
        self.check_ports()
        try:
            db_url = self.start_postgres()
            new_key = ensure_local_user(self.key_file, db_url)
            temporal = self.start_temporal()
            self.settings.temporal_keys()  # made here on first use (QUIRE_HOME/temporal.key, 0600)
            self.settings.operator_token(create=True)  # the codec server's, made here once (0600)
            self.env = {
                "DATABASE_URL": db_url,
                "TEMPORAL_ADDRESS": temporal,
                "TEMPORAL_NAMESPACE": self.settings.temporal_namespace,
                "QUIRE_WORKER_METRICS_PORT": str(self.worker_metrics_port),
                # The operator's explicit choice, passed on (off unless QUIRE_WEBHOOK_ALLOW_LOOPBACK says so).
                "QUIRE_WEBHOOK_ALLOW_LOOPBACK": str(self.settings.webhook_policy.allow_loopback).lower(),
                "QUIRE_HOME": str(self.home),  # the worker and the API read the same key
                # One worker, one install: its build stays current (README: Deploying new code).
                "QUIRE_BUILD_ID": self.settings.quire_build_id,
            }
            self.settings.secret_keys()  # made here, once, before the API and the worker read it
            if self.settings.uses_local_model:
                from quire.localmodel import MODEL_ALIAS

                self.env["OPENAI_BASE_URL"] = self.start_local_model()
                self.env["QUIRE_MODEL"] = MODEL_ALIAS  # the one model the local server serves
                # The children see OPENAI_BASE_URL set, so "auto" would pick the instruct style there.
                self.env["QUIRE_PROMPT_STYLE"] = self.settings.prompt_style
                self.env["QUIRE_LLM_CONCURRENCY"] = str(self.settings.llm_concurrency)
            if self.settings.quire_start_worker:
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
            "codec_url": f"{self.api_url}/codec",
            "metrics_url": f"{self.api_url}/metrics",
            "worker_metrics_url": self.worker_metrics_url,
            "temporal_address": temporal,
            "llm_url": self.env.get("OPENAI_BASE_URL"),
            "embedded_postgres": self.started_postgres,
            "key_file": str(self.key_file),
            "new_key": new_key is not None,
            "logs": str(self.logs),
        }
        return state, new_key

    def stop(self) -> None:
        """Stop the children in reverse start order (API, worker, model, Temporal), then Postgres.

        In order rather than all at once: the worker shuts down cleanly while Temporal is still up.
        """
        for name, proc in reversed(self.children()):
            stop_group(name, proc.pid, proc)
        self.procs.clear()
        if self.started_postgres:
            log.info("stopping", part="postgres")
            stop_embedded_postgres(self.home)
            self.started_postgres = False
        self.state_file.unlink(missing_ok=True)
