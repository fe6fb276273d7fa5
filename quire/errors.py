"""The command line's exit codes and its one error type: every failure is one line and a code."""

from __future__ import annotations

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
