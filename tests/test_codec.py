"""The codec server (api/codec.py): operators, and only they, read Quire's encrypted Temporal payloads,
from the Temporal CLI with a Bearer token or from the Web UI with a session cookie and CORS."""

from __future__ import annotations

import base64
import json
import time

import httpx
from temporalio.api.common.v1 import Payload

from api.codec import COOKIE, session_value
from services.codec import ENCODING
from tests.conftest import OPERATOR_TOKEN
from tests.helpers import submit, temporal_cli

UI = "http://127.0.0.1:8233"  # the embedded UI's origin, allowed by default


def payloads_json(payloads: list[Payload]) -> dict:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


async def encrypted(client, value: object) -> dict:
    """``value`` as Quire hands it to Temporal: JSON, then encrypted by the codec."""
    return payloads_json(await client.data_converter.encode([value]))


async def test_decode_refuses_a_missing_or_wrong_token_and_decodes_with_the_right_one(http, client):
    body = await encrypted(client, {"job_id": "a-job", "stage": "plan"})
    assert base64.b64decode(body["payloads"][0]["metadata"]["encoding"]) == ENCODING  # ciphertext going in
    missing = await http.post("/codec/decode", json=body)
    wrong = await http.post("/codec/decode", json=body, headers={"Authorization": "Bearer op-not-the-token"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "QUIRE_OPERATOR_TOKEN" in missing.json()["detail"] and "a-job" not in wrong.text
    right = await http.post("/codec/decode", json=body, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    assert right.status_code == 200, right.text
    (out,) = right.json()["payloads"]
    assert base64.b64decode(out["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(out["data"])) == {"job_id": "a-job", "stage": "plan"}
    # And back: encode gives ciphertext that decodes to the same.
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    again = await http.post("/codec/encode", json=right.json(), headers=auth)
    assert base64.b64decode(again.json()["payloads"][0]["metadata"]["encoding"]) == ENCODING
    back = await http.post("/codec/decode", json=again.json(), headers=auth)
    assert back.json() == right.json()
    # What is not JSON gets no decoding (no form posts from other sites: those would skip CORS' preflight).
    form = await http.post("/codec/decode", content=json.dumps(body), headers={**auth, "Content-Type": "text/plain"})
    assert form.status_code == 415
    forged = {"payloads": [{**body["payloads"][0], "data": base64.b64encode(b"\0" * 40).decode()}]}
    assert (await http.post("/codec/decode", json=forged, headers=auth)).status_code == 400


async def test_the_ui_signs_in_with_a_cookie_and_only_its_origin_may_call(http, client):
    body = await encrypted(client, {"job_id": "b-job"})
    # CORS: the UI's origin, with credentials; another origin gets nothing.
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-namespace"}
    ok = await http.options("/codec/decode", headers={"Origin": UI, **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == UI
    assert ok.headers["access-control-allow-credentials"] == "true"
    evil = await http.options("/codec/decode", headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in evil.headers

    broken = await http.post("/codec/session", content="{no", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    refused = await http.post("/codec/session", data={"token": "op-guess"})
    assert refused.status_code == 401 and COOKIE not in refused.cookies
    signed = await http.post("/codec/session", data={"token": OPERATOR_TOKEN})
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/codec" in cookie
    value = signed.cookies[COOKIE]
    assert OPERATOR_TOKEN not in value
    page = await http.get("/codec/", headers={"Cookie": f"{COOKIE}={value}"})
    assert "signed in" in page.text and "script" not in page.headers["content-security-policy"]

    async def decode_with(cookie_value: str) -> httpx.Response:
        return await http.post("/codec/decode", json=body, headers={"Origin": UI, "Cookie": f"{COOKIE}={cookie_value}"})

    good = await decode_with(value)
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == UI
    assert json.loads(base64.b64decode(good.json()["payloads"][0]["data"])) == {"job_id": "b-job"}
    sid, expires, mac = value.split(".")
    assert (await decode_with(f"{sid}.{expires}.{'0' * len(mac)}")).status_code == 401  # forged
    assert (await decode_with(f"{sid}.{int(expires) + 60}.{mac}")).status_code == 401  # extended
    stale = session_value(OPERATOR_TOKEN, sid, int(time.time()) - 1)  # expired
    assert (await decode_with(stale)).status_code == 401
    unknown = session_value(OPERATOR_TOKEN, "ab" * 16, int(time.time()) + 600)  # signed, but never opened
    assert (await decode_with(unknown)).status_code == 401

    # Signing out ends the session on the server: a copy of the cookie kept elsewhere stops working.
    other = (await http.post("/codec/session", data={"token": OPERATOR_TOKEN})).cookies[COOKIE]
    out = await http.post("/codec/session?end=1", headers={"Cookie": f"{COOKIE}={value}"})
    assert out.status_code == 303
    assert (await decode_with(value)).status_code == 401
    assert (await decode_with(other)).status_code == 200  # another browser's session is its own
    # An operator ends every session at once (say, a laptop was lost), before their 12 hours.
    assert (await http.post("/codec/session?end=all")).status_code == 401  # not without being one
    everyone = await http.post("/codec/session?end=all", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    assert everyone.status_code == 303
    assert (await decode_with(other)).status_code == 401


async def test_wrong_operator_tokens_are_limited_per_address(db, client):
    from api.app import create_app
    from tests.conftest import api_settings

    app = create_app(api_settings(), db=db, client=client)  # limits of its own: other tests sign in too
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://127.0.0.1"
    ) as c:  # fmt: skip
        answers = [(await c.post("/codec/session", data={"token": f"op-guess-{i}"})).status_code for i in range(12)]
        assert answers[:10] == [401] * 10 and answers[10:] == [429, 429]
        r = await c.post("/codec/session", data={"token": OPERATOR_TOKEN})  # the right one waits too
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 61 and "too many" in r.json()["detail"]


async def test_the_temporal_cli_shows_a_jobs_history_decoded_through_the_codec_server(
    http, api_url, db, client, fake, user
):
    job_id = await submit(db, client, user, kind="generate", prompt="Fog", target_words=200)
    await client.get_workflow_handle(f"job-{job_id}").result()

    async def show(*extra: str, ok: bool = True) -> str:
        return await temporal_cli(client, "workflow", "show", "-w", f"job-{job_id}", "--output", "json", *extra, ok=ok)

    def job_input(shown: str) -> tuple[bytes, bytes]:
        """(encoding, data) of the input the job's workflow started with, as the CLI shows it."""
        started = json.loads(shown)["events"][0]["workflowExecutionStartedEventAttributes"]
        p = started["input"]["payloads"][0]
        return base64.b64decode(p["metadata"]["encoding"]), base64.b64decode(p["data"])

    encoding, _ = job_input(await show())  # what Temporal holds
    assert encoding == ENCODING
    # A wrong token: the codec server refuses, and the CLI shows nothing.
    assert '"job_id"' not in await show(
        "--codec-endpoint", f"{api_url}/codec", "--codec-auth", "Bearer op-x", "--command-timeout", "3s", ok=False
    )
    encoding, data = job_input(
        await show("--codec-endpoint", f"{api_url}/codec", "--codec-auth", f"Bearer {OPERATOR_TOKEN}")
    )
    assert encoding == b"json/plain" and json.loads(data)["job_id"] == str(job_id)
