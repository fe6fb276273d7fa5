"""The checkpoint signing key (core.checkpoint), kept outside the database: ``QUIRE_AUDIT_KEY``, or
``QUIRE_HOME/audit.key`` (mode 0600, made once), and every public key ever used to sign, newest
first, in ``QUIRE_HOME/audit.pub`` (what ``quire keys export`` prints and verifiers need: a
checkpoint signed before a rotation is checked with the key of its day)."""

from __future__ import annotations

import os
from pathlib import Path

from core.checkpoint import SignerKey, VerifierKey, parse_keys

KEY_FILE = "audit.key"
PUB_FILE = "audit.pub"


class KeyExists(Exception):
    """``quire keys make`` where a key is already kept (rotate replaces one)."""


def _write_private(path: Path, content: str) -> bool:
    """Write ``content`` to ``path`` (0600) unless it exists; whether it was written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    try:
        os.link(tmp, path)  # atomic, and never over a key another process made meanwhile
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def public_keys(home: Path) -> list[VerifierKey]:
    path = home / PUB_FILE
    return parse_keys(path.read_text().splitlines()) if path.exists() else []


def _remember(home: Path, key: VerifierKey) -> None:
    keys = [key, *(k for k in public_keys(home) if k != key)]
    path = home / PUB_FILE
    # Public, but QUIRE_HOME keeps everything private (0600): `quire keys export` hands it out.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(k.text() + "\n" for k in keys))


def signer(home: Path, name: str = "quire") -> SignerKey:
    """The key in QUIRE_HOME, made on first use (by whichever process needs it first)."""
    path = home / KEY_FILE
    if not path.exists():
        _write_private(path, SignerKey.generate(name).text() + "\n")
    key = SignerKey.parse(path.read_text())
    if key.verifier not in public_keys(home):
        _remember(home, key.verifier)
    return key


def make(home: Path, name: str = "quire") -> SignerKey:
    if (home / KEY_FILE).exists():
        raise KeyExists(f"{home / KEY_FILE} already holds a key: `quire keys rotate` replaces it")
    return signer(home, name)


def rotate(home: Path, name: str = "quire") -> tuple[SignerKey, SignerKey | None]:
    """A new key signs from now on; the old one's public key stays in audit.pub. (new, old)."""
    path = home / KEY_FILE
    old = SignerKey.parse(path.read_text()) if path.exists() else None
    new = SignerKey.generate(name)
    tmp = path.with_name(f".{KEY_FILE}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new.text() + "\n")
    _remember(home, new.verifier)
    os.replace(tmp, path)
    return new, old
