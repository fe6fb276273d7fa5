"""After Postgres is restored from a backup while Temporal kept its running jobs (README: Operators,
"Restoring Postgres from a backup").

Temporal's histories are then ahead of the database: a run would go on from chunks, coherence states
and audit seqs the backup does not hold, and its steps would fail on the missing chain (or, worse,
finalize a document with holes). So, with the workers stopped, every job the backup holds as queued
or running has its open runs terminated in Temporal, is marked failed with the reason, and is
resumed as a new run (numbered after any run Temporal knows of) from what the backup holds: what
was written after the backup is written again, once, in the same log. Open runs of jobs the backup
holds as ended, or does not hold at all, are terminated. Each step is in the jobs' audit logs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core import runs
from core.spec import ErrorCode
from db.endings import end_unless_ended
from db.models import Job, User
from db.session import Database
from services import jobs
from workflows.steps import Durability

log = structlog.get_logger(__name__)
REASON = "Postgres was restored from a backup older than this job's last steps: resumed from what the backup holds"


@dataclass
class Restored:
    resumed: list[uuid.UUID] = field(default_factory=list)  # jobs continued as a new run
    terminated: list[str] = field(default_factory=list)  # workflow ids of the runs ended in Temporal


async def after_restore(
    db: Database, client: Client, *, task_queue: str, durability: Durability, resume: bool = True
) -> Restored:
    """Bring Temporal back in line with a restored database (run it with the workers stopped)."""
    out = Restored()
    # Every open run of a job is ahead of the backup, or of a job the backup holds as ended or not at
    # all: none may go on. (A webhook delivery's run is not a job's run: it ends by itself.)
    async for wf in client.list_workflows("WorkflowId STARTS_WITH 'job-' AND ExecutionStatus = 'Running'"):
        if runs.job_of(wf.id) is None:
            continue
        try:
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate(REASON)
            out.terminated.append(wf.id)
        except RPCError as exc:  # ended meanwhile (a child, with its parent)
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    async with db.tx() as s:
        query = select(Job.id, User.name).join(User, User.id == Job.user_id)
        live = (await s.execute(query.where(Job.status.in_(("queued", "running"))))).all()
    for job_id, user_name in live:
        await end_unless_ended(db, job_id, status="failed", error_code=ErrorCode.INTERNAL, reason=REASON)
        if resume:  # numbered after every run Temporal has of it, whether the backup knows them or not
            known = client.list_workflows(f"WorkflowId STARTS_WITH 'job-{job_id}'")
            later = max([runs.run_of(wf.id) or 1 async for wf in known], default=0)
            await jobs.resume(
                db, client, job_id, user_name=user_name, task_queue=task_queue, durability=durability, after_run=later
            )
            out.resumed.append(job_id)
    log.info("restore.reconciled", resumed=len(out.resumed), terminated=len(out.terminated))
    return out
