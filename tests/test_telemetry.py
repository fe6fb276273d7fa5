"""Operators' view: /metrics after a job agrees with the database, a job's trace tree (workflow,
activities, model calls, each with the job id), and tracing costs nothing when it is off."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from temporalio.client import Client

import metrics
import testkit
from api.app import create_app
from db.session import Database
from services import accounts, telemetry
from services.config import load_settings
from services.temporal import AuditInterceptor
from tests.conftest import TASK_QUEUE, make_llm
from tests.fake_llm import FakeLLM
from tests.helpers import auth
from worker import build_worker

pytestmark = pytest.mark.usefixtures("worker")
ROOT = Path(__file__).parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.tx() as s:
        return list((await s.execute(text(sql), params)).all())


async def follow(http: httpx.AsyncClient, jid: str, user: accounts.NewUser, on_first: Any = None) -> None:
    """Follow the job's live stream to its end event; ``on_first`` runs once the stream is open."""
    first = True
    async with http.stream("GET", f"/v1/jobs/{jid}/audit/stream", headers=auth(user), timeout=60) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if first and line.startswith("data:") and on_first is not None:
                first = False
                await on_first()
            if line.startswith("event: end"):
                return
    raise AssertionError("the stream closed without an end event")


async def test_metrics_after_a_job_agree_with_the_database(api_url, db, fake, user):
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        before = await scrape(http)
        r = await http.post(
            "/v1/jobs", json={"kind": "generate", "prompt": "Salt roads", "target_words": 400}, headers=auth(user)
        )
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        during: list[Samples] = []

        async def look() -> None:
            during.append(await scrape(http))

        await follow(http, jid, user, look)  # ends once every writer of the job's log is done
        after = await scrape(http)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    j = uuid.UUID(jid)
    ((calls, ok, tin, tout, cached, ttft),) = await rows(
        db,
        "SELECT count(*), count(*) FILTER (WHERE status = 'ok'), sum(tokens_in), sum(tokens_out),"
        " coalesce(sum(tokens_cached), 0), count(ttft_ms) FROM llm_calls WHERE job_id = :j",
        j=j,
    )
    assert calls > 0 and ttft == calls  # every call streamed at least one token
    assert delta("quire_model_calls_total") == calls
    assert delta("quire_model_calls_total", outcome="ok") + delta("quire_model_calls_total", outcome="truncated") == ok
    assert delta("quire_model_tokens_total", type="input") == tin
    assert delta("quire_model_tokens_total", type="output") == tout
    assert delta("quire_model_tokens_total", type="cached") == cached
    assert delta("quire_model_latency_seconds_count") == calls
    assert delta("quire_model_time_to_first_token_seconds_count") == ttft

    ((chunks, words),) = await rows(
        db,
        "SELECT count(*), sum((data->>'words')::int) FROM audit_events"
        " WHERE job_id = :j AND kind = 'chunk' AND action = 'done'",
        j=j,
    )
    assert chunks > 0 and delta("quire_chunks_written_total") == chunks
    assert delta("quire_words_written_total") == words
    for kind, n in await rows(db, "SELECT kind, count(*) FROM chunk_attempts WHERE job_id = :j GROUP BY kind", j=j):
        assert delta("quire_chunk_attempts_total", kind=kind) == n, kind

    by_kind = dict(await rows(db, "SELECT kind, count(*) FROM audit_events WHERE job_id = :j GROUP BY kind", j=j))
    assert {k: delta("quire_audit_events_written_total", kind=k) for k in by_kind} == by_kind
    assert delta("quire_audit_events_written_total") == sum(by_kind.values())
    for outcome, action in (("completed", "end"), ("failed", "error")):
        ((n,),) = await rows(
            db,
            "SELECT count(*) FROM audit_events WHERE job_id = :j AND kind = 'activity' AND action = :a",
            j=j,
            a=action,
        )
        assert delta("quire_activity_attempts_total", outcome=outcome) == n, outcome

    # Read from the database at scrape time; the stream counted while it was open.
    for status, kind, n in await rows(db, "SELECT status, kind, count(*) FROM jobs GROUP BY status, kind"):
        assert total(after, "quire_jobs", status=status, kind=kind) == n
    assert total(during[0], "quire_sse_subscribers") == total(before, "quire_sse_subscribers") + 1
    assert total(after, "quire_sse_subscribers") == total(before, "quire_sse_subscribers")


async def test_metrics_name_no_job_and_can_require_a_token(db, client, user):
    job_id = await testkit.make_job(db, user.user_id)
    settings = load_settings(quire_metrics_token="scrape-me-9c1f", quire_model="fake-model")
    app = create_app(settings, db=db, client=client)
    app.state.settings, app.state.db = settings, db  # the route's dependencies, without the lifespan
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        refused = await http.get("/metrics", headers=auth(user))  # a user's key is not the scrape token
        assert refused.status_code == 401 and "QUIRE_METRICS_TOKEN" in refused.json()["detail"]
        r = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me-9c1f"})
    assert r.status_code == 200 and 'quire_jobs{kind="rewrite",status="failed"}' in r.text
    assert str(job_id) not in r.text and user.name not in r.text  # aggregates only


@pytest.fixture
async def traced(db: Database, temporal_env, fake_llm: FakeLLM) -> AsyncIterator[tuple[InMemorySpanExporter, str]]:
    """A client, worker and API traced into memory, as OTEL_EXPORTER_OTLP_ENDPOINT would trace them
    into a collector; yields the exporter and the API's URL."""
    exporter = InMemorySpanExporter()
    tp = telemetry.in_memory("quire-test", exporter)
    metrics.set_tracer(tp.get_tracer("quire"))
    traced_client = await Client.connect(
        testkit.target(temporal_env),
        namespace=temporal_env.client.namespace,
        interceptors=[*telemetry.temporal_interceptors(tp), AuditInterceptor(db)],
    )
    queue = f"{TASK_QUEUE}-traced"
    settings = load_settings(temporal_task_queue=queue, quire_model="fake-model")
    app = create_app(settings, db=db, client=traced_client)
    telemetry.instrument_app(app, tp)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    llm = make_llm(db, fake_llm)
    try:
        async with build_worker(traced_client, db, llm, queue):
            yield exporter, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        metrics.set_tracer(None)
        server.should_exit = True
        await serving
        sock.close()
        await llm.close()
        tp.shutdown()


async def test_a_jobs_trace_tree_has_its_workflow_activities_and_model_calls(traced, db, fake, user):
    exporter, url = traced
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post(
            "/v1/jobs", json={"kind": "generate", "prompt": "Kites", "target_words": 150}, headers=auth(user)
        )
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        await follow(http, jid, user)
    finished = exporter.get_finished_spans()
    root = next(s for s in finished if s.name == "POST /v1/jobs")
    spans = [s for s in finished if s.context.trace_id == root.context.trace_id]
    # Other traces: only the live stream's request (its own trace), which names the job too.
    others = [s for s in finished if s.context.trace_id != root.context.trace_id]
    assert {s.name for s in others} <= {"GET /v1/jobs/{job_id}/audit/stream"}
    assert all(s.attributes.get("quire.job_id") == jid for s in others)
    by_id = {s.context.span_id: s for s in spans}

    def parent(s: ReadableSpan) -> ReadableSpan | None:
        return by_id.get(s.parent.span_id) if s.parent is not None else None

    def path(s: ReadableSpan) -> list[str]:
        out = [s.name]
        while (p := parent(s)) is not None:
            out.append(p.name)
            s = p
        return out

    assert root.parent is None
    assert all(s.attributes.get("quire.job_id") == jid for s in spans), [
        s.name for s in spans if s.attributes.get("quire.job_id") != jid
    ]
    # Temporal's interceptor: a workflow's spans (its run, the activities and children it starts)
    # hang under the span that started it; each activity's run under its start.
    named = {s.name: s for s in spans}
    start = named["StartWorkflow:JobWorkflow"]
    assert parent(start) is root and parent(named["RunWorkflow:JobWorkflow"]) is start
    assert parent(named["StartChildWorkflow:UnitWorkflow"]) is start
    runs = [s for s in spans if s.name.startswith("RunActivity:")]
    assert {"plan_job", "write_chunk", "finalize"} <= {s.name.split(":")[1] for s in runs}
    for run in runs:
        scheduled = parent(run)
        assert scheduled is not None and scheduled.name == "Start" + run.name[3:]
        assert parent(scheduled) in (start, named["StartChildWorkflow:UnitWorkflow"])
    assert all(path(s)[-1] == "POST /v1/jobs" for s in spans)

    model = [s for s in spans if s.name == "chat fake-model"]
    calls = {
        r[0]: r[1:]
        for r in await rows(
            db,
            "SELECT id, purpose, tokens_in, tokens_out, finish_reason FROM llm_calls WHERE job_id = :j",
            j=uuid.UUID(jid),
        )
    }
    assert len(model) == len(calls) > 1
    for s in model:
        a = s.attributes
        purpose, tin, tout, finish = calls[a["quire.llm_call_id"]]
        assert (a["gen_ai.operation.name"], a["gen_ai.system"], a["gen_ai.request.model"]) == (
            "chat",
            "openai",
            "fake-model",
        )
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (tin, tout)
        assert a["gen_ai.response.finish_reasons"] == (finish,) and a["quire.purpose"] == purpose
        assert 0 < a["gen_ai.response.time_to_first_chunk"] and s.end_time > s.start_time
        activity = parent(s)  # each call under the activity that made it
        assert activity is not None and activity.name.startswith("RunActivity:")
        if purpose in ("write", "extend"):
            assert activity.name == "RunActivity:write_chunk"
    assert any(parent(s).name == "RunActivity:write_chunk" for s in model)  # type: ignore[union-attr]


def test_tracing_off_imports_nothing_of_it_and_on_instruments_the_api(tmp_path):
    """Off (no OTLP endpoint): no SDK, exporter, instrumentation or Temporal contrib module is even
    imported by the API or the worker. On: the API traces its requests and its Temporal client."""
    probe = """
import json, os, sys
import worker
from api.app import create_app
from services import telemetry
from services.config import load_settings

def state():
    app = create_app(load_settings(database_url="postgresql://x@127.0.0.1:9/x", temporal_address="x:1"))
    prefixes = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")
    prefixes += ("temporalio.contrib.opentelemetry",)
    return {
        "mods": sorted(m for m in sys.modules if m.startswith(prefixes)),
        "interceptors": [type(i).__name__ for i in telemetry.temporal_interceptors()],
        "traced": bool(getattr(app, "_is_instrumented_by_opentelemetry", False)),
    }

off = state()
os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
print(json.dumps({"off": off, "on": state()}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["off"]["mods"] == [] and seen["off"]["interceptors"] == []
    assert not seen["off"]["traced"]
    assert "opentelemetry.instrumentation.fastapi" in seen["on"]["mods"]
    assert seen["on"]["interceptors"] == ["TracingInterceptor"]
    assert seen["on"]["traced"]
