"""How a workflow runs a step: its timeouts, heartbeat and retry policy, called by typed reference
(``workflow.execute_activity_method``, as temporalio/samples-python does), and how a failure that
ends a job is read back as an error code and a reason.

Retries: a step's attempts are unlimited, with a capped backoff, for as long as the job's outage
window (``Durability``, in the workflow's input, set from QUIRE_OUTAGE_WINDOW_S) lasts; that is the
step's schedule-to-close timeout. Within it the activity side decides (services.temporal): an
outage of the database or of Temporal is retried all along, anything else fails the step after
``LOGIC_ATTEMPTS`` attempts, and some errors never retry (``NON_RETRYABLE``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.exceptions import CancelledError as TemporalCancelledError

with workflow.unsafe.imports_passed_through():
    from core.errors import NON_RETRYABLE, BudgetExhausted, ContinuityBroken, LlmUnavailable
    from core.quota import QuotaExceeded
    from core.spec import ERROR_CODES, ErrorCode

A = TypeVar("A")
R = TypeVar("R")

OUTAGE_WINDOW_S = 24 * 3600.0
RETRY_MAX_INTERVAL_S = 30.0
# A step failing with an error of its own (not an outage, not NON_RETRYABLE) fails the job on its
# LOGIC_ATTEMPTS-th such failure. The activity side enforces it (services.temporal's interceptor
# counts these failures in the heartbeat details and then raises a non-retryable error), not the
# RetryPolicy: Temporal's maximum_attempts counts every attempt, outage ones too, so any cap there
# would end a job inside its outage window.
LOGIC_ATTEMPTS = 8


@dataclass(frozen=True)
class Durability:
    """How long a job rides out an outage, and how often it tries again meanwhile (the backoff
    doubles from 1 s up to ``retry_max_s``). Set once by whoever starts the job, from settings."""

    outage_window_s: float = OUTAGE_WINDOW_S
    retry_max_s: float = RETRY_MAX_INTERVAL_S

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=timedelta(seconds=min(1.0, self.retry_max_s)),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=self.retry_max_s),
            maximum_attempts=0,  # unlimited: the window (schedule-to-close) and LOGIC_ATTEMPTS bound them
            non_retryable_error_types=NON_RETRYABLE,
        )


QUICK = timedelta(minutes=5)  # a step that only reads and writes Postgres
MODEL = timedelta(minutes=30)  # a step that waits on a model
# Activities heartbeat every few seconds (see services.temporal): a worker killed mid-activity is
# noticed within this, not after the start-to-close timeout.
HEARTBEAT = timedelta(seconds=10)


def continue_as_new(arg: Any) -> NoReturn:
    """Continue as new on the deployment's current version: the upgrade point of a run pinned to the
    worker version it started on (worker.py; README: Deploying new code). Its input, written by this
    version, is read by the next one: inputs only gain fields, with defaults."""
    workflow.continue_as_new(arg, initial_versioning_behavior=workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE)


def durability() -> Durability:
    """The running workflow's ``Durability`` (its ``durability`` attribute, set from its input)."""
    return getattr(workflow.instance(), "durability", None) or Durability()


async def step(
    method: Callable[[Any, A], Awaitable[R]],
    arg: A,
    limit: timedelta,
    summary: str,
    task_queue: str | None = None,
    *,
    outlive: bool = False,
) -> R:
    """Run one activity (a method of an activity class) and return its typed result. Steps that
    call the model run on the model task queue (``task_queue``), whose workers bound how many
    model calls run at once. ``outlive``: no window at all (a step that records how the job ended
    must outlive any outage: the job row ends with its workflow, whatever ended it)."""
    return await workflow.execute_activity_method(method, arg, **_options(limit, summary, task_queue, outlive))


async def final_step(method: Callable[[Any, A], Awaitable[R]], arg: A, summary: str, *, outlive: bool = True) -> R:
    """The step that records how a job or an edit ended, shielded from cancellation: scheduled at
    once, then awaited under ``asyncio.shield`` (workflow cancellation is asyncio cancellation in
    Temporal's Python SDK), so a cancel arriving meanwhile waits for it instead of cancelling it
    (which left the row saying the work runs); then the cancel goes on."""
    handle = workflow.start_activity_method(method, arg, **_options(QUICK, summary, None, outlive))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(handle)
            break
        except asyncio.CancelledError:
            if handle.done():  # the step itself ended so: nothing left to wait for
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def _options(limit: timedelta, summary: str, task_queue: str | None, outlive: bool) -> dict[str, Any]:
    d = durability()
    return {
        "task_queue": task_queue,
        "start_to_close_timeout": limit,
        # At least one whole attempt, however short the window.
        "schedule_to_close_timeout": None if outlive else max(limit, timedelta(seconds=d.outage_window_s)),
        "heartbeat_timeout": HEARTBEAT,
        "retry_policy": d.retry_policy(),
        "summary": summary,
    }


_CODE_OF = {
    LlmUnavailable.__name__: ErrorCode.LLM_UNAVAILABLE,
    BudgetExhausted.__name__: ErrorCode.BUDGET_EXHAUSTED,
    QuotaExceeded.__name__: ErrorCode.QUOTA_EXCEEDED,
    ContinuityBroken.__name__: ErrorCode.CONTINUITY,
}


def code_of(etype: str | None) -> ErrorCode:
    """The error code of a failure's type: a code itself (what a workflow ends with), a known
    error's, else ``E_INTERNAL``."""
    if etype in ERROR_CODES:
        return ErrorCode(etype)
    return _CODE_OF.get(etype or "", ErrorCode.INTERNAL)


def cause(err: BaseException) -> tuple[ErrorCode, str]:
    """(error code, readable reason) for a failure that ended a job."""
    e: BaseException | None = err
    while isinstance(e, ActivityError | ChildWorkflowError) and e.cause is not None:
        e = e.cause
    msg = e.message if isinstance(e, FailureError) else str(e)
    etype = (e.type if isinstance(e, ApplicationError) else None) or type(e).__name__
    code = code_of(etype)
    if isinstance(e, ApplicationError) and TRANSIENT_MARK in e.details:
        hours = durability().outage_window_s / 3600
        msg = f"{msg} (an outage still going on when the job's {hours:g} h window to ride it out ended)"
    readable = (ErrorCode.BUDGET_EXHAUSTED, ErrorCode.QUOTA_EXCEEDED, ErrorCode.CONTINUITY)  # their messages say it all
    return code, msg if code in readable else f"{etype}: {msg}"


# The detail services.temporal puts on an activity failure it judged to be an outage.
TRANSIENT_MARK = "transient"


def was_cancelled(err: BaseException) -> bool:
    """Whether a cancellation of this workflow, a child or an activity is behind ``err``."""
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, TemporalCancelledError):
            return True
        e = e.cause if isinstance(e, FailureError) else None
    return False
