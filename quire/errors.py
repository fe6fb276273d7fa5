"""The command line's exit codes and its one error type: every failure is one line and a code."""

from __future__ import annotations

import argparse
import os
import sys
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # a failed or cancelled job, or a failed check
    USAGE = 2  # a bad argument, or a request the API refused as bad
    UNREACHABLE = 3  # the API or a service is unreachable


class CliError(Exception):
    """A one-line reason and an exit code; ``quire.cli.main`` prints it as ``quire: reason``."""

    def __init__(self, message: str, code: int = Exit.FAILED) -> None:
        super().__init__(message)
        self.code = int(code)


def parse_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``p.parse_args(argv)``, but an unknown option is reported with the usage of the (sub)command
    it was given to, not quire's (each subparser puts itself in the namespace as ``parser_``)."""
    _own_parsers(p)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        getattr(args, "parser_", p).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _own_parsers(p: argparse.ArgumentParser) -> None:
    for action in p._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(parser_=child)
                _own_parsers(child)


def closed_pipe() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do, and say so by
    the status a shell gives a tool SIGPIPE ended (the rest of the output goes nowhere, no traceback)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + 13
