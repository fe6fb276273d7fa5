"""``quire keys make|rotate|export``: the operator's key that signs audit checkpoints
(QUIRE_HOME/audit.key, 0600) and the public keys that check them (QUIRE_HOME/audit.pub; export
prints them for verifiers). Runs on this machine: no API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quire.errors import CliError, Exit
from services.config import load_settings


def register(sub: Any) -> None:
    k = sub.add_parser(
        "keys",
        help="the key that signs audit checkpoints: make one, rotate it, export the public keys",
        description="make: a new signing key in QUIRE_HOME/audit.key (0600); rotate: a new one signs from now "
        "on, the old public key kept; export: print every public key, newest first (for `quire audit verify "
        "--key`). Each prints the public keys on stdout.",
    )
    k.add_argument("action", choices=["make", "rotate", "export"])
    k.add_argument("--name", default="quire", help="the key's name (in each signature line)")
    k.set_defaults(fn=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    from services import auditkeys

    settings = load_settings()
    home = settings.home
    if args.action == "make":
        try:
            key = auditkeys.make(home, args.name)
        except auditkeys.KeyExists as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        print(f"made {key.verifier.name}+{key.verifier.id_hex} in {home / auditkeys.KEY_FILE}", file=sys.stderr)
    elif args.action == "rotate":
        new, old = auditkeys.rotate(home, args.name)
        was = f"; {old.verifier.name}+{old.verifier.id_hex} no longer signs" if old else ""
        print(f"{new.verifier.name}+{new.verifier.id_hex} signs from now on{was} (restart the stack)", file=sys.stderr)
        if settings.quire_audit_key is not None:
            print("quire: QUIRE_AUDIT_KEY is set and wins over QUIRE_HOME/audit.key: change it too", file=sys.stderr)
    keys = settings.audit_public_keys()
    if not keys:
        raise CliError(f"no audit key yet in {home} (`quire keys make`, or `quire up` makes one)", Exit.USAGE)
    for k in keys:  # stdout: what verifiers pass to `quire audit verify --key`
        print(k.text())
    return Exit.OK
