"""How long each part of `quire up` is gone after a kill -9, and what watching costs the supervisor.

Brings a real stack up (`quire up --detach`, scripted model as its own process) in a throwaway
QUIRE_HOME, kills each part in turn with SIGKILL and times, from the kill: the supervisor seeing
the part running again under a new pid, and the API answering /readyz 200 again. Then measures
the supervisor's own CPU time over an idle period.

    .venv/bin/python -m bench.bench_restarts [--rounds 2] [--idle 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from quire.supervisor import stack_status
from testkit import fake_model, free_port

PARTS = ("postgres", "temporal", "worker", "api")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def restarted(home: Path, name: str, old: int) -> bool:
    p = stack_status(home, [])["parts"][name]
    return bool(p["state"] == "running" and p["pid"] != old)


def until(check, timeout: float = 120) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit("timed out")
        time.sleep(0.05)  # polling other processes, with a deadline
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="kills per part")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle supervision to measure")
    a = ap.parse_args()
    home = Path("/tmp") / f"qb-{uuid.uuid4().hex[:6]}"
    with fake_model() as model_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("QUIRE_", "DATABASE_URL", "TEMPORAL_"))},
            "QUIRE_HOME": str(home),
            "OPENAI_BASE_URL": model_url,
            "API_PORT": str(free_port()),
            "TEMPORAL_PORT": str(free_port()),
            "TEMPORAL_UI_PORT": str(free_port()),
            "QUIRE_WORKER_METRICS_PORT": str(free_port()),
            "QUIRE_WITNESS_PORT": str(free_port()),
        }
        quire = [sys.executable, "-m", "quire.cli"]
        api = f"http://127.0.0.1:{env['API_PORT']}"
        t0 = time.monotonic()
        subprocess.run([*quire, "up", "--detach"], env=env, check=True, capture_output=True)
        print(f"stack up in {time.monotonic() - t0:.1f} s (QUIRE_HOME {home})")

        def ready() -> bool:
            try:
                return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            print(f"{'part':<10} {'round':>5}  {'back (s)':>8}  {'API ready (s)':>13}")
            for name in PARTS:
                for n in range(1, a.rounds + 1):
                    until(ready)
                    old = stack_status(home, [])["parts"][name]["pid"]
                    t0 = time.monotonic()
                    os.kill(old, signal.SIGKILL)
                    until(lambda name=name, old=old: restarted(home, name, old))
                    back = time.monotonic() - t0
                    until(ready)
                    print(f"{name:<10} {n:>5}  {back:>8.2f}  {time.monotonic() - t0:>13.2f}")
            sup = stack_status(home, [])["supervisor_pid"]
            c0, t0 = cpu_seconds(sup), time.monotonic()
            time.sleep(a.idle)  # the measurement itself: an idle period
            c1, t1 = cpu_seconds(sup), time.monotonic()
            share = 100 * (c1 - c0) / (t1 - t0)
            print(f"supervisor CPU while idle: {c1 - c0:.2f} s over {t1 - t0:.0f} s ({share:.2f} %)")
        finally:
            subprocess.run([*quire, "down"], env=env, capture_output=True)
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
