"""The supervisor behind ``quire up``: start the stack, keep it up until asked to stop, and stop it
(``quire down``) from any state, including a supervisor that died without cleaning up."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from quire.processes import alive, create_time, stop_group
from quire.stack import Stack, stop_embedded_postgres
from services.config import Settings

log = structlog.get_logger(__name__)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the stack was starting; it unwinds ``Stack.up``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(settings: Settings, announce: Callable[[dict[str, Any], str | None], None]) -> int:
    """The supervisor: start the stack, ``announce`` it, and keep it up until SIGINT/SIGTERM.

    The pid file is written first, so `quire down` can stop a stack that is still starting.
    Returns the exit code: 0 after a clean stop, 1 if a part failed, 128+signal if interrupted
    while starting.
    """
    stack = Stack(settings)
    stack.home.mkdir(parents=True, exist_ok=True)
    flags = {"sig": 0, "starting": True}

    def on_signal(signum: int, _frame: Any) -> None:
        flags["sig"] = signum
        if flags["starting"]:
            # Unwind whatever wait is in progress; up() then stops what had started. Only once:
            # a second Ctrl-C must not break off that cleanup.
            flags["starting"] = False
            raise Interrupted(signum)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack.pid_file.write_text(f"{os.getpid()}\n")
    try:
        try:
            state, new_key = stack.up()
        except Interrupted as exc:
            stack.stop()  # idempotent; covers a signal that lands just after up() returned
            print(f"quire: interrupted ({exc}) while starting; stopped what had started", file=sys.stderr)
            return 128 + exc.signum
        flags["starting"] = False
        if flags["sig"]:
            stack.stop()
            return 0
        announce(state, new_key)
        return supervise(stack, lambda: bool(flags["sig"]))
    finally:
        # Signals that arrive now must not interrupt the cleanup itself.
        flags["starting"] = False
        if running_pid(stack.home) == os.getpid():
            stack.pid_file.unlink(missing_ok=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def running_pid(home: Path) -> int | None:
    """The pid of QUIRE_HOME's live supervisor, or None (a stale pid file is removed)."""
    pid_file = home / "quire.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b"quire" if alive(pid) else b""  # no /proc (macOS): trust a live pid
    if not alive(pid) or b"quire" not in cmdline:  # gone, or the pid now belongs to something else
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def down(home: Path, timeout: float = 60.0) -> bool:
    """Stop QUIRE_HOME's stack; True if anything was running.

    The supervisor stops its own children on SIGTERM. If it does not exit in time, or it died
    without cleaning up (SIGKILL, OOM), its children and Postgres are stopped from here.
    """
    stopped = False
    pid = running_pid(home)
    if pid is not None:
        stopped = True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # another process's exit: nothing to wait on but its pid
        if alive(pid):
            log.warning("supervisor did not stop; killing it", pid=pid)
            os.kill(pid, signal.SIGKILL)
    state_file = home / "stack.json"
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except ValueError:
            state = {}
        created = state.get("created", {})
        for name, child in reversed(list(state.get("procs", {}).items())):  # newest first, as Stack.stop
            if alive(child) and create_time(child) == created.get(name):
                stop_group(name, child)
                stopped = True
        state_file.unlink(missing_ok=True)
    if stop_embedded_postgres(home):
        stopped = True
    (home / "quire.pid").unlink(missing_ok=True)
    return stopped


def supervise(stack: Stack, stopping: Callable[[], bool]) -> int:
    """Block until ``stopping()`` or until a part dies; then stop everything. Returns the exit code."""
    code = 0
    while not stopping():
        dead = [(n, p) for n, p in stack.procs if p.poll() is not None]
        if dead:  # one part alone is no service: say which, and stop the rest
            name, proc = dead[0]
            print(
                f"quire: {name} exited with code {proc.returncode}; stopping everything (see {stack.logs / name}.log)",
                file=sys.stderr,
                flush=True,
            )
            code = 1
            break
        time.sleep(0.5)  # a child's exit is not an fd we can wait on together with signals
    stack.stop()
    return code
