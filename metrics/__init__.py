"""What a process measures about its own work: Prometheus metrics and the tracing switch.

Process state, not domain logic, so not in ``core``: the metric objects are counters in memory
(recording one is no I/O) that every layer increments (the audited transaction in ``db``, model
calls in ``activities``, activity attempts in ``services``), so they sit in a package of their own
below all of them. Each process (the API, each worker) has its own registry, prometheus-client's
default; ``api.metrics`` and ``services.telemetry`` serve it. No label names a job, a user or
anything a job contains.

Tracing is off unless ``services.telemetry`` turns it on (``OTEL_EXPORTER_OTLP_ENDPOINT`` set):
until then ``tracer()`` is None and nothing of the OpenTelemetry SDK is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram, disable_created_metrics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

# No `_created` series beside each counter: they double what a scrape carries and no one graphs them.
disable_created_metrics()

MODEL_CALLS = Counter(
    "quire_model_calls",
    "Model calls (one per HTTP attempt, as llm_calls rows) by model, purpose and outcome: ok, truncated "
    "(finish_reason=length), empty, rate_limited, server_error, client_error, timeout, connection_error, "
    "bad_response, cancelled",
    ["model", "purpose", "outcome"],
)
MODEL_TOKENS = Counter(
    "quire_model_tokens",
    "Tokens of model calls by type: input, output, cached (input tokens the provider served from its cache); "
    "estimated at 4 characters a token where the endpoint reported no usage, as llm_calls records them",
    ["model", "type"],
)
MODEL_LATENCY = Histogram(
    "quire_model_latency_seconds",
    "Wall time of a model call, from sending the request to the end of the answer",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300),
)
MODEL_TTFT = Histogram(
    "quire_model_time_to_first_token_seconds",
    "Time from sending a model request to the first streamed token of its answer",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ACTIVITIES = Counter(
    "quire_activity_attempts",
    "Temporal activity attempts by activity and outcome: completed, failed, cancelled",
    ["activity", "outcome"],
)
ACTIVITY_RETRIES = Counter(
    "quire_activity_retries",
    "Activity attempts after the first (Temporal retried the activity)",
    ["activity"],
)
AUDIT_EVENTS = Counter(
    "quire_audit_events_written",
    "Audit events committed to job logs, by kind (rolled-back work's events included, as the log keeps them)",
    ["kind"],
)
AUDIT_ALARMS = Counter(
    "quire_audit_alarms",
    "Checkpoints of a job's log refused as not extending what was signed or witnessed before (a rewritten or "
    "cut log), by who refused: witness, signer",
    ["by"],
)
AUDIT_WITNESS = Histogram(
    "quire_audit_witness_seconds",
    "Time the signer spends on a checkpoint that goes to witnesses (its checks, the proofs, every "
    "add-checkpoint call), by outcome: cosigned (a quorum), unwitnessed (fewer: a witness gave no answer), refused",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REFUSED = Counter(
    "quire_api_refused",
    "Requests the API refused before any work: unauthenticated (no row written), rate_limited, streams",
    ["reason"],
)
CHUNKS = Counter("quire_chunks_written", "Chunks committed (each once, whatever its attempts)")
CHUNK_ATTEMPTS = Counter("quire_chunk_attempts", "Chunk attempts stored, by kind: write, extend", ["kind"])
WORDS = Counter("quire_words_written", "Words of the chunks committed (the word rule of core.text.count_words)")

_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """The tracer of model-call spans, or None while tracing is off (the default)."""
    return _tracer


def set_tracer(t: Tracer | None) -> None:
    global _tracer
    _tracer = t
