"""While Postgres is unreachable (down, or restarting under `quire up`), the API answers JSON 503s
with a Retry-After, never plain-text 500s, and /readyz says what is down.

The app is the real one, over a Database whose server is not there: the errors are the real
psycopg/SQLAlchemy ones. (tests/test_stack.py kills the real embedded Postgres under a running
stack and checks the same answers end to end.)
"""

from __future__ import annotations

import httpx

from api.app import create_app
from api.live import AuditListener
from db.session import Database
from tests.conftest import api_settings


async def test_an_unreachable_database_is_a_json_503_with_retry_after(client, tmp_path):
    dead = Database(f"postgresql://postgres@/quire?host={tmp_path}")  # a socket directory, no server
    settings = api_settings()
    app = create_app(settings, db=dead, client=client)
    # What the lifespan sets up, minus the LISTEN connection's start (it would only retry).
    app.state.db, app.state.client, app.state.settings = dead, client, settings
    app.state.listener = AuditListener(dead)
    auth = {"Authorization": "Bearer qk_anything"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://quire") as http:
            for method, path, body in [
                ("GET", "/v1/jobs", None),
                ("GET", "/v1/jobs/7c0f2f4e-7d1e-4a49-9d55-2d3c1f0b9a11", None),
                ("POST", "/v1/jobs", {"kind": "generate", "prompt": "Tides", "target_words": 100}),
            ]:
                r = await http.request(method, path, headers=auth, json=body)
                assert r.status_code == 503, (path, r.text)
                assert r.headers["retry-after"] == "5"
                assert r.headers["content-type"] == "application/json"
                assert r.json() == {"detail": "the database is unavailable: try again shortly"}
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not ready" and ready.json()["temporal"] == "ok"
            assert ready.json()["database"] == "unreachable" and ready.json()["reason"] == "database_unreachable"
            assert str(tmp_path) not in ready.text  # a code, never the error's text
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await dead.dispose()
