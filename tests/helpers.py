"""Test helpers shared by test modules: submit a job the way the API does and wait for its workflow
to end; call the API as a client does (a user's key, a job's live audit stream) and the CLI as a user
runs it; read what a job left in the database (its chain proven, its audit log whole); start a
worker process; a planted fact and its contradiction; quotas; a webhook endpoint; an edit's end."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy import Row, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowFailureError

import testkit
from core.memory import Entry
from core.runs import edit_workflow_id
from core.spec import JobSpec
from db.ddl import CHAIN_PROOF, MEMORY_PROOF
from db.manuscript import ChunkVersion, ContinuityFinding
from db.models import AuditEvent, Document, Job
from db.session import Database
from services import jobs, logreader
from services.accounts import NewUser
from tests.conftest import AUDIT_KEY, TEST_SECRET
from workflows.steps import Durability

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


# --- a planted fact and its contradiction, and what the job made of them ---


FACT = "Captain Mara Quell checked the brass compass on her left wrist."


LIE = "Captain Mara Quell checked the silver compass on her right wrist."


ENTITY = {"entity": "Captain Mara Quell", "attribute": "compass"}


def _fact(**where: object) -> dict[str, object]:
    return {"sentence": FACT, "value": "brass compass on her left wrist", **ENTITY, **where}


def _lie(**where: object) -> dict[str, object]:
    return {"sentence": LIE, "value": "silver compass on her right wrist", **ENTITY, **where}


async def _versions(db, chunk_id: int) -> list[ChunkVersion]:
    async with db.tx() as s:
        return list(
            (
                await s.execute(
                    select(ChunkVersion).where(ChunkVersion.chunk_id == chunk_id).order_by(ChunkVersion.version)
                )
            )
            .scalars()
            .all()
        )


async def _findings(db, job_id: uuid.UUID) -> list[ContinuityFinding]:
    async with db.tx() as s:
        return list(
            (await s.execute(select(ContinuityFinding).where(ContinuityFinding.job_id == job_id))).scalars().all()
        )


# --- durability: a shortened backoff, raw rows, a log that is whole ---


FAST = Durability(retry_max_s=0.2)  # the backoff shortened; the window stays the default 24 h


async def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.tx() as s:
        return list((await s.execute(text(sql), params)).all())


async def assert_log_whole(db: Database, job_id: uuid.UUID, activities: bool = True) -> list[AuditEvent]:
    """Seqs 1..N with no gap, the hash chain intact, the chain of chunks proved from the tables,
    and every activity attempt that started has exactly one end."""
    async with db.tx() as s:
        events = list(
            (await s.execute(select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.seq))).scalars()
        )
        broken = (await s.execute(text(CHAIN_PROOF), {"job_id": job_id})).scalars().all()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    verdict = await logreader.verify(db, job_id)
    assert verdict is not None and verdict.intact, verdict
    assert broken == []
    attempts: dict[tuple[str, str, int], list[str]] = {}
    for e in events:
        if e.kind == "activity":
            key = (e.data["workflow_id"], e.data["activity_id"], e.data["attempt"])
            attempts.setdefault(key, []).append(e.action)
    assert all(a in (["start", "end"], ["start", "error"]) for a in attempts.values()), {
        k: v for k, v in attempts.items() if v not in (["start", "end"], ["start", "error"])
    }
    assert attempts or not activities
    return events


# --- quotas ---


async def set_quotas(db, user: NewUser, **q: int | None) -> None:  # type: ignore[no-untyped-def]
    cols = ", ".join(f"quota_{k} = :{k}" for k in q)
    async with db.tx() as s:
        await s.execute(text(f"UPDATE users SET {cols} WHERE id = :u"), {**q, "u": user.user_id})


# --- a webhook endpoint ---


class Receiver:
    """A webhook endpoint on 127.0.0.1: answers each POST with the next scripted status (then 200)
    and keeps what it received."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with owner.lock:
                    status = owner.statuses.pop(0) if owner.statuses else 200
                    owner.received.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/quire?src=test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    async def wait_for(self, n: int, within: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:  # polling another thread's server, with a deadline
            with self.lock:
                if len(self.received) >= n:
                    return list(self.received)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.received)} webhook requests, expected {n}")


# --- edits ---


async def ended(client, job_id: uuid.UUID, number: int) -> str:
    """How edit ``number``'s workflow ended: its document version, or its failure."""
    try:
        return str(await client.get_workflow_handle(edit_workflow_id(job_id, number)).result())
    except Exception as exc:  # noqa: BLE001 - the failure is what the test reads
        return f"failed: {getattr(exc, 'cause', exc)}"
