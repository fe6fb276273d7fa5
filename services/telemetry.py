"""Wiring of metrics and traces for the API and the worker.

Metrics (``metrics``) are always on: the API serves them at ``/metrics`` (``api.metrics``),
the worker on its own port (``serve_metrics``). Traces are on only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: then spans go
by OTLP over HTTP (protobuf) to that collector, from Temporal's ``TracingInterceptor`` (workflows
and activities, client and worker), FastAPI's instrumentation (requests) and one span per model
call (``activities.llm_stream``). Every span of a job carries its id (``quire.job_id``). While
tracing is off none of the OpenTelemetry SDK, its exporter, its instrumentations or Temporal's
contrib module is imported.
"""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select

import metrics
from core import telemetry
from db.models import Job
from db.session import Database

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = structlog.get_logger(__name__)

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_JOB_PATH = re.compile(r"^/v1/jobs/([0-9a-fA-F-]{36})(?:/|$)")
_lock = threading.Lock()
_provider: TracerProvider | None = None
_apps_traced = False  # some app of this process has a span per request


def tracing_configured() -> bool:
    return any(os.environ.get(v) for v in ENDPOINT_VARS)


def provider() -> TracerProvider | None:
    """The process's tracer provider, once ``start_tracing`` has made one."""
    return _provider


def start_tracing(service_name: str) -> TracerProvider | None:
    """Turn tracing on for this process when an OTLP endpoint is configured (once; later calls
    return the same provider): spans are batched and exported by OTLP/HTTP. None when off."""
    global _provider
    with _lock:
        if _provider is not None or not tracing_configured():
            return _provider
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The exporter reads the OTEL_EXPORTER_OTLP_* settings (endpoint, headers, timeout) itself.
        _provider = make_provider(service_name, BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(_provider)
        metrics.set_tracer(_provider.get_tracer("quire"))
        log.info("tracing.on", service=service_name, endpoint=_endpoint())
        return _provider


def make_provider(service_name: str, *processors: Any) -> TracerProvider:
    """A tracer provider that tags every span of a job with its id, then hands spans to
    ``processors`` (an exporter's). ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win
    over ``service_name``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    tp = TracerProvider(resource=Resource.create(attrs))
    tp.add_span_processor(_job_tagger())
    for p in processors:
        tp.add_span_processor(p)
    return tp


def in_memory(service_name: str, exporter: SpanExporter) -> TracerProvider:
    """A provider exporting each span at once to ``exporter`` (tests look at the spans of a job)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    return make_provider(service_name, SimpleSpanProcessor(exporter))


def stop_tracing() -> None:
    """Flush and close the exporter (at shutdown: spans still in its batch are sent)."""
    global _provider
    with _lock:
        if _provider is None:
            return
        _provider.shutdown()
        _provider = None
        metrics.set_tracer(None)


def temporal_interceptors(tp: TracerProvider | None = None) -> list[Any]:
    """Temporal's tracing interceptor (client and worker: workflows, activities) when tracing is
    on, else nothing. Given to ``Client.connect``, workers made from that client trace too."""
    tp = tp or _provider
    if tp is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tp.get_tracer("temporalio"))]


def instrument_app(app: FastAPI, tp: TracerProvider | None = None) -> None:
    """A server span per request (none for probes, metrics and static files), tagged with the job
    its path names. No-op while tracing is off."""
    tp = tp or _provider
    if tp is None:
        return
    global _apps_traced
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tp,
        server_request_hook=_tag_request,
        excluded_urls="/healthz,/readyz,/metrics,/static/.*",
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )
    _apps_traced = True


def tag_job(job_id: object) -> None:
    """Put ``job_id`` on the current span (a request that created a job learns its id late)."""
    if not _apps_traced:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(telemetry.JOB_ATTRIBUTE, str(job_id))


def serve_metrics(host: str, port: int) -> tuple[Any, threading.Thread]:
    """This process's metrics over HTTP (``GET /metrics``), in a thread of their own."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host)


async def job_counts(db: Database) -> dict[tuple[str, str], int]:
    """Jobs by (status, kind): one grouped count over the jobs table, for a scrape."""
    async with db.tx() as s:
        rows = (await s.execute(select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind))).all()
    return {(status, kind): int(n) for status, kind, n in rows}


def _endpoint() -> str:
    return next((os.environ[v] for v in reversed(ENDPOINT_VARS) if os.environ.get(v)), "")


def _tag_request(span: Any, scope: dict[str, Any]) -> None:
    m = _JOB_PATH.match(str(scope.get("path", "")))
    if m and span is not None and span.is_recording():
        span.set_attribute(telemetry.JOB_ATTRIBUTE, m.group(1).lower())


def _job_tagger() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor

    class JobTagger(SpanProcessor):
        """Sets ``quire.job_id`` on a span as it starts: from the Temporal workflow id it names
        (``job-<id>``, a unit's ``job-<id>-u<n>``), else from its parent span in this process."""

        def on_start(self, span: Span, parent_context: Context | None = None) -> None:
            attrs = span.attributes or {}
            if telemetry.JOB_ATTRIBUTE in attrs:
                return
            job = telemetry.job_of_workflow(attrs.get("temporalWorkflowID"))
            if job is None:
                parent = trace.get_current_span(parent_context)
                job = getattr(parent, "attributes", None) and parent.attributes.get(telemetry.JOB_ATTRIBUTE)  # type: ignore[attr-defined]
            if job:
                span.set_attribute(telemetry.JOB_ATTRIBUTE, str(job))

        def on_end(self, span: ReadableSpan) -> None:
            pass

    return JobTagger()
