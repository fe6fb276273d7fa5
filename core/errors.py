"""The errors that end a step, a job or a delivery, named where workflow code can import them
without I/O. Temporal carries a failure by its class name (an ``ApplicationError``'s ``type``, the
retry policy's ``non_retryable_error_types``), so a class here keeps its name wherever it moves."""

from __future__ import annotations

from core.quota import QuotaExceeded


class JobGone(Exception):
    """The job row no longer exists (the user deleted it): nothing more is written for it."""


class JobNotRunnable(Exception):
    """The job is finished, failed or cancelled: no more work is done for it."""


class ContinuityBroken(Exception):
    """A seam's continuity findings could not be repaired and the job asked for strict continuity."""


class LlmUnavailable(Exception):
    """The endpoint kept failing with transient errors; Temporal retries the activity later."""


class BudgetExhausted(Exception):
    """The job's token or time budget is used up: no more model calls are made for it."""


class WebhookRefused(Exception):
    """The target is not allowed (or cannot be signed for): no retry can cure that."""


# Errors that no retry can cure; the job's workflows name them in their retry policy.
NON_RETRYABLE = [
    JobGone.__name__,
    JobNotRunnable.__name__,
    BudgetExhausted.__name__,
    QuotaExceeded.__name__,
    ContinuityBroken.__name__,
]
# Failures no retry of a webhook delivery cures: its workflow's retry policy names them.
WEBHOOK_NON_RETRYABLE = [WebhookRefused.__name__, JobGone.__name__]
