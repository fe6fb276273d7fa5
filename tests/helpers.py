"""Test helpers: submit a job the way the API does and wait for its workflow to end; call the API
as a client does (a user's key, a job's live audit stream)."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError

from core.spec import JobSpec
from db.models import Document, Job
from db.session import Database
from services import jobs
from services.accounts import NewUser

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
