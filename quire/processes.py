"""Child processes of the embedded stack: ports, waiting for health, and stopping a process group.

Each child runs in a session of its own, so stopping it (SIGTERM, then SIGKILL after
``STOP_TIMEOUT_S``) also stops whatever it forked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)
STOP_TIMEOUT_S = 10.0  # per child: SIGTERM, then SIGKILL after this long
EXIT_UNSEEN = -(2**16)  # the "exit code" of a process that died as someone else's child


class StackError(Exception):
    """A part of the stack could not start; the message says which and why."""


def port_in_use(host: str, port: int) -> bool:
    # Binding (not connecting) also catches a listener on 0.0.0.0 and ports held without listening.
    # SO_REUSEADDR so that sockets of a stack that just stopped (TIME_WAIT) do not count as busy.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``check`` until it is true; fail clearly if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc is not None and proc.poll() is not None:
            last = tail(log_file)
            raise StackError(
                f"{what} exited with code {proc.returncode}" + (f"; last lines of {log_file}:\n{last}" if last else "")
            )
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f} s" + (f"; see {log_file}" if log_file else ""))
        time.sleep(0.2)


def tail(path: Path | None, n: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def write_atomic(path: Path, text: str) -> None:
    """Readers (``quire up --detach`` and ``quire status`` read stack.json) never see half a file;
    the file is private (0600) whatever the umask."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a leftover .tmp keeps its old mode through O_CREAT
        f.write(text)
    os.replace(tmp, path)


def create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def stop_group(name: str, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group is gone already
        if proc is not None:
            proc.wait()  # reap it
        return
    log.info("stopping", part=name, pid=pid)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    exited = False
    while not exited and time.monotonic() < deadline:
        if proc is not None:
            try:
                proc.wait(timeout=0.1)
                exited = True
            except subprocess.TimeoutExpired:
                pass
        else:
            exited = not alive(pid)
            if not exited:
                time.sleep(0.1)  # not our child: nothing to wait on but its pid
    if not exited:
        log.warning("did not stop in time; killing", part=name, pid=pid, after_s=STOP_TIMEOUT_S)
    try:  # also whatever the leader forked and left behind in its group
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
