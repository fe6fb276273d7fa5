"""An alarm on a job's log: a checkpoint refused (a witness, or the signer's own check, found the
tree does not extend what was signed before). The write that met it has already recorded it (an
``error audit_alarm`` event, the job row's ``audit_alarm``, ``quire_audit_alarms``, an error log
line); this tells the job's owner, as an ``audit.alarm`` webhook delivered like a job's end."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.webhooks import RetrySchedule
from db.models import Job
from db.session import Database
from db.signer import Refusal
from workflows.webhook import WebhookInput, WebhookWorkflow

log = structlog.get_logger(__name__)


def install(db: Database, client: Client, task_queue: str, schedule: RetrySchedule | None = None) -> None:
    """Have ``db`` tell each alarm to the job's webhook (once per refused tree size)."""

    async def on_alarm(job_id: uuid.UUID, refusal: Refusal) -> None:
        async with db.tx() as s:
            url = (await s.execute(select(Job.webhook_url).where(Job.id == job_id))).scalar_one_or_none()
        if url is None:
            return  # no webhook: the log, the job row, the metrics and the operator's log say it
        try:
            await client.start_workflow(
                WebhookWorkflow.run,
                WebhookInput(str(job_id), schedule or RetrySchedule(), deliver=True, alarm=refusal.as_event()),
                id=f"job-{job_id}-alarm-{refusal.tree_size}",
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary="audit.alarm",
            )
        except WorkflowAlreadyStartedError:
            log.info("audit.alarm_already_sent", job_id=str(job_id), tree_size=refusal.tree_size)

    if db.on_alarm is None:
        db.on_alarm = on_alarm
