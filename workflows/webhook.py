"""The webhook workflow: a job's end (or an ``audit.alarm``) POSTed to its webhook, and its log's
last checkpoint left witnessed (when the operator has witnesses), each retried with backoff over hours.

Started by the job workflow once the job's outcome is recorded, as a child that outlives it
(``ParentClosePolicy.ABANDON``): the job neither waits for the delivery nor fails because of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.steps import HEARTBEAT

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import DeliveryRef, WebhookActivities
    from core.errors import WEBHOOK_NON_RETRYABLE
    from core.webhooks import RetrySchedule

ATTEMPT_TIMEOUT = timedelta(minutes=2)  # one POST: the request timeout (QUIRE_WEBHOOK_TIMEOUT_S) and the rows


@dataclass
class WebhookInput:
    job_id: str
    schedule: RetrySchedule
    deliver: bool = True  # the job has a webhook
    witness: bool = False  # the operator has witnesses: the log's last checkpoint is left witnessed
    alarm: dict[str, Any] | None = None  # deliver this audit.alarm (db.signer.Refusal) instead of the job's end


@workflow.defn(name="WebhookWorkflow")
class WebhookWorkflow:
    @workflow.run
    async def run(self, inp: WebhookInput) -> int:
        posts = [
            _post(method, inp)
            for method, wanted in ((WebhookActivities.witness, inp.witness), (WebhookActivities.deliver, inp.deliver))
            if wanted
        ]
        results = await asyncio.gather(*posts, return_exceptions=True)  # one failing never stops the other
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return int(results[-1]) if results else 0


async def _post(method: Any, inp: WebhookInput) -> int:
    s = inp.schedule
    return int(
        await workflow.execute_activity_method(
            method,
            DeliveryRef(inp.job_id, s.attempts, inp.alarm if method is WebhookActivities.deliver else None),
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=s.first_s),
                backoff_coefficient=s.backoff,
                maximum_interval=timedelta(seconds=s.max_interval_s),
                maximum_attempts=s.attempts,
                non_retryable_error_types=WEBHOOK_NON_RETRYABLE,
            ),
            summary="witness" if method is WebhookActivities.witness else "webhook",
        )
    )
