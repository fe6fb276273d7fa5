"""One model call on the wire: the streamed answer read as it arrives (its time to first token,
a deadline over the whole stream), what became of it, and how it is measured (Prometheus metrics,
and an OpenTelemetry span per call, following the GenAI semantic conventions, when tracing is on).

``activities.llm`` records each call; this module only sends, reads and observes it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai
from openai import AsyncOpenAI

from core import telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class LlmTimeout(TimeoutError):
    """The answer did not end within the call's timeout (it never started, or stalled mid-way)."""


@dataclass
class Outcome:
    """What one HTTP attempt gave: filled as the answer streams in, so a failure keeps what came."""

    text: str | None = None
    finish: str | None = None
    usage: Any = None
    http_status: int | None = None
    error: BaseException | None = None
    ttft_ms: float | None = None  # from sending the request to the first token of content


async def stream_completion(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    limit_s: float,
    out: Outcome,
    t0: float,
) -> None:
    """Send one streamed request and read its answer into ``out``. ``limit_s`` bounds the whole
    call, not each read: a stream that trickles or stalls mid-way times out like one that never
    starts (the HTTP client's own timeout only bounds the wait between two reads)."""
    parts: list[str] = []
    ended = False
    try:
        async with asyncio.timeout(limit_s):
            stream = await client.chat.completions.create(model=model, messages=messages, **params)  # type: ignore[call-overload]
            out.http_status = stream.response.status_code
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:  # OpenAI's include_usage chunk (choices empty)
                        out.usage = chunk.usage
                    for choice in chunk.choices[:1]:
                        piece = choice.delta.content if choice.delta is not None else None
                        if piece:
                            if out.ttft_ms is None:
                                out.ttft_ms = (time.perf_counter() - t0) * 1000
                            parts.append(piece)
                        if choice.finish_reason is not None:
                            out.finish = choice.finish_reason
        ended = True
    except TimeoutError as exc:
        got = f" ({len(parts)} chunks of it had arrived)" if parts else ""
        raise LlmTimeout(f"the answer did not end within {limit_s:g} s{got}") from exc
    finally:  # a failed call keeps what arrived of its answer, or none
        out.text = "".join(parts) if parts or ended else None


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
    telemetry.MODEL_CALLS.labels(m, record.purpose, record.outcome).inc()
    for kind, n in (("input", record.tokens_in), ("output", record.tokens_out), ("cached", record.tokens_cached)):
        if n:
            telemetry.MODEL_TOKENS.labels(m, kind).inc(n)
    telemetry.MODEL_LATENCY.labels(m).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        telemetry.MODEL_TTFT.labels(m).observe(record.ttft_ms / 1000)
    if span is not None:
        _end_span(span, record, end_ns)


def start_span(
    base_url: str, job_id: uuid.UUID, call_id: int, purpose: str, model: str, attempt: int, params: dict[str, Any]
) -> Span | None:
    """The span of one model call (GenAI semantic conventions), a child of the current one (the
    activity's), or None while tracing is off."""
    tracer = telemetry.tracer()
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
