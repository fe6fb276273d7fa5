"""Secrets kept in QUIRE_HOME's files (private, 0600): made on first use by whichever process needs
one first, written whole under another name and linked into place (atomic, and never over one
another process made meanwhile); every other process reads it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def private_file(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, made with ``make`` if there is none yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make() + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
