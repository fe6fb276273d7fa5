"""The supervisor behind ``quire up``: start the stack, keep every part up until asked to stop, and
stop it (``quire down``) from any state, including a supervisor that died without cleaning up.

A part that dies (Postgres, Temporal, the local model, the worker, the API) is started again on
the same data, ports and environment, after a backoff that doubles with each death or failed
restart in a row (capped) and starts over once the part has stayed up a while. Each death and
restart is logged (structlog: the terminal, or logs/supervisor.log when detached) and recorded
in stack.json, which ``quire status`` reads. Only SIGINT/SIGTERM (``quire down``) stops it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from quire.pg import stop_embedded_postgres
from quire.privacy import make_home
from quire.processes import EXIT_UNSEEN, alive, create_time, stop_group, write_atomic
from quire.stack import Stack
from services.config import Settings

log = structlog.get_logger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0  # a part that ran this long before dying starts its backoff over
POLL_S = 0.5  # how soon a death is noticed


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the stack was starting or a part restarting; it unwinds that."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def backoff(failures: int) -> float:
    """Seconds before the next start of a part that failed ``failures`` times in a row (>= 1)."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1)))


def after_death(failures: int, ran_s: float) -> int:
    """The failures in a row once a part that ran ``ran_s`` seconds died: a part that had been
    healthy a while starts its backoff over, a crash-looping one waits longer each time."""
    return 1 if ran_s >= HEALTHY_RESET_S else failures + 1


def describe_exit(code: int) -> str:
    if code == EXIT_UNSEEN:
        return "gone (not our child: how it ended was not seen)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Part:
    name: str
    pid: int | None
    state: str = "running"  # running | restarting
    since: float = field(default_factory=time.time)  # wall clock: when it entered this state
    up_at: float = field(default_factory=time.monotonic)  # when it last became healthy
    restarts: int = 0  # times the supervisor started it again
    failures: int = 0  # deaths and failed restarts in a row: the backoff's exponent
    retry_at: float = 0.0
    last_exit: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self.pid,
            "since": self.since,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(self, stack: Stack, info: dict[str, Any], flags: dict[str, int]) -> None:
        self.stack, self.info, self.flags = stack, info, flags
        self.started = _started(os.getpid())
        self.parts = {n: Part(n, stack.pid(n), since=_started(stack.pid(n))) for n in stack.parts()}

    def save(self) -> None:
        """stack.json: what `quire status` shows and what `quire down` stops if we die."""
        procs = {n: p.pid for n, p in self.stack.children()}  # in start order: `quire down` stops newest first
        state = {
            **self.info,
            "pid": os.getpid(),
            "started_at": self.started,
            "procs": procs,
            # create_time lets `quire down` tell our children from a process that later got the same pid.
            "created": {n: create_time(pid) for n, pid in procs.items()},
            "parts": {n: p.view() for n, p in self.parts.items()},
        }
        write_atomic(self.stack.state_file, json.dumps(state, indent=2))

    def run(self) -> int:
        """Watch and restart until SIGINT/SIGTERM; then stop everything. Returns the exit code (0)."""
        try:
            while not self.flags["sig"]:
                self.notice_deaths()
                self.restart_due()
                reap_orphans({p.pid for p in self.parts.values() if p.pid is not None})
                time.sleep(POLL_S)  # a child's exit is not an fd we can wait on together with signals
        except Interrupted:
            pass  # a signal broke off a restart: stop as asked
        finally:
            self.flags["busy"] = 0  # a second signal must not break off the cleanup
            self.stack.stop()
        return 0

    def notice_deaths(self) -> None:
        for p in self.parts.values():
            code = self.stack.exited(p.name) if p.state == "running" else None
            if code is None:
                continue
            ran = time.monotonic() - p.up_at
            p.failures = after_death(p.failures, ran)
            delay = backoff(p.failures)
            p.last_exit = {"pid": p.pid, "how": describe_exit(code), "at": time.time(), "ran_s": round(ran, 1)}
            log.warning(
                "part died; restarting it",
                part=p.name,
                pid=p.pid,
                exit=describe_exit(code),
                ran_s=round(ran, 1),
                restart_in_s=delay,
                log=self._log_of(p.name),
            )
            p.state, p.pid, p.since, p.retry_at = "restarting", None, time.time(), time.monotonic() + delay
            self.save()
            self._guarded(functools.partial(self.stack.clear, p.name))  # what its process group left

    def restart_due(self) -> None:
        for p in self.parts.values():  # in start order: Postgres and Temporal before their users
            if p.state != "restarting" or time.monotonic() < p.retry_at or self.flags["sig"]:
                continue
            p.restarts += 1
            log.info("restarting", part=p.name, restart=p.restarts)
            try:
                self._guarded(functools.partial(self.stack.restart, p.name))
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, try again later
                p.failures += 1
                delay = backoff(p.failures)
                log.warning("restart failed", part=p.name, error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                self._guarded(functools.partial(self.stack.clear, p.name))
                p.retry_at = time.monotonic() + delay
            else:
                p.state, p.pid, p.up_at = "running", self.stack.pid(p.name), time.monotonic()
                p.since = _started(p.pid)
                log.info("restarted", part=p.name, pid=p.pid, restarts=p.restarts)
            self.save()

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run a blocking step (a restart waits for health) that SIGINT/SIGTERM may break off."""
        self.flags["busy"] = 1
        try:
            fn()
        finally:
            self.flags["busy"] = 0

    def _log_of(self, name: str) -> str:
        if name == "postgres" and self.stack.pg is not None:
            return str(self.stack.pg.data / "log")
        return str(self.stack.logs / f"{name}.log")


def _started(pid: int | None) -> float:
    """When a part's process started (wall clock), for its uptime."""
    return (create_time(pid) if pid is not None else None) or time.time()


def become_subreaper() -> bool:
    """Linux: orphans of our children become ours. pg_ctl exits once Postgres is up; its postmaster
    is then reparented here, so its death is seen by waitpid like any child's."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_child_subreaper = 36
    return int(ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)) == 0


def reap_orphans(known: set[int]) -> None:
    """Reap dead orphans we inherited as a subreaper (backends that outlived a killed postmaster);
    the parts themselves are reaped where they are watched."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # look, do not reap
        except ChildProcessError:
            return
        if info is None or info.si_pid in known:
            return  # a part: notice_deaths reaps it on the next round
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            return


def run(settings: Settings, announce: Callable[[dict[str, Any], str | None], None]) -> int:
    """The supervisor: start the stack, ``announce`` it, and keep it up until SIGINT/SIGTERM.

    The pid file is written first, so `quire down` can stop a stack that is still starting.
    Returns the exit code: 0 after a stop, 128+signal if interrupted while starting.
    """
    stack = Stack(settings)
    make_home(stack.home)  # 0700, and a umask that keeps what we and the children create 0600
    become_subreaper()
    flags = {"sig": 0, "busy": 1}

    def on_signal(signum: int, _frame: Any) -> None:
        flags["sig"] = signum
        if flags["busy"]:
            # Unwind the wait in progress; what had started is then stopped. Only once: a second
            # Ctrl-C must not break off that cleanup.
            flags["busy"] = 0
            raise Interrupted(signum)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack.pid_file.write_text(f"{os.getpid()}\n")
    try:
        try:
            info, new_key = stack.up()
        except Interrupted as exc:
            stack.stop()  # idempotent; covers a signal that lands just after up() returned
            print(f"quire: interrupted ({exc}) while starting; stopped what had started", file=sys.stderr)
            return 128 + exc.signum
        flags["busy"] = 0
        if flags["sig"]:
            stack.stop()
            return 0
        sup = Supervisor(stack, info, flags)
        sup.save()  # `quire up --detach` waits for this file: the stack is healthy
        announce(info, new_key)
        return sup.run()
    finally:
        # Signals that arrive now must not interrupt the cleanup itself.
        flags["busy"] = 0
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


def stack_status(home: Path, parts: list[str]) -> dict[str, Any]:
    """What ``quire status`` shows: the supervisor and each part (state, pid, uptime, restarts), as
    the supervisor last recorded them. ``parts`` are those a stack with these settings runs."""
    pid = running_pid(home)
    now = time.time()
    state: dict[str, Any] = {}
    if pid is not None:
        try:
            state = json.loads((home / "stack.json").read_text())
        except (OSError, ValueError):  # still starting: the file is written once all is healthy
            state = {}
    recorded = state.get("parts", {})
    out: dict[str, Any] = {}
    for name in recorded or parts:
        p = dict(recorded.get(name) or {"state": "starting" if pid else "stopped", "pid": None, "restarts": 0})
        if p["state"] == "running" and p.get("pid") and not alive(p["pid"]):
            p["state"] = "exited"  # died a moment ago: the supervisor has not seen it yet
        p["uptime_s"] = round(now - p["since"], 1) if p["state"] == "running" and "since" in p else None
        out[name] = p
    started = state.get("started_at")
    return {
        "running": pid is not None,
        "supervisor_pid": pid,
        "uptime_s": round(now - started, 1) if pid is not None and started else None,
        "api_url": state.get("api_url"),
        "parts": out,
    }


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
