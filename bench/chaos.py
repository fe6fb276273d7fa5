"""The chaos run of ``bench.bench_restarts --chaos``: nothing stays stuck, nothing is written twice.

A real stack (``quire up --detach``, the scripted model as its own process, the reconciler every
``period`` seconds), one job of ``words`` with a plan review, then two edits (a chapter
regenerated, twice). Meanwhile ``kills`` SIGKILLs in all: the API exactly between a commit and its
Temporal call for the review and for each edit (``QUIRE_FAULT=review,edit``: the process kills
itself there), the rest at random moments (seeded) of the API, the worker and Temporal, each after
the part killed before is back. After the last kill, once the API answers and one reconciler
period has passed: the rows that still disagree with Temporal (``quire doctor --dry-run``), the
events written twice (the same event, by its time, kind, action, statement and data, in a log more
than once), and the job's end (status, words, plan versions, edits, the log verified).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from quire.pg import embedded_database_url
from quire.supervisor import stack_status
from testkit import fake_model, stack_env

PARTS = ("api", "worker", "temporal")
QUIRE = [sys.executable, "-m", "quire.cli"]
# The same event twice: by what it says (its seq, hash and the markers of a late or rolled-back
# write aside), in one job's log.
TWICE = """
SELECT count(*) FROM (
  SELECT job_id, ts, kind, action, coalesce(sql_text, ''),
         data - 'rolled_back' - 'recorded_late' - 'deferred' - 'activity_seq'
    FROM audit_events GROUP BY 1, 2, 3, 4, 5, 6 HAVING count(*) > 1) twice
"""


def until(what: str, check: Callable[[], bool], timeout: float = 600) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)  # polling other processes, with a deadline
    return time.monotonic() - t0


class Chaos:
    def __init__(self, home: Path, env: dict[str, str], seed: int) -> None:
        self.home, self.env, self.rng = home, env, random.Random(seed)
        self.api_url = f"http://127.0.0.1:{env['API_PORT']}"
        self.kills: list[str] = []
        self.last_kill = time.monotonic()

    # -- the API, as a user calls it (a call the kill cut off is an error: the caller sees it) --
    def call(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        key = (self.home / "local-user.key").read_text().strip()
        try:
            return httpx.request(
                method, f"{self.api_url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30, **kw
            )
        except httpx.HTTPError:
            return None

    def get(self, path: str) -> Any:
        r = self.call("GET", path)
        return r.json() if r is not None and r.status_code == 200 else None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # -- kills ---------------------------------------------------------------------------------
    def kill(self, part: str | None = None) -> None:
        """SIGKILL a part (at random: one of the API, the worker, Temporal) and wait until it is
        back and the API answers."""
        part = part or self.rng.choice(PARTS)
        until("the stack to be up", self.ready)
        old = stack_status(self.home, [])["parts"][part]["pid"]
        os.kill(old, signal.SIGKILL)
        self.note(part)

        def back() -> bool:
            p = stack_status(self.home, [])["parts"][part]
            return bool(p["state"] == "running" and p["pid"] != old)

        until(f"{part} back", back)
        until("the API ready", self.ready)

    def note(self, what: str) -> None:
        self.kills.append(what)
        self.last_kill = time.monotonic()
        print(f"  kill {len(self.kills):>2}: {what}", flush=True)

    def faulted(self, what: str, send: Callable[[], httpx.Response | None]) -> None:
        """A call whose API process kills itself between its commit and its Temporal call."""
        until("the API ready", self.ready)
        r = send()
        if r is not None:
            raise SystemExit(f"{what}: the API answered {r.status_code} ({r.text[:200]}) instead of dying")
        self.note(f"api at its fault point ({what})")
        until("the API back", self.ready)

    def while_(self, busy: Callable[[], bool], kills: int) -> int:
        """Up to ``kills`` random kills, a random 0.5-3 s apart, while ``busy()``; then wait for it
        to end. The kills made."""
        made = 0
        for _ in range(kills):
            time.sleep(self.rng.uniform(0.5, 3.0))  # the random moment itself
            if not busy():
                break
            self.kill()
            made += 1
        until("the work to end", lambda: not busy(), timeout=1800)
        return made


def run(*, kills: int, words: int, period: float, seed: int, delay: float = 4.0) -> None:
    home = Path("/tmp") / f"qc-{uuid.uuid4().hex[:6]}"
    with fake_model("--delay", str(delay)) as model_url:
        env = stack_env(
            home,
            model_url,
            QUIRE_RECONCILE_EVERY_S=str(period),
            QUIRE_RECONCILE_GRACE_S=str(period / 2),
            QUIRE_RETRY_MAX_INTERVAL_S="2",
            QUIRE_FAULT="review,edit",
        )
        t0 = time.monotonic()
        subprocess.run([*QUIRE, "up", "--detach"], env=env, check=True, capture_output=True)
        print(f"stack up in {time.monotonic() - t0:.1f} s (QUIRE_HOME {home}); reconciler every {period:g} s")
        c = Chaos(home, env, seed)
        try:
            report(c, *story(c, kills, words), period=period)
        finally:
            subprocess.run([*QUIRE, "down"], env=env, capture_output=True)
            shutil.rmtree(home, ignore_errors=True)


def story(c: Chaos, kills: int, words: int) -> tuple[str, float]:
    """The job, its review and two edits, with the kills; the job's id and when it all began."""
    t0 = time.monotonic()
    r = c.call("POST", "/v1/jobs", json={"kind": "generate", "prompt": "The lighthouse keepers of the north",
                                          "target_words": words, "options": {"review_plan": True}})  # fmt: skip
    assert r is not None and r.status_code == 202, r and r.text
    job = r.json()["id"]
    left = kills - 3  # random ones: the review's and the two edits' are the API at its fault point
    print(f"job {job}: {words} words, plan review; {kills} kills")

    def awaiting() -> bool:
        plan = c.get(f"/v1/jobs/{job}/plan")
        return bool(plan and plan["awaiting_review"])

    left -= c.while_(lambda: not awaiting(), 2)
    c.faulted("plan review", lambda: c.call("POST", f"/v1/jobs/{job}/plan", json={}))

    def running() -> bool:
        j = c.get(f"/v1/jobs/{job}")
        return j is None or j["status"] in ("queued", "running")

    left -= c.while_(running, left - 4)  # four, at least, kept for the edits
    items = c.get(f"/v1/jobs/{job}/plan")["items"]
    for n in (1, 2):
        node = items[n % len(items)]["node"]
        c.faulted(f"edit {n}", lambda node=node: c.call("POST", f"/v1/jobs/{job}/nodes/{node}/regenerate", json={}))

        def editing(n: int = n) -> bool:
            edits = c.get(f"/v1/jobs/{job}/edits")
            return edits is None or not any(e["number"] == n and e["status"] != "running" for e in edits)

        left -= c.while_(editing, left // 2 if n == 1 else left)
    return job, t0


def report(c: Chaos, job: str, t0: float, *, period: float) -> None:
    until("the API ready", c.ready)
    waited = time.monotonic() - c.last_kill
    if waited < period:
        time.sleep(period - waited)  # the measurement's point: one reconciler period after the last kill
    doctor = subprocess.run([*QUIRE, "doctor", "--dry-run"], env=c.env, capture_output=True, text=True)
    stuck = [ln for ln in doctor.stdout.splitlines() if "[dry run" in ln or ln.startswith("could not check")]
    with psycopg.connect(embedded_database_url(c.home) or "") as conn:
        twice = conn.execute(TWICE).fetchone()[0]  # type: ignore[index]
        settled = conn.execute(
            "SELECT action, data->>'by', count(*) FROM audit_events WHERE kind = 'reconcile' GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
        versions = conn.execute(
            "SELECT version, status FROM plan_versions WHERE job_id = %s ORDER BY 1", (job,)
        ).fetchall()
        edits = conn.execute("SELECT number, status FROM edits WHERE job_id = %s ORDER BY 1", (job,)).fetchall()
    j = c.get(f"/v1/jobs/{job}")
    verdict = c.get(f"/v1/jobs/{job}/audit/verify") or {}
    print(f"{len(c.kills)} kills in {time.monotonic() - t0:.0f} s: " + json.dumps(dict(_count(c.kills))))
    print(f"stuck rows one period ({period:g} s) after the last kill: {len(stuck)}")
    for line in stuck:
        print(f"  {line}")
    print(f"events written twice: {twice}")
    print(
        f"job: {j['status']}, {j.get('output_words')} words of {j['target_words']} "
        f"(target met: {j.get('target_met')}); "
        f"plan versions {versions}; edits {edits}; log intact: {verdict.get('intact')} ({verdict.get('events')} events)"
    )
    print(f"settled by the reconciler: {[tuple(r) for r in settled]}")


def _count(kills: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kills:
        key = k.split(" ")[0]
        out[key] = out.get(key, 0) + 1
    return out
