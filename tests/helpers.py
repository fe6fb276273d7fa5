"""Test helpers: submit a job the way the API does and wait for its workflow to end."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

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
