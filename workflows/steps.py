"""How a workflow runs a step: its timeouts, heartbeat and retry policy, called by typed reference
(``workflow.execute_activity_method``, as temporalio/samples-python does), and how a failure that
ends a job is read back as an error code and a reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.exceptions import CancelledError as TemporalCancelledError

with workflow.unsafe.imports_passed_through():
    from activities.base import NON_RETRYABLE
    from activities.llm import BudgetExhausted, LlmUnavailable, QuotaExceeded
    from core.spec import ErrorCode

A = TypeVar("A")
R = TypeVar("R")

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
    non_retryable_error_types=NON_RETRYABLE,
)
QUICK = timedelta(minutes=5)  # a step that only reads and writes Postgres
MODEL = timedelta(minutes=30)  # a step that waits on a model
# Activities heartbeat every few seconds (see services.temporal): a worker killed mid-activity is
# noticed within this, not after the start-to-close timeout.
HEARTBEAT = timedelta(seconds=10)


async def step(
    method: Callable[[Any, A], Awaitable[R]], arg: A, limit: timedelta, summary: str, task_queue: str | None = None
) -> R:
    """Run one activity (a method of an activity class) and return its typed result. Steps that
    call the model run on the model task queue (``task_queue``), whose workers bound how many
    model calls run at once."""
    return await workflow.execute_activity_method(
        method,
        arg,
        task_queue=task_queue,
        start_to_close_timeout=limit,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=RETRY,
        summary=summary,
    )


def cause(err: BaseException) -> tuple[ErrorCode, str]:
    """(error code, readable reason) for a failure that ended a job."""
    e: BaseException | None = err
    while isinstance(e, ActivityError | ChildWorkflowError) and e.cause is not None:
        e = e.cause
    msg = e.message if isinstance(e, FailureError) else str(e)
    etype = (e.type if isinstance(e, ApplicationError) else None) or type(e).__name__
    code = {
        LlmUnavailable.__name__: ErrorCode.LLM_UNAVAILABLE,
        BudgetExhausted.__name__: ErrorCode.BUDGET_EXHAUSTED,
        QuotaExceeded.__name__: ErrorCode.QUOTA_EXCEEDED,
    }.get(etype, ErrorCode.INTERNAL)
    readable = (ErrorCode.BUDGET_EXHAUSTED, ErrorCode.QUOTA_EXCEEDED)  # their messages say it all
    return code, msg if code in readable else f"{etype}: {msg}"


def was_cancelled(err: BaseException) -> bool:
    """Whether a cancellation of this workflow, a child or an activity is behind ``err``."""
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, TemporalCancelledError):
            return True
        e = e.cause if isinstance(e, FailureError) else None
    return False
