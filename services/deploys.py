"""Jobs that outlive deploys, and users who share the model: Temporal's Worker Versioning and its
task-queue fairness, as Quire uses them (README: "Deploying new code", "Sharing the model").

Versioning: every worker of a release declares the same Worker Deployment Version (deployment =
the task queue, build = QUIRE_BUILD_ID). Every workflow is pinned to the version it started on
(worker.py) and moves to the current version when it continues as new (``workflows.steps``). A worker makes
its version the deployment's current one when it starts (``promote``), unless that version has been
current before: a superseded release whose worker restarts after a crash must not take new jobs back.

Fairness: a job's workflow carries ``Priority(fairness_key=<its user>)``; its children and activities
inherit it, so the model task queue dispatches the users' backlogged steps in turn instead of first
come, first served. Temporal's server does it once fairness is on (``dev_server_args`` for the
embedded dev server; ``matching.enableFairness`` in a cluster's dynamic config).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionProto
from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import Priority, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode

log = structlog.get_logger(__name__)

# Dynamic config of the embedded dev server (and of the tests' servers): fairness on, with its
# backlog migration for a persisted server that had tasks queued before, and one partition per task
# queue (fairness is kept per partition: one keeps it exact, and a dev server needs no more).
# docker-compose.yml gives its Temporal the same (configs: temporal-dynamic-config).
DEV_SERVER_CONFIG = {
    "matching.enableFairness": "true",
    "matching.enableMigration": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


def dev_server_args() -> list[str]:
    """`temporal server start-dev` arguments for the dynamic config above."""
    return [arg for k, v in DEV_SERVER_CONFIG.items() for arg in ("--dynamic-config-value", f"{k}={v}")]


def job_priority(user_id: int) -> Priority:
    """A job's priority: its user is its fairness key (a number: Temporal keeps keys in clear)."""
    return Priority(fairness_key=f"user-{user_id}")


def version(task_queue: str, build_id: str) -> WorkerDeploymentVersion:
    """The Worker Deployment Version of a worker: the deployment is named after its task queue."""
    return WorkerDeploymentVersion(deployment_name=task_queue, build_id=build_id)


async def version_status(client: Client, v: WorkerDeploymentVersion) -> WorkerDeploymentVersionStatus.ValueType:
    """CURRENT, INACTIVE (never current), DRAINING or DRAINED...; NOT_FOUND raises (no worker of it
    has polled yet)."""
    desc = await client.workflow_service.describe_worker_deployment_version(
        DescribeWorkerDeploymentVersionRequest(
            namespace=client.namespace,
            deployment_version=VersionProto(deployment_name=v.deployment_name, build_id=v.build_id),
        )
    )
    return desc.worker_deployment_version_info.status


async def promote(client: Client, v: WorkerDeploymentVersion, identity: str, within: float = 60.0) -> bool:
    """Make ``v`` the current version of its deployment (new jobs start on it; pinned ones stay on
    theirs) unless it has been current before; returns whether it is current. Waits (up to
    ``within`` seconds) for the server to have seen this worker's pollers."""
    deadline = time.monotonic() + within
    while True:
        try:
            status = await version_status(client, v)
            if status == WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT:
                return True
            if status not in (
                WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_INACTIVE,
                WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CREATED,
                WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_UNSPECIFIED,
            ):  # ramping, draining, drained: an operator decided, or a newer release took over
                log.info("deploy.not_promoted", version=v.to_canonical_string(), status=status)
                return False
            await client.workflow_service.set_worker_deployment_current_version(
                SetWorkerDeploymentCurrentVersionRequest(
                    namespace=client.namespace,
                    deployment_name=v.deployment_name,
                    build_id=v.build_id,
                    identity=identity,
                )
            )
            log.info("deploy.promoted", version=v.to_canonical_string())
            return True
        except RPCError as exc:
            # Not yet seen by the server (its pollers register within a moment), a concurrent change,
            # or a server too busy to answer in time (a cancelled or timed-out call): asked again.
            retry = exc.status in (
                RPCStatusCode.NOT_FOUND,
                RPCStatusCode.FAILED_PRECONDITION,
                RPCStatusCode.ABORTED,
                RPCStatusCode.CANCELLED,
                RPCStatusCode.DEADLINE_EXCEEDED,
                RPCStatusCode.UNAVAILABLE,
            )
            if not retry or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)
