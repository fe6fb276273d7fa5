"""``GET /metrics``: this API process's metrics in Prometheus' text format.

Besides the counters of ``metrics`` (whatever this process did: audit events it wrote,
workflow starts...), it serves what only the API knows (live audit streams open) and, read from
the database at scrape time with one grouped count, the jobs by status and kind. Nothing here
names a job or a user, but the counts are of every user's jobs: so without ``QUIRE_METRICS_TOKEN``
(a Bearer token of its own, one Prometheus can send; users' keys are not for scrapers) it answers
only clients on ``QUIRE_METRICS_NETWORKS`` (loopback by default).
"""

from __future__ import annotations

import hmac
import ipaddress

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from core.spec import JOB_KINDS, JOB_STATUSES
from services.telemetry import job_counts

log = structlog.get_logger(__name__)

JOBS = Gauge("quire_jobs", "Jobs by status and kind (counted in the database at scrape time)", ["status", "kind"])
SSE_SUBSCRIBERS = Gauge("quire_sse_subscribers", "Live audit streams (server-sent events) open on this API process")

router = APIRouter(include_in_schema=False)  # for Prometheus, not API clients: the README documents it


def _from_allowed_network(request: Request, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(request.client.host if request.client else "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    token = settings.quire_metrics_token
    if token is None and not _from_allowed_network(request, settings.quire_metrics_networks):
        return JSONResponse(
            {"detail": "metrics answer only QUIRE_METRICS_NETWORKS (loopback by default), or set QUIRE_METRICS_TOKEN"},
            status_code=403,
        )
    if token is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token.get_secret_value()}".encode()):
            return JSONResponse(
                {"detail": "metrics need the token set in QUIRE_METRICS_TOKEN (Authorization: Bearer ...)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    try:
        counts = await job_counts(request.app.state.db)
    except Exception as exc:  # noqa: BLE001 - the process's own metrics are still worth serving
        log.warning("metrics.jobs_unavailable", error=str(exc))
        counts = None
    # No await from here on: a concurrent scrape never sees the gauge half set.
    JOBS.clear()
    if counts is not None:  # every status and kind, zeros included; none at all if the count failed
        for status in JOB_STATUSES:
            for kind in JOB_KINDS:
                JOBS.labels(status, kind).set(counts.get((status, kind), 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
