"""What the front trusts and tells: security headers on every response, pages without inline code,
each bad input's exact 4xx (control characters, Idempotency-Key, sizes, content types, models),
complete Allow headers, 503 for an unreachable database, and API keys rotated or revoked at once."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.security import API_CSP, DOCS_CSP, PAGE_CSP
from db.models import AccountEvent
from services import accounts
from testkit import make_job
from tests.helpers import auth, follow_to_end, sse

pytestmark = pytest.mark.usefixtures("worker")
STATIC = Path(__file__).parent.parent / "api" / "static"
CAP = 200_000  # the test app's QUIRE_MAX_INPUT_BYTES (conftest)


def csp(value: str) -> dict[str, list[str]]:
    out = {}
    for part in value.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


def assert_secure(r: httpx.Response, policy: str) -> None:
    assert r.headers["x-content-type-options"] == "nosniff", r.url
    assert r.headers["referrer-policy"] == "no-referrer", r.url
    assert r.headers["x-frame-options"] == "DENY", r.url
    assert r.headers["content-security-policy"] == policy, r.url
    directives = csp(policy)
    assert directives["frame-ancestors"] == ["'none'"]
    scripts = directives.get("script-src", directives["default-src"])
    assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:"} & set(scripts), (r.url, scripts)


async def test_every_response_carries_the_security_headers(http, user, db, monkeypatch):
    job_id = await make_job(db, user.user_id)
    pages = ["/", "/history", f"/jobs/{job_id}"]
    for path in pages:
        r = await http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert_secure(r, PAGE_CSP)
        assert csp(PAGE_CSP)["script-src"] == ["'self'"] and csp(PAGE_CSP)["trusted-types"] == ["'none'"]
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and "<script>" not in docs.text  # offline, nothing inline
    assert_secure(docs, DOCS_CSP)
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs.js"):
        r = await http.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
        assert_secure(r, API_CSP)
    h = auth(user)
    answers = [
        await http.get("/v1/jobs", headers=h),
        await http.get(f"/v1/jobs/{job_id}/audit?format=txt", headers=h),
        await http.get(f"/v1/jobs/{job_id}/output", headers=h),  # 409
        await http.get("/v1/jobs"),  # 401
        await http.get(f"/v1/jobs/{uuid.uuid4()}", headers=h),  # 404
        await http.post("/v1/jobs", content=b"x", headers={**h, "content-type": "text/plain"}),  # 415
        await http.get("/healthz"),
        await http.get("/openapi.json"),
        await http.get("/nowhere"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 409, 401, 404, 415, 200, 200, 404]
    for r in answers:
        assert_secure(r, API_CSP)

    import api.jobs

    async def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(api.jobs, "job_view", broken)
    r = await http.get(f"/v1/jobs/{job_id}", headers=h)  # answered outside the middleware stack
    assert r.status_code == 500
    assert_secure(r, API_CSP)


def test_pages_have_no_inline_script_style_or_html_sinks():
    """What the CSP forbids is not in the pages, so they work under it (test_web.py runs them)."""
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page.name  # every script is a file
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), page.name  # no inline handlers
        assert not re.search(r"\sstyle\s*=|<style", html, re.I), page.name  # no inline styles
        assert "javascript:" not in html.lower(), page.name
    for script in STATIC.glob("*.js"):
        js = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in js.replace("no innerHTML", ""), (script.name, sink)


# --- bad input: each gets its 4xx and says exactly what ---------------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"kind": "generate", "prompt": "Lighthouses", "target_words": 0, **fields}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt", "a\x00b", "prompt contains a NUL character (at 1)"),
        ("prompt", "bell\x07", "prompt contains control character U+0007 (at 4)"),
        ("title", "\x1b[31mred", "title contains control character U+001B (at 0)"),
        ("model", "fake\x7f", "model contains control character U+007F (at 4)"),
        ("input_text", "next\x85line", "input_text contains control character U+0085 (at 4)"),
        ("prompt", "page\x0cbreak", "prompt contains control character U+000C (at 4)"),
    ],
)
async def test_control_characters_are_422_naming_the_field(http, user, field, value, message):
    r = await http.post("/v1/jobs", json=body(**{field: value}), headers=auth(user))
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == [
        {
            "loc": ["body", field],
            "msg": message + ("" if "NUL" in message else "; only tab, newline and carriage return are allowed"),
            "type": "nul" if "NUL" in message else "control_character",
        }
    ]


async def test_tab_newline_and_carriage_return_are_text(http, user):
    # Only target_words is wrong here: the text itself passed.
    r = await http.post("/v1/jobs", json=body(prompt="a\tb\r\nc", title="x\ty"), headers=auth(user))
    assert r.status_code == 422 and [e["loc"] for e in r.json()["detail"]] == [["body", "target_words"]]


async def test_an_uploaded_files_control_characters_name_the_file(http, user):
    r = await http.post(
        "/v1/jobs",
        headers=auth(user),
        files={"file": ("in.txt", b"ok\x1bno", "text/plain")},
        data={"target_words": "9"},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "file"]
    assert r.json()["detail"][0]["msg"].startswith("file contains control character U+001B (at 2)")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (b"", "is empty"),
        (b"k" * 201, "is 201 characters long"),
        ("clé".encode("latin-1"), "has a character that is not printable ASCII"),
    ],
)
async def test_a_bad_idempotency_key_is_422(http, user, key, why):
    h = {**auth(user), "Idempotency-Key": key}
    r = await http.post("/v1/jobs", json=body(target_words=5), headers=h)
    assert r.status_code == 422 and r.json()["detail"] == [
        {
            "loc": ["header", "idempotency-key"],
            "msg": f"Idempotency-Key {why}: send 1 to 200 printable ASCII characters, or no header",
            "type": "idempotency_key",
        }
    ]
    # Nothing was made: a second identical request gets the same answer, not a 500.
    again = await http.post("/v1/jobs", json=body(target_words=5), headers=h)
    assert again.status_code == 422


async def test_oversize_bodies_are_413_before_they_are_read(http, user):
    json_limit = 6 * CAP + 1_048_576
    big = b" " * (json_limit + 1)
    r = await http.post("/v1/jobs", content=big, headers={**auth(user), "content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {
        "detail": f"request body is larger than the {json_limit:,}-byte limit for a JSON body (QUIRE_MAX_INPUT_BYTES)"
    }

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds as bytes arrive
        for _ in range(json_limit // 65_536 + 2):
            yield b" " * 65_536

    r = await http.post("/v1/jobs", content=chunked(), headers={**auth(user), "content-type": "application/json"})
    assert r.status_code == 413 and "for a JSON body" in r.json()["detail"]
    r = await http.post(
        "/v1/jobs",
        headers=auth(user),
        files={"file": ("big.md", b"word " * (CAP // 5 + 300_000), "text/markdown")},
        data={"target_words": "50"},
    )
    limit = CAP + 1_048_576
    assert r.status_code == 413 and r.json() == {
        "detail": f"request body is larger than the {limit:,}-byte limit for an upload (QUIRE_MAX_INPUT_BYTES)"
    }
    # Under the body limit, over the document limit: the document is what is too large.
    r = await http.post(
        "/v1/jobs",
        headers=auth(user),
        files={"file": ("big.md", b"word " * 40_001, "text/markdown")},
        data={"target_words": "50"},
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "the uploaded file is larger than the 200,000-byte limit (QUIRE_MAX_INPUT_BYTES)"}
    r = await http.post(
        "/v1/jobs", json={"kind": "rewrite", "input_text": "word " * 40_001, "target_words": 10}, headers=auth(user)
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "input_text is larger than the 200,000-byte limit (QUIRE_MAX_INPUT_BYTES)"}


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "'text/plain'"),
        (None, "none"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
    ],
)
async def test_a_body_that_is_not_json_or_multipart_is_415(http, user, content_type, shown):
    headers = {**auth(user), **({"content-type": content_type} if content_type else {})}
    r = await http.post("/v1/jobs", content=b'{"kind": "generate", "prompt": "x", "target_words": 5}', headers=headers)
    assert r.status_code == 415 and r.json() == {
        "detail": f"Content-Type must be application/json or multipart/form-data (got {shown})"
    }


async def test_model_must_be_allowed(http, fake, user):
    r = await http.post("/v1/jobs", json=body(target_words=5, model="gpt-9"), headers=auth(user))
    assert r.status_code == 422 and r.json()["detail"] == [
        {"loc": ["body", "model"], "msg": "model 'gpt-9' is not allowed; allowed: 'fake-model'", "type": "model"}
    ]
    r = await http.post("/v1/jobs", json=body(target_words=5, model="fake-model"), headers=auth(user))
    assert r.status_code == 202, r.text
    await follow_to_end(http, r.json()["id"], user)
    spec = (await http.get("/openapi.json")).json()
    model = spec["components"]["schemas"]["JobSpec"]["properties"]["model"]
    assert model["anyOf"][0]["enum"] == ["fake-model"]


async def test_405_lists_every_method_of_the_path(http, user):
    r = await http.request("PUT", "/v1/jobs", headers=auth(user))
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json() == {"detail": "method PUT is not allowed here; allowed: GET, POST"}
    r = await http.request("PATCH", f"/v1/jobs/{uuid.uuid4()}", headers=auth(user))
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"


async def test_an_unreachable_database_is_503_with_retry_after(http, user, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import api.jobs

    async def down(*_: Any, **__: Any) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(api.jobs.views, "history", down)
    r = await http.get("/v1/jobs", headers=auth(user))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json() == {"detail": "the database is unavailable: try again shortly"}


# --- keys ----------------------------------------------------------------------------------------


async def test_a_user_rotates_their_key_and_the_old_one_is_401_at_once(http, user, db):
    r = await http.post("/v1/keys/rotate", headers=auth(user))
    assert r.status_code == 201, r.text
    new = r.json()
    old_prefix = user.api_key.split("_")[1]
    assert new["revoked_prefix"] == old_prefix and new["api_key"].startswith(f"qk_{new['prefix']}_")
    old = await http.get("/v1/jobs", headers=auth(user))
    assert old.status_code == 401 and old.json() == {"detail": "invalid or revoked API key"}
    fresh = {"Authorization": f"Bearer {new['api_key']}"}
    assert (await http.get("/v1/jobs", headers=fresh)).status_code == 200
    assert (await http.post("/v1/keys/rotate", headers=auth(user))).status_code == 401  # the old key rotates nothing
    keys = await accounts.list_keys(db, user.name)
    assert [(k.prefix, k.revoked_at is not None) for k in keys] == [(old_prefix, True), (new["prefix"], False)]
    async with db.tx() as s:
        events = (
            (
                await s.execute(
                    select(AccountEvent).where(AccountEvent.user_id == user.user_id, AccountEvent.kind == "key.rotated")
                )
            )
            .scalars()
            .all()
        )
    assert [(e.data, e.path) for e in events] == [
        ({"revoked_prefix": old_prefix, "new_prefix": new["prefix"]}, "/v1/keys/rotate")
    ]
    assert new["api_key"] not in str(events[0].data)


async def test_revoking_a_user_stops_every_key_and_a_new_key_lets_them_back(http, db):
    user = await accounts.create_user(db, f"rev-{uuid.uuid4().hex[:6]}")
    second = await accounts.add_key(db, user.user_id)
    for key in (user.api_key, second):
        assert (await http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    revoked = await accounts.revoke_user_keys(db, user.name)
    assert sorted(revoked) == sorted(k.split("_")[1] for k in (user.api_key, second))
    for key in (user.api_key, second):
        r = await http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and r.json() == {"detail": "invalid or revoked API key"}
    assert await accounts.revoke_user_keys(db, user.name) == []  # nothing left in use
    back = await accounts.add_key_for(db, user.name)
    assert (await http.get("/v1/jobs", headers={"Authorization": f"Bearer {back}"})).status_code == 200
    with pytest.raises(accounts.UnknownUser):
        await accounts.revoke_user_keys(db, "nobody-" + uuid.uuid4().hex)


async def test_a_revoked_key_ends_its_open_streams(http, db, monkeypatch):
    import api.live

    monkeypatch.setattr(api.live, "AUTH_RECHECK_S", 0.2)
    owner = await accounts.create_user(db, f"stream-{uuid.uuid4().hex[:6]}")
    job_id = await make_job(db, owner.user_id)  # queued, no workflow: its stream would stay open
    events = sse(http, f"/v1/jobs/{job_id}/audit/stream", auth(owner))
    _, eid, _ = await anext(events)  # the stream is open and sending
    revoked_at = asyncio.get_running_loop().time()
    await accounts.revoke_user_keys(db, owner.name)
    async with asyncio.timeout(5):
        async for event, _eid, data in events:
            if event == "end":
                assert json.loads(data)["reason"] == "revoked"
                break
    assert asyncio.get_running_loop().time() - revoked_at < 2
    await events.aclose()
