"""The reconciler's workflow: what the Temporal Schedule ``<task queue>-reconcile`` starts every
period (``services.reconcile.ensure_schedule``; overlap SKIP, so never two at once). It runs one
activity, ``reconcile``, which finds where Postgres and Temporal disagree and settles each.

The activity is named, not referenced: it settles through ``services`` (a job's start, an
Update, a row's end), a layer above ``activities``, so it is defined there and registered by the
worker under this name.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

ACTIVITY = "reconcile"


@workflow.defn(name="ReconcileWorkflow")
class ReconcileWorkflow:
    @workflow.run
    async def run(self) -> dict[str, int]:
        """Counts of what was found and settled, by action (the run's result in Temporal)."""
        result: dict[str, int] = await workflow.execute_activity(
            ACTIVITY,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            # Once: the next period runs it again, from what the rows say then.
            retry_policy=RetryPolicy(maximum_attempts=1),
            result_type=dict,
            summary="reconcile",
        )
        return result
