"""``quire witness``: run a witness of Quire's logs (``services.witness``: C2SP tlog-witness, a key
and a SQLite file of its own), or print its public key for QUIRE_WITNESS_KEY and for verifiers
(``quire audit verify --witness``).

``quire up`` runs one by default, its storage in QUIRE_HOME/witness (outside Postgres). Run one
elsewhere (another machine, another operator) for a witness whoever holds the database cannot
reach: ``quire witness serve --dir DIR --log-keys audit.pub --listen 0.0.0.0:7380``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quire.errors import CliError, Exit

DEFAULT_LISTEN = "127.0.0.1:7380"


def _dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir).expanduser().resolve()
    from services.config import load_settings

    return load_settings().home / "witness"


def cmd_key(args: argparse.Namespace) -> int:
    from services.witness import witness_key

    print(witness_key(_dir(args), args.name).verifier.text())
    return Exit.OK


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from services import witness

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"--listen is HOST:PORT, not {args.listen!r}", Exit.USAGE)
    if args.log_keys:
        keys = Path(args.log_keys).expanduser().resolve()
    else:
        from services.config import load_settings

        keys = load_settings().home / "audit.pub"
    if not keys.exists():
        raise CliError(f"no operator's public keys at {keys} (`quire keys export > FILE`, then --log-keys FILE)")
    w = witness.Witness(_dir(args), keys, origin_prefix=args.origin_prefix, name=args.name)
    print(f"witness {w.key.verifier.text()} on http://{args.listen} (storage {w.directory})", file=sys.stderr)
    try:
        uvicorn.run(witness.app(w), host=host, port=int(port), log_level="warning")
    finally:
        w.close()
    return Exit.OK


def serve_command(home: Path, port: int) -> list[str]:
    """How ``quire up`` runs its own witness: storage in QUIRE_HOME/witness, trusting QUIRE_HOME/audit.pub."""
    return [sys.executable, "-m", "quire.cli", "witness", "serve", "--dir", str(home / "witness"),
            "--log-keys", str(home / "audit.pub"), "--listen", f"127.0.0.1:{port}"]  # fmt: skip


def key_text(home: Path, name: str = "quire-witness") -> str:
    from services.witness import witness_key

    return witness_key(home / "witness", name).verifier.text()


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def witnesses(settings: Any) -> list[Any]:
    """The witnesses to ask: QUIRE_WITNESS_URL's, else the one the running ``quire up`` serves."""
    import json

    from db.witness import parse_witnesses

    if settings.quire_witness_url:
        return list(settings.witnesses())
    state = settings.home / "stack.json"
    try:
        doc = json.loads(state.read_text()) if state.exists() else {}
    except (OSError, ValueError):
        doc = {}
    return parse_witnesses(doc.get("witness_url"), doc.get("witness_key"))


def register(sub: Any) -> None:
    """Add ``quire witness serve|key`` to the CLI's subcommands."""
    w = sub.add_parser(
        "witness",
        help="a witness of the audit logs (C2SP tlog-witness): serve one, or print its public key",
        description="A witness cosigns each checkpoint of a job's log once it has checked the operator's "
        "signature and that the tree extends the one it cosigned before, kept in storage of its own.",
    )
    ws = w.add_subparsers(dest="witness_cmd", required=True)
    for name, text, fn in (
        ("serve", "run the witness (HTTP: POST /add-checkpoint)", cmd_serve),
        ("key", "print its public key (QUIRE_WITNESS_KEY, `quire audit verify --witness`)", cmd_key),
    ):
        sp = ws.add_parser(name, help=text)
        sp.add_argument("--dir", help="its key and SQLite file (default QUIRE_HOME/witness)")
        sp.add_argument("--name", default="quire-witness", help="its key's name (default quire-witness)")
        sp.set_defaults(fn=fn)
        if name == "serve":
            sp.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
            sp.add_argument("--log-keys", help="the operator's public keys (default QUIRE_HOME/audit.pub)")
            sp.add_argument("--origin-prefix", default="quire/jobs/", help="the logs it witnesses (origin prefix)")
