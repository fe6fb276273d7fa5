"""Fault points: the places where a crash leaves Postgres and Temporal disagreeing, each between a
commit and the Temporal call it records (a job's start, a resume's, an edit's, a plan review's
Update). ``QUIRE_FAULT=<point>[,<point>...]`` makes the process kill itself (SIGKILL, as an OOM
kill or a lost host would) when it reaches one: how the tests and ``bench.bench_restarts`` crash the
API exactly there, for the reconciler to settle. Unset, as in any deployment, nothing happens.
"""

from __future__ import annotations

import os
import signal

POINTS = ("submit", "resume", "edit", "review")


def reached(point: str) -> None:
    armed = os.environ.get("QUIRE_FAULT")
    if armed and point in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
