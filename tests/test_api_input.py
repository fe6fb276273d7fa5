"""Submitting through the API: bad input rejected precisely (exact status and message for bad JSON
fields, bad bodies, bad uploads, a missing or wrong key), the parallelism cap accepted at its
limit, and an uploaded file's name kept without its path. The main paths: test_api.py."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from db.models import Document, Job
from tests.helpers import auth, follow_to_end

pytestmark = pytest.mark.usefixtures("worker")


TARGET = "target_words must be an integer from 1 to 500,000"
PARALLELISM = "options.parallelism must be an integer from 1 to 100 (chapters written at the same time)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "generate", "prompt": "x", "target_words": "many"}, f'{TARGET} (got "many")'),
        ({"kind": "generate", "prompt": "x", "target_words": "300"}, f'{TARGET} (got "300")'),
        ({"kind": "generate", "prompt": "x", "target_words": 0}, f"{TARGET} (got 0)"),
        ({"kind": "generate", "prompt": "x", "target_words": -5}, f"{TARGET} (got -5)"),
        ({"kind": "generate", "prompt": "x", "target_words": 500_001}, f"{TARGET} (got 500001)"),
        ({"kind": "generate", "prompt": "x", "target_words": 12.5}, f"{TARGET} (got 12.5)"),
        ({"kind": "generate", "prompt": "x", "target_words": True}, f"{TARGET} (got true)"),
        ({"kind": "generate", "prompt": "x", "target_words": None}, f"{TARGET} (got null)"),
        ({"kind": "generate", "prompt": "x"}, "missing field 'target_words' (an integer from 1 to 500,000)"),
        ({"kind": "generate", "target_words": 10}, "kind 'generate' needs a non-empty 'prompt'"),
        ({"kind": "generate", "prompt": "  \n ", "target_words": 10}, "kind 'generate' needs a non-empty 'prompt'"),
        (
            {"kind": "rewrite", "target_words": 10},
            "kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)",
        ),
        (
            {"kind": "rewrite", "input_text": "", "prompt": "shorter", "target_words": 10},
            "kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)",
        ),
        ({"prompt": "x", "target_words": 10}, "missing field 'kind'"),
        ({"kind": "essay", "prompt": "x", "target_words": 10}, "Input should be 'generate' or 'rewrite'"),
        ({"kind": "generate", "prompt": "x", "target_words": 10, "colour": "red"}, "unknown field 'colour'"),
        (
            {"kind": "generate", "prompt": "x", "target_words": 10, "options": {"colour": 1}},
            "unknown field 'options.colour'",
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 10, "options": {"parallelism": 101}},
            f"{PARALLELISM} (got 101)",
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 10, "options": {"parallelism": 0}},
            f"{PARALLELISM} (got 0)",
        ),
        (
            {"kind": "generate", "prompt": "x", "target_words": 10, "options": {"parallelism": "8"}},
            f'{PARALLELISM} (got "8")',
        ),
        (
            # 199,998 bytes of UTF-8 that JSON-escape to ~600 KB: under the cap, so accepted as far as size goes.
            {"kind": "rewrite", "input_text": "é" * 99_999, "target_words": 0},
            f"{TARGET} (got 0)",
        ),
        ({"kind": "generate", "prompt": "a\x00b", "target_words": 10}, "prompt contains a NUL character (at 1)"),
        (
            {"kind": "rewrite", "input_text": "ok\ud800", "target_words": 10},
            "input_text is not valid Unicode (lone surrogate at 2)",
        ),
    ],
)
async def test_bad_json_input_is_rejected_precisely(http, user, body, message):
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as an escape, as clients send it
    r = await http.post("/v1/jobs", content=raw, headers={**auth(user), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in [e["msg"] for e in r.json()["detail"]], r.json()


async def test_a_hundred_chapters_at_once_are_accepted(http, fake, user, db):
    """The cap is 100 (101 is refused above): a job asking for it is accepted, keeps it and runs."""
    body = {"kind": "generate", "prompt": "Tides", "target_words": 60, "options": {"parallelism": 100}}
    r = await http.post("/v1/jobs", json=body, headers=auth(user))
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "succeeded"
    async with db.tx() as s:
        params = (await s.execute(select(Job.params).where(Job.id == uuid.UUID(jid)))).scalar_one()
    assert params["parallelism"] == 100


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"kind": "generate", "prompt": "caf\xe9", "target_words": 5}',
            "body is not UTF-8 (invalid byte at offset 35)",
        ),
        (
            b"{not json",
            "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (b"[1, 2]", "body must be a JSON object"),
        (b"", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ],
)
async def test_bad_bodies_are_rejected_precisely(http, user, content, message):
    r = await http.post("/v1/jobs", content=content, headers={**auth(user), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == message


OK = "accepted: a .txt or .md file of UTF-8 text"


def upload(name: str, data: bytes, **fields: str) -> dict[str, Any]:
    return {"files": {"file": (name, data, "text/plain")}, "data": fields}


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            upload("in.txt", b"caf\xe9 au lait", target_words="50"),
            f"in.txt is not UTF-8 text (byte 0xe9 at offset 3); {OK}",
        ),
        (
            upload("draft.pdf", b"%PDF-1.7\n%\xe2\xe3", target_words="50"),
            f"draft.pdf is a PDF document, not text; {OK}",
        ),
        (
            upload("draft.txt", b"%PDF-1.7\n%\xe2\xe3", target_words="50"),
            f"draft.txt is a PDF document, not text; {OK}",
        ),
        (upload("notes.rtf", b"plain words", target_words="50"), f"notes.rtf is not a .txt or .md file; {OK}"),
        (upload("in.txt", b"a\x00b", target_words="50"), f"in.txt is binary, not text (a NUL byte at offset 1); {OK}"),
        (
            upload("in.txt", b"   \n", target_words="50"),
            "kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)",
        ),
        (upload("in.txt", b"text", target_words="lots"), f'{TARGET} (got "lots")'),
        (upload("in.txt", b"text", target_words="0"), f"{TARGET} (got 0)"),
        (upload("in.txt", b"text", target_words="²"), f'{TARGET} (got "²")'),
        (upload("in.txt", b"text"), "missing field 'target_words' (an integer from 1 to 500,000)"),
        (upload("in.txt", b"text", target_words="9", options="{"), "options must be a JSON object"),
        (upload("in.txt", b"text", target_words="9", colour="red"), "unknown field 'colour'"),
    ],
)
async def test_bad_uploads_are_rejected_precisely(http, user, form, message):
    r = await http.post("/v1/jobs", headers=auth(user), **form)
    assert r.status_code == 422, r.text
    assert message in [e["msg"] for e in r.json()["detail"]], r.json()


async def test_a_missing_or_wrong_key_is_401(http, user):
    r = await http.post("/v1/jobs", json={"kind": "generate", "prompt": "x", "target_words": 5})
    assert r.status_code == 401 and r.json()["detail"] == "missing API key: send 'Authorization: Bearer <key>'"
    assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/v1/jobs", f"/v1/jobs/{uuid.uuid4()}", f"/v1/jobs/{uuid.uuid4()}/audit/stream"):
        r = await http.get(path, headers={"Authorization": "Bearer qk_nope"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"
    r = await http.get("/v1/jobs", headers={"Authorization": f"Basic {user.api_key}"})
    assert r.status_code == 401


async def test_an_uploaded_files_name_is_kept_without_its_path(http, fake, user, db):
    r = await http.post(
        "/v1/jobs",
        headers=auth(user),
        files={"file": ("../../etc/notes.txt", b"Notes on the harbour at dawn.\n\nGulls, nets, tide.", "text/plain")},
        data={"target_words": "20", "title": "Harbour"},
    )
    assert r.status_code == 202, r.text
    jid = uuid.UUID(r.json()["id"])
    async with db.tx() as s:
        doc = (await s.execute(select(Document).where(Document.job_id == jid, Document.role == "input"))).scalar_one()
    assert doc.filename == "notes.txt" and doc.text.startswith("Notes on the harbour")
    await follow_to_end(http, str(jid), user)
