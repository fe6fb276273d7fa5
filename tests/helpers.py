"""Test helpers: submit a job the way the API does and wait for its workflow to end; call the API
as a client does (a user's key, a job's live audit stream); read what a job left in the database
(its chain proven, its audit log); start a worker process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from sqlalchemy import Row, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowFailureError

import testkit
from core.memory import Entry
from core.spec import JobSpec
from db.ddl import CHAIN_PROOF, MEMORY_PROOF
from db.models import AuditEvent, Document, Job
from db.session import Database
from services import jobs, logreader
from services.accounts import NewUser
from tests.conftest import AUDIT_KEY, TEST_SECRET

TASK_QUEUE = "quire-test"


async def submit(db: Database, client: Client, user: NewUser, **spec: Any) -> uuid.UUID:
    job, _ = await jobs.submit(
        db,
        client,
        user_id=user.user_id,
        user_name=user.name,
        spec=JobSpec(**spec),
        task_queue=TASK_QUEUE,
        default_model="fake-model",
    )
    return job.id


async def wait(client: Client, job_id: uuid.UUID) -> str:
    """The workflow's end: 'succeeded', or the failure's message."""
    handle = client.get_workflow_handle(f"job-{job_id}")
    try:
        return str(await handle.result())
    except WorkflowFailureError as exc:
        return f"failed: {exc.cause}"


async def job_row(db: Database, job_id: uuid.UUID) -> Job:
    async with db.tx() as s:
        job = await s.get(Job, job_id)
        assert job is not None
        return job


async def output(db: Database, job_id: uuid.UUID) -> Document | None:
    """The job's output (its latest version: an author's edits make new ones)."""
    async with db.tx() as s:
        return (
            await s.execute(
                select(Document)
                .where(Document.job_id == job_id, Document.role == "output")
                .order_by(Document.version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def builds_of(client: Client, job_id: uuid.UUID) -> set[str]:
    """The worker builds that completed the workflow tasks of every execution of a job."""
    builds = set()
    async for wf in client.list_workflows(f"WorkflowId STARTS_WITH 'job-{job_id}'"):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for e in history.events:
            if e.HasField("workflow_task_completed_event_attributes"):
                builds.add(e.workflow_task_completed_event_attributes.deployment_version.build_id)
    return builds


async def temporal_cli(client: Client, *args: str, ok: bool = True) -> str:
    """The Temporal CLI (as an operator runs it) against the client's server; its stdout."""
    from quire.temporal_dev import temporal_binary

    proc = await asyncio.create_subprocess_exec(
        temporal_binary(),
        *args,
        "--address",
        client.service_client.config.target_host,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert (proc.returncode == 0) == ok, f"temporal {' '.join(args)}: {err.decode()}"
    return out.decode()


# --- the API as a client uses it -------------------------------------------------------------


def auth(user: NewUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"}


async def sse(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], on_comment: Callable[[str], None] | None = None
) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) of a server-sent event stream; comment lines (keep-alives) go to ``on_comment``."""
    async with http.stream("GET", path, headers=headers, timeout=60) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        event, eid, data = "message", "", []
        async for line in r.aiter_lines():
            if line.startswith(":"):
                if on_comment is not None:
                    on_comment(line)
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "" and data:
                yield event, eid, "\n".join(data)
                event, eid, data = "message", "", []


async def follow_to_end(
    http: httpx.AsyncClient, job_id: str, user: NewUser, after: int = 0
) -> tuple[list[int], dict[str, Any]]:
    """The seqs a stream sends until its end event, and that event's data."""
    seqs: list[int] = []
    async for event, eid, data in sse(http, f"/v1/jobs/{job_id}/audit/stream?after={after}", auth(user)):
        if event == "end":
            return seqs, json.loads(data)
        seqs.append(int(eid))
    raise AssertionError("the stream closed without an end event")


async def set_status(db: Database, job_id: uuid.UUID, status: str) -> None:
    """Finish a job made by make_job (it has no workflow) the way the finishing activity does."""
    async with db.job_tx(job_id) as tx:
        job = await tx.session.get(Job, job_id)
        assert job is not None
        if status == "succeeded" and job.status == "queued":
            job.status = "running"  # the database allows success only to a job that ran
            await tx.session.flush()
        job.status = status
        job.completed_at = job.created_at
        if status == "failed":
            job.error_code, job.failure_reason = "E_LENGTH_NOT_MET", "short by 3 words after 8 rounds"


# --- what a job left in the database: its chain, its audit log ---------------------------------


async def scalar(db: Database, sql: str, **params: Any) -> Any:
    async with db.tx() as s:
        return (await s.execute(text(sql), params)).scalar_one()


async def assert_chain_proven(db: Database, job_id: uuid.UUID) -> None:
    """From the tables alone (the README's queries): each chunk was written from the state its
    predecessor left, or from a handoff checked against it at a seam; and no chunk's prompt was
    given a ledger entry set after it in the document."""
    async with db.tx() as s:
        broken = (await s.execute(text(CHAIN_PROOF), {"job_id": job_id})).scalars().all()
        told_later = (await s.execute(text(MEMORY_PROOF), {"job_id": job_id})).all()
    total = await scalar(db, "SELECT count(*) FROM chunks WHERE job_id = :j", j=job_id)
    assert broken == [] and total > 0 and told_later == []


async def assert_audit_seq_gap_free(db: Database, job_id: uuid.UUID) -> int:
    n, lo, hi = await _row(db, "SELECT count(*), min(seq), max(seq) FROM audit_events WHERE job_id = :j", j=job_id)
    assert (lo, hi) == (1, n)
    return int(n)


async def _row(db: Database, sql: str, **params: Any) -> Row[Any]:
    async with db.tx() as s:
        return (await s.execute(text(sql), params)).one()


async def chunk_events(s: AsyncSession, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The data of a job's ``chunk write|extend`` events (one per attempt)."""
    q = select(AuditEvent.data).where(
        AuditEvent.job_id == job_id, AuditEvent.kind == "chunk", AuditEvent.action.in_(["write", "extend"])
    )
    return list((await s.execute(q)).scalars().all())


def start_worker(pg_url: str, temporal_target: str, fake_url: str, queue: str) -> subprocess.Popen[bytes]:
    """A worker process (``python -m worker``) polling its own queue, as an operator starts one."""
    env = {
        **os.environ,
        "DATABASE_URL": pg_url,
        "TEMPORAL_ADDRESS": temporal_target,
        "TEMPORAL_TASK_QUEUE": queue,
        "OPENAI_BASE_URL": fake_url,
        "OPENAI_API_KEY": TEST_SECRET,
        "QUIRE_MODEL": "fake-model",
        "QUIRE_LLM_TIMEOUT_S": "5",
        "QUIRE_TEMPORAL_KEY": testkit.TEMPORAL_KEY,
        "QUIRE_AUDIT_KEY": AUDIT_KEY.text(),  # the tests' checkpoint key (none made in ./.quire)
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def log_events(db: Database, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """A job's audit events as the log reader gives them (dicts, in seq order)."""
    return [e async for e in logreader.iter_events(db, job_id, 0, None)]


# --- the story memory as pure rules ----------------------------------------------------------


def entry(id: int, kind: str, key: str, value: str, order: int, **kw: object) -> Entry:
    """A story-ledger entry (core.memory.Entry); ``name`` defaults to the key in title case, ``quote`` to the value."""
    return Entry(
        id=id,
        kind=kind,
        key=key,
        name=kw.pop("name", key.title()),
        value=value,
        quote=kw.pop("quote", value),
        doc_order=order,
        **kw,
    )  # type: ignore[arg-type]


# --- the CLI as a user runs it ------------------------------------------------------------

QUIRE = [sys.executable, "-m", "quire.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "OPENAI_", "TEMPORAL_", "QUIRE_"))}
    return subprocess.run([*QUIRE, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


async def arun(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI as a subprocess, without blocking the event loop the in-process API runs on."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "OPENAI_", "TEMPORAL_", "QUIRE_"))}
    proc = await asyncio.create_subprocess_exec(
        *QUIRE, *args, env={**base, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()
