"""A job's runs and their Temporal workflow ids.

A job runs as workflow ``job-<id>``; each resume (``quire resume``) starts a new run, workflow
``job-<id>-r<n>`` (n = 2, 3, ...), so that every run keeps its own history in Temporal and a stale
child of an earlier run can never be mistaken for the current one. A unit's child workflow is
``<run's id>-u<unit>``. ``job-<id>`` stays a prefix of every id of the job (Temporal's
``WorkflowId STARTS_WITH 'job-<id>'`` finds them all), and ``jobs.workflow_id`` names the current run.

An edit of a finished job (regenerate, hand edit, rewrite, rollback: ``activities.edits``) is a
short workflow of its own, ``job-<id>-e<n>`` (n: the edit's number in the job), its top-up units
``job-<id>-e<n>-u<unit>``: it belongs to no run, and only it may write to a job that has succeeded.
"""

from __future__ import annotations

import re
import uuid

_WID = re.compile(r"^job-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:-r(\d+))?(?:-u\d+)?$")


def workflow_id(job_id: uuid.UUID | str, run: int = 1) -> str:
    """The workflow id of run ``run`` of a job (the first run has no suffix)."""
    return f"job-{job_id}" if run == 1 else f"job-{job_id}-r{run}"


_EDIT = re.compile(r"^job-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-e(\d+)(?:-u\d+)?$")


def edit_workflow_id(job_id: uuid.UUID | str, number: int) -> str:
    """The workflow id of edit ``number`` of a job."""
    return f"job-{job_id}-e{number}"


def edit_of(wid: str | None) -> int | None:
    """The edit number a workflow id (an edit's, or one of its units') belongs to; None if none."""
    m = _EDIT.match(wid or "")
    return int(m.group(1)) if m else None


def run_of(wid: str | None) -> int | None:
    """The run a job's workflow id (or one of its children's) belongs to; None if not a job's."""
    m = _WID.match(wid or "")
    if m is None:
        return None
    return int(m.group(2)) if m.group(2) else 1


def job_of(wid: str | None) -> uuid.UUID | None:
    """The job a workflow id belongs to; None if not a job's."""
    m = _WID.match(wid or "")
    return uuid.UUID(m.group(1)) if m else None
