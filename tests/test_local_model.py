"""End to end with the real offline default model: Gemma 3 270M served by llama.cpp."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from activities.llm import LlmClient
from activities.prompts import LOCAL_MAX_TOKENS, LOCAL_SAMPLING
from core.spec import JobSpec
from core.text import count_words
from db.models import AuditEvent, LlmCall
from quire import localmodel
from services import jobs
from tests.helpers import output, wait
from worker import build_worker

QUEUE = "quire-local-model"


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = localmodel.ensure_model(tmp_path_factory.mktemp("models"))
    assert localmodel.portable(), "llama.cpp is a native build: python -m quire.localmodel replaces it"
    assert model.stat().st_mode & 0o777 == 0o600  # private, like everything under QUIRE_HOME
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llm") / "llm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(localmodel.server_args(model, port), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:  # an external server starting up: poll its readiness with a deadline
        try:  # up, and a first completion answered (a build that cannot run dies on it)
            if localmodel.answers(url):
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, Path(log).read_text()[-2000:]
        assert time.monotonic() < deadline, "llama.cpp server did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
async def local_worker(client, db, llama_url) -> AsyncIterator[None]:
    llm = LlmClient(  # as the embedded stack builds it for the local model (worker.llm_from_settings)
        db,
        base_url=llama_url,
        api_key=None,
        model=localmodel.MODEL_ALIAS,
        timeout=300,
        prompt_style="document",
        sampling=LOCAL_SAMPLING,
        max_prose_tokens=LOCAL_MAX_TOKENS,
    )
    async with build_worker(client, db, llm, QUEUE):
        yield
    await llm.close()


async def test_real_small_model_meets_target_streaming_its_answers(db, client, user, local_worker):
    job, _ = await jobs.submit(
        db,
        client,
        user_id=user.user_id,
        user_name=user.name,
        spec=JobSpec(kind="generate", prompt="Why bees dance", target_words=120),
        task_queue=QUEUE,
        default_model=localmodel.MODEL_ALIAS,
    )
    assert await wait(client, job.id) == "succeeded"
    doc = await output(db, job.id)
    assert doc is not None and count_words(doc.text) >= 120
    async with db.tx() as s:
        calls = (await s.execute(select(LlmCall).where(LlmCall.job_id == job.id))).scalars().all()
        events = (
            (await s.execute(select(AuditEvent.data).where(AuditEvent.job_id == job.id, AuditEvent.kind == "llm")))
            .scalars()
            .all()
        )
    ok = [c for c in calls if c.status == "ok"]
    assert ok and all(c.model == localmodel.MODEL_ALIAS for c in ok)
    # Streamed: llama.cpp's server sends no usage chunk (it ignores include_usage), so tokens are
    # estimated and marked so; the first token's time is measured on every answer.
    assert all(c.tokens_estimated and c.tokens_in > 0 and c.tokens_out > 0 for c in ok)
    # Its prose calls carry llama.cpp's sampling fields, and the server took them.
    prose = [c for c in ok if c.purpose in ("write", "extend")]
    assert prose and all(c.params["extra_body"]["repeat_penalty"] == LOCAL_SAMPLING["repeat_penalty"] for c in prose)
    assert all(c.params["max_tokens"] <= LOCAL_MAX_TOKENS for c in prose)  # short answers: it loops in long ones
    assert all(0 < c.ttft_ms < c.latency_ms for c in ok)
    assert len(events) == len(calls) and all(e["tokens_out"] is not None for e in events if e["status"] == "ok")
