"""What names a job in telemetry: the span attribute every span of a job carries, and the job
of a workflow id. (The metric objects and the tracing switch are process state: ``metrics``.)"""

from __future__ import annotations

import uuid

# The span attribute every span of a job carries (its workflow, activities, model calls, requests).
JOB_ATTRIBUTE = "quire.job_id"


def job_of_workflow(workflow_id: object) -> str | None:
    """The job id in a workflow id (``job-<id>``, a unit's ``job-<id>-u<n>``), as text, or None."""
    if not isinstance(workflow_id, str) or not workflow_id.startswith("job-"):
        return None
    try:
        return str(uuid.UUID(workflow_id[4:40]))
    except ValueError:
        return None
