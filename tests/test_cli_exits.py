"""The CLI's manners, as the README's exit codes promise them: a cancelled job's status exits 1, a
name already taken exits 2 (a request refused), an unknown option shows the usage of the command
it was given to, a closed pipe ends the CLI quietly, and an empty answer says that it is empty."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import pytest

from testkit import until
from tests.helpers import QUIRE, arun, auth, follow_to_end, run

pytestmark = pytest.mark.usefixtures("worker")


def env_of(api_url: str, user) -> dict[str, str]:
    return {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": user.api_key, "QUIRE_HOME": "/nonexistent"}


async def test_a_cancelled_jobs_status_exits_1(api_url, http, fake, user):
    fake.reset()
    # Its plan waits for a review that never comes: the job is in flight until it is cancelled,
    # however slow the machine (a model delay raced the CLI's start under load).
    body = {"kind": "generate", "prompt": "Canals", "target_words": 900, "options": {"review_plan": True}}
    jid = (await http.post("/v1/jobs", json=body, headers=auth(user))).json()["id"]
    code, out, _ = await arun("status", jid, env=env_of(api_url, user))
    assert code == 0 and f"{jid} " in out  # a running job's status is no failure
    assert (await http.post(f"/v1/jobs/{jid}/cancel", headers=auth(user))).status_code in (200, 202)

    async def cancelled() -> bool:
        return (await http.get(f"/v1/jobs/{jid}", headers=auth(user))).json()["status"] == "cancelled"

    await until("the job cancelled", cancelled, 60)
    code, out, _ = await arun("status", jid, env=env_of(api_url, user))
    assert code == 1 and "cancelled" in out


async def test_a_name_taken_exits_2_and_says_what_to_do(pg_url):
    name = f"taken-{uuid.uuid4().hex[:6]}"
    assert (await arun("user", "add", name, "--url", pg_url, env={}))[0] == 0
    code, out, err = await arun("user", "add", name, "--url", pg_url, env={})
    assert code == 2 and out == "" and f"user '{name}' already exists" in err and f"quire user key {name}" in err


def test_an_unknown_option_shows_the_usage_of_its_command():
    r = run("history", "--bogus")
    assert (
        r.returncode == 2
        and r.stderr.startswith("usage: quire history")
        and "unrecognized arguments: --bogus" in r.stderr
    )
    r = run("user", "add", "x", "--bogus")  # a command of a command: its own usage too
    assert r.returncode == 2 and r.stderr.startswith("usage: quire user add") and "--bogus" in r.stderr


async def test_a_closed_pipe_ends_quietly_and_empty_answers_say_so(api_url, http, fake, user):
    env = env_of(api_url, user)
    code, out, err = await arun("history", env=env)  # a new user: no job yet
    assert code == 0 and out == "" and "no jobs" in err
    fake.reset()
    jid = (await http.post("/v1/jobs", json={"kind": "generate", "prompt": "Locks", "target_words": 300},
                           headers=auth(user))).json()["id"]  # fmt: skip
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    code, out, err = await arun("diff", jid, "1", "1", env=env)
    assert code == 0 and out == "" and "the same text: no difference" in err
    code, out, err = await arun("edits", jid, env=env)
    assert code == 0 and out == "" and "no edits yet" in err

    # `quire history | head`, with the reader gone before the CLI writes: no traceback, the status of SIGPIPE.
    def piped() -> tuple[int, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TEMPORAL_", "QUIRE_"))}
        proc = subprocess.Popen(
            [*QUIRE, "history"], env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        proc.stdout.close()  # type: ignore[union-attr]
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err.decode()

    code, err = await asyncio.to_thread(piped)
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


async def test_the_cli_shows_the_jobs_own_elapsed_time_as_its_page_does(api_url, fake, user):
    fake.reset()
    env = env_of(api_url, user)
    code, out, err = await arun("submit", "Weirs", "--words", "300", "--follow", "--quiet", env=env)
    assert code == 0, err
    code, shown, _ = await arun("status", out.split()[0], "--json", env=env)
    elapsed = json.loads(shown)["elapsed_seconds"]  # what the job page shows, rounded half up
    bar = [ln for ln in err.splitlines() if ln.startswith("words ")][-1]  # the progress bar's last frame
    assert f" {int(elapsed + 0.5)} s " in bar, bar
