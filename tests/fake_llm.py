"""A scripted OpenAI-compatible server for tests: the only test double in Quire.

It answers ``POST /v1/chat/completions`` like a real endpoint, over real HTTP, so the real
openai client, retries and recording are exercised. Tests script its behaviour:

- ``ratio``: answer with this fraction (a (lo, hi) range) of the words the prompt asks for
  ("about N words" in the last message); the default is (0.3, 0.6), a model that always
  stops short;
- ``delay_s``: latency added to every answer (keeps a job in flight for kill/cancel tests);
- ``tokens_per_s``: answer at this many tokens a second, like a streaming provider (0: at once);
  a streamed answer sends its first word at once and the rest at that pace, so its time to first
  token is small and its total time proportional to its tokens;
- streaming (``"stream": true``, as Quire asks): server-sent ``data:`` chunks as OpenAI sends
  them (a role chunk, the content in pieces, a chunk with ``finish_reason``, a usage chunk when
  ``stream_options.include_usage`` is set and ``stream_usage`` is on, then ``data: [DONE]``);
  ``stream_usage=False`` plays the local llama.cpp server, which ignores ``include_usage``;
  a request without ``stream`` gets one JSON body, as before;
- ``seam_drift``: every chunk names the "Harbor Lantern Council", spelled so in the book's 1st,
  3rd, ... chapters and "harbor lantern council" in the others: a term drift at their seams;
- it counts the calls in flight (``in_flight``, ``peak_in_flight``) and the seconds it spent
  answering (``model_seconds``), also served at ``GET /v1/stats``;
- ``mode``: "normal" | "empty" (always empty content) | "malformed_plan" (bad JSON for plans) |
  "short_plan" (a plan with half the items asked for); "html" (a hostile endpoint: ``XSS`` markup
  in every field it controls: the prose, every string of a plan, ``finish_reason``, the
  response's ``model`` and ``id``);
  "echo" (prose wrapped the way a small base model wraps it: instruction lines of its prompt
  said back, a paraphrase and a fragment of the request that ends the prompt, junk tokens;
  what it echoed is kept in ``echoed``); "down" (an endpoint that is down: HTTP 500 to everything);
  "controls" (every third prose answer carries a NUL, a BEL and terminal escape sequences);
  "junk" (prose with the junk small models write mixed in, as issue 18 quotes it: a meta-note,
  stray foreign lines, a number run, LaTeX, a glued word, a sentence said again and again, an
  ending cut off mid-sentence; and the same paragraph, ``REPEATED``, in every answer);
- the story memory, its judge and repairs, a stitch's bridge and an author's edits: what those
  calls answer, and the settings that script it (``plants``, ``memory_mode``, ``judge_mode``,
  ``recheck_mode``, ``repair_mode``, ``bridge_mode``, ``run_on``, ``rewrites``, ``comply``), are
  told in tests/fake_answers.py;
- ``chapter_delay``: {outline chapter: seconds} added to answers about that chapter (its writes
  and the memory calls of its passages), so that a chapter commits after the next one;
- ``faults``: a queue of one-shot faults applied to the next requests in order:
  "429", "500", "timeout" (answers after ``hang_s``), "truncate" (finish_reason=length),
  "empty", "garbage" (junk text), "stall" (a stream that sends its first words, then nothing
  for ``hang_s``, then the rest), "broken" (a stream whose second chunk is not JSON),
  "error_event" (a stream whose second chunk is an ``{"error": ...}`` object, as providers send
  when they fail mid-answer, its message ``error_message``); ``mode`` "error_event": every answer so.

This module is the server: its routes, streaming, faults and state (``FakeState``); the text of
its answers is made in tests/fake_answers.py, from the prompt and the settings read here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fake_answers import (
    COVERAGE_SYSTEM,
    MEMORY_SYSTEM,
    _chapter_of,
    _pieces,
    _Stream,
    bridge_answer,
    cover_answer,
    coverage_answer,
    memory_answer,
    plan_answer,
    prose_answer,
    repair_answer,
)
from tests.fake_answers import JUNK_INLINE as JUNK_INLINE  # tests import these from here
from tests.fake_answers import JUNK_LINES as JUNK_LINES
from tests.fake_answers import REPEATED as REPEATED
from tests.fake_answers import WORDS as WORDS

# What mode="html" puts in every field: markup that runs script if any page treats it as HTML.
XSS = "<img src=x onerror=alert(document.domain)><script>alert(1)</script>"


@dataclass
class FakeState:
    ratio: tuple[float, float] = (0.3, 0.6)
    mode: str = "normal"
    hang_s: float = 5.0
    delay_s: float = 0.0  # latency of every answer, to keep a job in flight
    tokens_per_s: float = 0.0
    stream_usage: bool = True  # send the usage chunk when asked (llama.cpp's server never does)
    seam_drift: bool = False
    plants: list[dict[str, Any]] = field(default_factory=list)
    memory_mode: str = "valid"
    judge_mode: str = "names"  # both judges: the memory's and the coverage judge (see the docstring)
    recheck_mode: str = ""
    reported: set[str] = field(default_factory=set)  # plant sentences a memory answer has reported
    repair_mode: str = "fix"
    bridge_mode: str = ""
    run_on: set[int] = field(default_factory=set)
    chapter_delay: dict[int, float] = field(default_factory=dict)
    writes: int = 0  # chunk writes answered
    chapter_writes: dict[int, int] = field(default_factory=dict)  # ... by outline chapter
    faults: deque[str] = field(default_factory=deque)
    rewrites: deque[str] = field(default_factory=deque)
    comply: bool = False
    in_flight: int = 0
    peak_in_flight: int = 0
    model_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    echoed: list[str] = field(default_factory=list)
    counter: int = 0
    error_message: str = "the model overloaded mid-answer"


class FakeLLM:
    def __init__(self, port: int | None = None) -> None:
        self.state = FakeState()
        self.lock = threading.Lock()
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/stats", self._stats, methods=["GET"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    # -- control -----------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake LLM did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def reset(self, **kw: Any) -> None:
        with self.lock:
            self.state = FakeState(**kw)

    def set(self, **kw: Any) -> None:
        """Change the script in flight (say, ``delay_s``), keeping faults and recorded requests."""
        with self.lock:
            for k, v in kw.items():
                setattr(self.state, k, v)

    def inject(self, *faults: str) -> None:
        with self.lock:
            self.state.faults.extend(faults)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.requests)

    @property
    def echoed(self) -> list[str]:
        with self.lock:
            return list(self.state.echoed)

    # -- HTTP --------------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _stats(self, request: Request) -> Response:
        with self.lock:
            st = self.state
            return JSONResponse(
                {
                    "requests": len(st.requests),
                    "in_flight": st.in_flight,
                    "peak_in_flight": st.peak_in_flight,
                    "model_seconds": round(st.model_seconds, 3),
                }
            )

    async def _chat(self, request: Request) -> Response:
        t0 = time.monotonic()
        with self.lock:
            self.state.in_flight += 1
            self.state.peak_in_flight = max(self.state.peak_in_flight, self.state.in_flight)
        streaming = False
        try:
            resp = await self._answer(request)
            streaming = isinstance(resp, StreamingResponse)
            return resp
        finally:
            if not streaming:  # a stream is in flight until its last chunk: it settles itself
                self._settle(t0)

    def _settle(self, t0: float) -> None:
        with self.lock:
            self.state.in_flight -= 1
            self.state.model_seconds += time.monotonic() - t0

    async def _answer(self, request: Request) -> Response:
        t0 = time.monotonic()
        body = await request.json()
        json_mode = (body.get("response_format") or {}).get("type") == "json_object"
        with self.lock:
            st = self.state
            st.counter += 1
            n = st.counter
            fault = st.faults.popleft() if st.faults else ("error_event" if st.mode == "error_event" else None)
            if fault == "truncate" and json_mode:  # truncation is scripted for prose answers
                st.faults.appendleft(fault)
                fault = None
            st.requests.append({"body": body, "fault": fault, "auth": request.headers.get("authorization")})
            ratio, mode, hang_s, delay_s, error = st.ratio, st.mode, st.hang_s, st.delay_s, st.error_message
            tokens_per_s, seam_drift, stream_usage = st.tokens_per_s, st.seam_drift, st.stream_usage
        messages = body.get("messages", [])
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
        delay_s += self._chapter_delay(prompt)
        if delay_s:
            await asyncio.sleep(delay_s)
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status_code=429,
                headers={"retry-after": "0"},
            )
        if fault == "500" or mode == "down":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
        if mode == "down_nul":  # a provider's error, mid-stream, carrying a NUL (Postgres text cannot hold it)
            error = json.dumps({"error": {"message": "upstream \x00 exploded", "type": "server_error"}})
            return Response(f"data: {error}\n\n", media_type="text/event-stream")
        if fault == "timeout":
            await asyncio.sleep(hang_s)
        rng = random.Random(hashlib.sha256(f"{n}:{prompt}".encode()).hexdigest())
        finish = "stop"
        if fault == "empty" or mode == "empty":
            content = ""
        elif fault == "garbage":
            content = "}{ not json <start_of_image> 1) 2) 3)"
        elif json_mode and system.startswith(MEMORY_SYSTEM):
            content = self._memory(prompt)
        elif json_mode and system.startswith(COVERAGE_SYSTEM):
            content = coverage_answer(prompt, self._read("judge_mode"))
        elif json_mode:
            short, mark = self._read("mode") == "short_plan", XSS if mode == "html" else ""
            content = plan_answer(prompt, rng, malformed=(mode == "malformed_plan"), short=short, mark=mark)
        elif "contradicts what the document established earlier" in prompt:
            content = self._repair(prompt)
        elif "The passage ends mid-sentence:" in prompt and self.state.bridge_mode:
            content = bridge_answer(self.state.bridge_mode)
        elif "does not yet do what its author asked" in prompt:
            content = cover_answer(prompt, self._read("comply"))
        elif system.startswith("You summarise"):
            content = (re.findall(r"^- (.+)$", prompt, re.M) or ["A summary."])[0]
        else:
            with self.lock:  # what the prose takes from the script as it stands
                rewrites, comply = self.state.rewrites, self.state.comply
                rewrite = (rewrites.popleft() if rewrites else "") if "The passage to rewrite:" in prompt else None
            chunk_write = "Continue the document with the next passage" in str(messages[-1].get("content", ""))
            due, run_on = self._due(prompt) if chunk_write else ([], False)
            content, finish, echoed = prose_answer(
                messages, prompt, rng, ratio=ratio, max_tokens=body.get("max_tokens"), rewrite=rewrite, comply=comply,
                seam_drift=seam_drift, due=due, run_on=run_on, fault=fault, mode=mode, n=n,
            )  # fmt: skip
            with self.lock:
                st.echoed.extend(echoed)
        # One tokenizer for what it reads and what it writes (about 1.4 tokens a word), as a real
        # model's: the same text costs the same tokens going in as coming out.
        tokens_in = max(1, int(len(prompt.split()) * 1.4))
        tokens_out = max(0, int(len(content.split()) * 1.4))
        usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
        model = body.get("model", "fake-model")
        if mode == "html":
            if not json_mode:
                content = f"{XSS} {content}"
            finish = f"{finish}{XSS}"
            model = f"{model}{XSS}"
        head = {
            "id": f"chatcmpl-{XSS}-{n}" if mode == "html" else f"chatcmpl-fake-{n}",
            "created": int(time.time()),
            "model": model,
        }
        if body.get("stream"):
            send_usage = stream_usage and bool((body.get("stream_options") or {}).get("include_usage"))
            script = _Stream(content, finish, usage if send_usage else None, tokens_per_s, fault, hang_s, error)
            return StreamingResponse(self._sse(head, script, t0), media_type="text/event-stream")
        if tokens_per_s:
            await asyncio.sleep(tokens_out / tokens_per_s)
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
                ],
                "usage": usage,
            }
        )

    async def _sse(self, head: dict[str, Any], s: _Stream, t0: float) -> AsyncIterator[str]:
        """The answer as OpenAI streams it: ``data: <chunk>`` events, then ``data: [DONE]``."""

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            chunk: dict[str, Any] = {**head, "object": "chat.completion.chunk", "choices": choices}
            if usage is not None:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk)}\n\n"

        try:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for i, piece in enumerate(_pieces(s.content)):
                if i > 0 and s.tokens_per_s:  # the first word goes at once: a small time to first token
                    await asyncio.sleep(len(piece.split()) * 1.4 / s.tokens_per_s)
                if i == 1 and s.fault == "broken":
                    yield "data: {not json at all\n\n"
                if i == 1 and s.fault == "error_event":
                    yield f"data: {json.dumps({'error': {'message': s.error_message, 'type': 'server_error'}})}\n\n"
                    return
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                if i == 0 and s.fault == "stall":
                    await asyncio.sleep(s.hang_s)
            yield event([{"index": 0, "delta": {}, "finish_reason": s.finish}])
            if s.usage is not None:  # OpenAI's include_usage: one more chunk, with no choices
                yield event([], s.usage)
            yield "data: [DONE]\n\n"
        finally:
            self._settle(t0)

    def _due(self, prompt: str) -> tuple[list[dict[str, Any]], bool]:
        """A chunk write, counted: the plants due in it (now used) and whether it ends in a run-on."""
        chapter = _chapter_of(prompt)
        with self.lock:
            st = self.state
            st.writes += 1
            st.chapter_writes[chapter] = st.chapter_writes.get(chapter, 0) + 1
            due = [
                p
                for p in st.plants
                if not p.get("used")
                and (
                    p.get("nth") == st.writes
                    or (p.get("chapter") == chapter and p.get("index", 1) == st.chapter_writes[chapter])
                )
            ]
            for p in due:
                p["used"] = True
            return due, st.writes in st.run_on

    def _chapter_delay(self, prompt: str) -> float:
        with self.lock:
            delays = dict(self.state.chapter_delay)
        if not delays:
            return 0.0
        if MEMORY_SYSTEM in prompt:  # a memory call: the chapter of the plant its passage holds
            with self.lock:
                plants = list(self.state.plants)
            return max((delays.get(p.get("chapter", 0), 0.0) for p in plants if p["sentence"] in prompt), default=0.0)
        return delays.get(_chapter_of(prompt), 0.0)

    def _read(self, name: str) -> Any:
        """One setting of the script as it stands now."""
        with self.lock:
            return getattr(self.state, name)

    def _memory(self, prompt: str) -> str:
        """The memory call's answer (``memory_answer``); the plants it reports are kept as reported."""
        with self.lock:
            st = self.state
            plants, reported = [dict(p) for p in st.plants], set(st.reported)
            mode, judge_mode, recheck = st.memory_mode, st.judge_mode, st.recheck_mode
        content, seen = memory_answer(prompt, plants, mode, judge_mode, recheck, reported)
        with self.lock:
            self.state.reported |= seen
        return content

    def _repair(self, prompt: str) -> str:
        """A repair (``repair_answer``), by the plants and ``repair_mode`` as they stand."""
        with self.lock:
            mode, plants = self.state.repair_mode, [dict(p) for p in self.state.plants]
        return repair_answer(prompt, plants, mode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    """Serve the scripted model in this process (benchmarks run it so): ``--port``, ``--ratio``."""
    import argparse

    ap = argparse.ArgumentParser(description="A scripted OpenAI-compatible server (Quire's test double)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ratio", type=float, nargs=2, default=(0.3, 0.6), help="fraction of the asked words")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument("--tokens-per-s", type=float, default=0.0, help="answer at this speed (0: at once)")
    ap.add_argument("--plants", help="a JSON file: a list of plants (see the module's docstring)")
    ap.add_argument("--judge", default="names", choices=["names", "weak", "invalid"], help="judge_mode")
    ap.add_argument("--recheck", default="", choices=["", "lazy", "invalid"], help="recheck_mode")
    ap.add_argument("--repair", default="fix", choices=["fix", "stubborn", "cosmetic"], help="repair_mode")
    a = ap.parse_args()
    fake = FakeLLM(a.port)
    plants = json.loads(open(a.plants).read()) if a.plants else []  # noqa: SIM115, ASYNC230 - before serving
    fake.reset(
        ratio=tuple(a.ratio), delay_s=a.delay, tokens_per_s=a.tokens_per_s, plants=plants, judge_mode=a.judge,
        recheck_mode=a.recheck, repair_mode=a.repair,
    )  # fmt: skip
    fake._server.run()


if __name__ == "__main__":
    main()
