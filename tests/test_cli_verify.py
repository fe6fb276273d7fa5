"""`quire audit verify JOB` and `GET .../audit/verify` read the same log from the same database: they
must reach the same counts. The CLI's process imports less than the API's; whatever it imports,
every table must be known (``db`` registers every model module), or rows it cannot look up would
read as deleted."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from db.models import Base
from tests.conftest import AUDIT_KEY
from tests.helpers import arun, auth, follow_to_end

pytestmark = pytest.mark.usefixtures("worker")


def test_every_table_is_known_whatever_a_process_imports_first():
    """A fresh process that imports only what `quire audit verify` imports knows every table."""
    probe = "import quire.verify, db.models as m; print(sorted(m.Base.metadata.tables))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert eval(out) == sorted(Base.metadata.tables)  # noqa: S307 - our own probe's repr of a list of names
    assert {"chunk_attempts", "chunk_versions", "coherence_states", "ledger_entries"} <= set(Base.metadata.tables)


async def test_the_cli_and_the_api_verify_a_log_to_the_same_counts(http, fake, user, pg_url, tmp_path):
    fake.reset()  # extensions, memory calls and repairs: references to attempts, versions, states, ledger
    spec = {"kind": "generate", "prompt": "Salt roads", "target_words": 1500, "options": {"chunk_words": 500}}
    r = await http.post("/v1/jobs", json=spec, headers=auth(user))
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    api = (await http.get(f"/v1/jobs/{jid}/audit/verify", headers=auth(user))).json()
    assert api["intact"] and api["references_checked"] > 0 and api["references_gone"] == 0, api

    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    code, out, err = await arun("audit", "verify", jid, "--url", pg_url, env={"QUIRE_HOME": str(tmp_path)})
    assert code == 0, out + err

    def count(pattern: str) -> int:
        found = re.search(pattern, out)
        return int(found.group(1)) if found else 0

    cli = {
        "events": count(r"\n  (\d+) events"),
        "references_checked": count(r"(\d+) long values the log names by reference"),
        "references_gone": count(r"(\d+) referenced rows no longer stored"),
        "anchors_checked": count(r"(\d+) document heads"),
    }
    assert cli == {k: api[k] for k in cli}, out
