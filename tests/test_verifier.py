"""The verifier fails closed: with the operator's key, a log stripped of its checkpoints fails, a log
cut short fails (or, cut at a checkpoint, is partial: exit 1 unless --partial), a witness's
cosignature is required when named; malformed input is exit 2 with a clear message, never a
traceback, whatever a fuzzer feeds it."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import checkpoint, merkle
from core.chain import verify_events
from core.eventformat import GENESIS, TXT_HEADER, event_hash, ts_text, txt_line
from core.logfile import CHECKPOINT_TXT, LogError, parse_log
from quire import verify
from quire.errors import CliError
from tests.conftest import AUDIT_KEY
from tests.helpers import arun, auth, follow_to_end

PUBLIC = [AUDIT_KEY.verifier]


async def _download(http, user, tmp_path: Path) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "Kelp", "target_words": 80}, headers=auth(user))
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    r = await http.get(f"/v1/jobs/{jid}/audit?download=1", headers=auth(user))
    return jid, r.json()


def _cut(doc: dict[str, Any], last: int) -> dict[str, Any]:
    """The download with the events after seq ``last`` removed, and the checkpoints covering them:
    what someone cutting the log's end would hand over (its head restated)."""
    out = copy.deepcopy(doc)
    out["events"] = [e for e in out["events"] if e["seq"] <= last]
    out["checkpoints"] = [c for c in out["checkpoints"] if c["tree_size"] <= last]
    out["head_seq"], out["head_hash"] = last, out["events"][-1]["hash"]
    return out


async def _verify(tmp_path: Path, doc: dict[str, Any] | str, *extra: str) -> tuple[int, str]:
    path = tmp_path / f"log-{uuid.uuid4().hex[:6]}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code, out, err = await arun(
        "audit", "verify", "--file", str(path), "--key", str(tmp_path / "audit.pub"), *extra, env={}
    )
    assert "Traceback" not in err, err
    return code, out + err


@pytest.mark.usefixtures("worker")
async def test_a_stripped_or_truncated_download_fails_and_a_whole_one_passes(http, user, fake, tmp_path, witness):
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    (tmp_path / "witness.pub").write_text(witness.key.text() + "\n")
    jid, doc = await _download(http, user, tmp_path)
    n = doc["head_seq"]
    code, out = await _verify(tmp_path, doc, "--witness", str(tmp_path / "witness.pub"))
    assert code == 0 and "intact, whole to its job's end" in out and f"cosigned by {witness.key.label}" in out, out
    assert "the log ends at the checkpoint signed for its download" in out

    code, out = await _verify(tmp_path, {**doc, "checkpoints": []})  # stripped
    assert code == 1 and "no signed checkpoint: the log was stripped" in out, out
    code, out = await _verify(tmp_path, _cut(doc, n - 3))  # its last 3 events and their checkpoints removed
    assert code == 1, out
    ends = [c["tree_size"] for c in doc["checkpoints"]]
    code, out = await _verify(tmp_path, _cut(doc, ends[-2]))  # cut right at the checkpoint before the last
    assert code == 1 and "PARTIAL" in out and "not at a download's: it may have been cut there" in out, out
    code, out = await _verify(tmp_path, _cut(doc, ends[-2]), "--partial")  # said, and accepted when asked
    assert code == 0 and "PARTIAL" in out, out
    end_seq = next(e["seq"] for e in doc["events"] if e["kind"] == "job" and e["data"].get("terminal"))
    before_end = max(s for s in ends if s < end_seq)
    code, out = await _verify(tmp_path, _cut(doc, before_end))  # cut before the job's end
    assert code == 1 and "does not reach its job's end" in out, out
    kept = {**doc, "checkpoints": doc["checkpoints"][:-2] + doc["checkpoints"][-1:]}  # one taken from the middle
    code, out = await _verify(tmp_path, kept)
    assert code == 1 and "checkpoints were removed" in out, out
    uncosigned = copy.deepcopy(doc)
    note = uncosigned["checkpoints"][-1]["note"]
    uncosigned["checkpoints"][-1]["note"] = "".join(
        line + "\n" for line in note.split("\n")[:-1] if not line.startswith(f"{checkpoint.DASH} {witness.key.name} ")
    )
    code, out = await _verify(tmp_path, uncosigned)
    assert code == 0, out  # the operator's signature holds...
    code, out = await _verify(tmp_path, uncosigned, "--witness", witness.key.text())
    assert code == 1 and f"carries no cosignature of witness {witness.key.label}" in out, out  # ...no witness's
    for fmt in ("ndjson", "txt"):  # stripped in every format
        text = (await http.get(f"/v1/jobs/{jid}/audit?download=1&format={fmt}", headers=auth(user))).text
        lines = [ln for ln in text.split("\n") if ln and not ln.startswith((CHECKPOINT_TXT, '{"checkpoint"'))]
        code, out = await _verify(tmp_path, "\n".join(lines) + "\n")
        assert code == 1 and "no signed checkpoint" in out, (fmt, out)


def _log(n: int = 6, ended: bool = True) -> dict[str, Any]:
    """A small signed log built offline: ``n`` events (the last a job's end), checkpoints at 3 and n."""
    job_id, prev, tree = str(uuid.uuid4()), GENESIS, merkle.Frontier()
    events, notes = [], []
    for seq in range(1, n + 1):
        terminal = ended and seq == n
        e = {
            "seq": seq, "ts": ts_text(dt.datetime(2026, 12, 1, tzinfo=dt.UTC)), "kind": "job" if terminal else "user",
            "action": "succeeded" if terminal else "note", "table_name": None, "row_id": None, "sql_text": None,
            "data": {"terminal": True} if terminal else {"i": seq}, "chain": 2, "job_id": job_id, "prev_hash": prev,
        }  # fmt: skip
        prev = e["hash"] = event_hash(prev, e)
        tree.append(merkle.leaf_entry(prev))
        events.append(e)
        if seq in (3, n):
            end = seq if terminal else None
            body = checkpoint.body(
                job_id, seq, tree.root(), time=1, prev=3 if seq == n else 0, end=end, download=seq == n
            )
            notes.append({"tree_size": seq, "note": AUDIT_KEY.sign(body)})
    return {"job_id": job_id, "events": events, "head_seq": n, "head_hash": prev, "checkpoints": notes}


def test_a_running_jobs_log_is_partial_and_a_whole_one_complete():
    whole = _log()
    v = verify_events(
        whole["events"], checkpoints=[c["note"] for c in whole["checkpoints"]], keys=PUBLIC, download=True
    )
    assert v.intact and v.complete and v.end_seq == 6 and v.download
    running = _log(ended=False)
    v = verify_events(running["events"], checkpoints=[c["note"] for c in running["checkpoints"]], keys=PUBLIC)
    assert v.intact and not v.complete and "does not reach its job's end" in v.partial
    v = verify_events(whole["events"], keys=PUBLIC)
    assert not v.intact and "no signed checkpoint" in v.reason


def _garble(note: str) -> str:
    return note.replace("\n3\n", "\n3\n!")  # the root line no longer base64


MALFORMED = {  # each as a reader of a downloaded log might meet it
    "chain as text": lambda d: d["events"][1].update(chain="2"),
    "seq as text": lambda d: d["events"][0].update(seq="1"),
    "hash not hex": lambda d: d["events"][2].update(hash="zz" * 32),
    "data a list": lambda d: d["events"][2].update(data=[1]),
    "missing kind": lambda d: d["events"][3].pop("kind"),
    "bad base64 in a note": lambda d: d["checkpoints"][0].update(note=_garble(d["checkpoints"][0]["note"])),
    "a note not text": lambda d: d["checkpoints"][0].update(note=7),
    "events not a list": lambda d: d.update(events={"1": {}}),
    "head_seq as text": lambda d: d.update(head_seq="6"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_log_is_exit_2_with_what_is_wrong(case, tmp_path):
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    doc = _log()
    MALFORMED[case](doc)
    code, out = await _verify(tmp_path, doc)
    assert code == 2 and "malformed" in out, (case, out)


def _run(path: Path, *args: str) -> int:
    try:
        return verify.main(["--file", str(path), *args])
    except CliError as exc:
        return exc.code


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "seq",
    "ts",
    "kind",
    "action",
    "table_name",
    "row_id",
    "sql_text",
    "data",
    "chain",
    "job_id",
    "prev_hash",
    "hash",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=st.integers(0, 5),
    field=st.sampled_from([*FIELDS, "note", "head_seq", "head_hash", "job_id!"]),
    value=JSON,
    fmt=st.sampled_from(["json", "ndjson", "txt"]),
)
def test_the_verifier_under_a_fuzzer_answers_0_1_or_2_never_a_traceback(where, field, value, fmt, tmp_path):
    doc = _log()
    if field == "note":
        doc["checkpoints"][where % 2]["note"] = value
    elif field in ("head_seq", "head_hash"):
        doc[field] = value
    elif field == "job_id!":
        doc["job_id"] = value
    else:
        doc["events"][where][field] = value
    if fmt == "json":
        text = json.dumps(doc)
    elif fmt == "ndjson":
        text = "".join(json.dumps(e) + "\n" for e in doc["events"]) + "".join(
            json.dumps({"checkpoint": c["note"]}) + "\n" for c in doc["checkpoints"]
        )
    else:
        try:
            body = "".join(txt_line(e) for e in doc["events"])
        except (TypeError, ValueError, KeyError, AttributeError):
            return  # no TXT line can hold it
        text = TXT_HEADER + body + "".join(f"{CHECKPOINT_TXT}{json.dumps(c['note'])}\n" for c in doc["checkpoints"])
    try:
        log = parse_log(text)
    except LogError:
        pass
    else:  # whatever passes the reader, the verifier judges without raising
        verify_events(log.events, log.head_hash, log.head_seq, job_id=log.job_id, checkpoints=log.checkpoints,
                      keys=PUBLIC, download=True)  # fmt: skip
    path = tmp_path / "fuzz.log"
    path.write_text(text)
    (tmp_path / "audit.pub").write_text(AUDIT_KEY.verifier.text() + "\n")
    assert _run(path, "--key", str(tmp_path / "audit.pub")) in (0, 1, 2)
