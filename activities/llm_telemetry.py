"""How a model call is measured: Prometheus metrics (``metrics``) and, when tracing is on, an
OpenTelemetry span per call following the GenAI semantic conventions.

``activities.llm`` sends and records calls (``llm_stream``, ``llm_record``); this only observes them.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai

import metrics
from activities.llm_stream import LlmTimeout, Outcome
from core import telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span


def outcome_label(out: Outcome, status: str) -> str:
    """The call's outcome as a metric label (a small, fixed set)."""
    err = out.error
    if err is None:
        if status != "ok":
            return "empty"
        return "truncated" if out.finish == "length" else "ok"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    if isinstance(err, openai.RateLimitError):
        return "rate_limited"
    if isinstance(err, openai.APIStatusError):
        return "server_error" if err.status_code >= 500 else "client_error"
    if isinstance(err, LlmTimeout | openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection_error"
    return "bad_response"


@dataclass
class CallRecord:
    """What a finished call is measured by (the figures ``llm_calls`` stores)."""

    model: str
    purpose: str
    outcome: str
    latency_ms: float
    ttft_ms: float | None
    tokens_in: int | None
    tokens_out: int | None
    tokens_cached: int | None
    finish: str | None
    error: str | None


def observe(record: CallRecord, span: Span | None, end_ns: int) -> None:
    """Count the call in this process's metrics, and end its span (if tracing is on)."""
    m = record.model
    metrics.MODEL_CALLS.labels(m, record.purpose, record.outcome).inc()
    for kind, n in (("input", record.tokens_in), ("output", record.tokens_out), ("cached", record.tokens_cached)):
        if n:
            metrics.MODEL_TOKENS.labels(m, kind).inc(n)
    metrics.MODEL_LATENCY.labels(m).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        metrics.MODEL_TTFT.labels(m).observe(record.ttft_ms / 1000)
    if span is not None:
        _end_span(span, record, end_ns)


def start_span(
    base_url: str, job_id: uuid.UUID, call_id: int, purpose: str, model: str, attempt: int, params: dict[str, Any]
) -> Span | None:
    """The span of one model call (GenAI semantic conventions), a child of the current one (the
    activity's), or None while tracing is off."""
    tracer = metrics.tracer()
    if tracer is None:
        return None
    from urllib.parse import urlsplit

    from opentelemetry.trace import SpanKind

    url = urlsplit(base_url)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",  # the API spoken (the conventions' rule for compatible endpoints)
        "gen_ai.system": "openai",  # the attribute's older name, which many backends still read
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": params.get("max_tokens"),
        "gen_ai.request.temperature": params.get("temperature"),
        "gen_ai.request.stream": True,
        "gen_ai.output.type": "json" if "response_format" in params else "text",
        "server.address": url.hostname or "",
        "server.port": url.port or (443 if url.scheme == "https" else 80),
        telemetry.JOB_ATTRIBUTE: str(job_id),
        "quire.llm_call_id": call_id,
        "quire.purpose": purpose,
        "quire.attempt": attempt,
    }
    return tracer.start_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes={k: v for k, v in attrs.items() if v is not None}
    )


def _end_span(span: Span, r: CallRecord, end_ns: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    if r.finish is not None:
        span.set_attribute("gen_ai.response.finish_reasons", [r.finish])
    for name, value in (
        ("gen_ai.usage.input_tokens", r.tokens_in),
        ("gen_ai.usage.output_tokens", r.tokens_out),
        ("gen_ai.usage.cache_read.input_tokens", r.tokens_cached),
        ("gen_ai.response.time_to_first_chunk", r.ttft_ms / 1000 if r.ttft_ms is not None else None),
    ):
        if value is not None:
            span.set_attribute(name, value)
    span.set_attribute("quire.outcome", r.outcome)
    if r.error is not None:
        span.set_attribute("error.type", r.outcome)
        span.set_status(Status(StatusCode.ERROR, r.error))
    span.end(end_time=end_ns)
