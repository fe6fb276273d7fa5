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
- the story memory (``activities.memory``): a memory call (its system prompt) gets a valid delta
  of the passage it shows (a summary, every run of capitalised words as an entity with its
  sentence); ``memory_mode`` "invalid" answers no valid JSON, "incomplete" valid JSON without
  entities. ``plants`` are sentences put into chunk writes (``nth`` write of the job, or the
  ``index``-th write (default 1) of outline chapter ``chapter``) with what the memory call reports of them
  (``entity``, ``attribute``, ``value``); a plant that gives a known entity's attribute another
  value is reported as a contradiction of that entry by the judge, one that gives it again as an
  agreement (``agrees``) (``judge_mode``, one setting for both judges, this one and the coverage
  judge below: "names", the default, names what it finds; "weak": the attribute is listed, no
  contradiction nor agreement is ever named; "invalid": a judge-only call, the seam's,
  answers no valid JSON). ``recheck_mode`` scripts the memory call that sees a plant it already
  reported (a re-check after a repair): "lazy" leaves that plant's detail out, "invalid" answers
  no valid JSON. A repair call puts the established sentence back in place of the contradicting
  one (``repair_mode`` "stubborn": changes nothing; "cosmetic": changes other words, keeps the
  contradicting sentence; "midstart": puts it back but opens with the end of a sentence the
  paragraph never had ("2500 BC) stood beyond the harbor wall.": a bracket it never opened, which
  the gate leaves, so that the answer starts in the middle of a sentence; "midstart_once" so until
  told its last rewrite was not used; "terse": answers with the
  established sentence alone, so that the passage falls short); a summary call answers the first
  summary it is given;
- a stitch's bridge (a passage that stops mid-sentence finished): prose of the words asked for;
  ``bridge_mode`` "unfinished" answers words that never end the sentence, "opens" a new sentence
  of its own; ``run_on``: the numbers of chunk writes (``nth`` as for plants) whose answer ends in a
  run-on of 95 words without a sentence end (past what the gate cuts as a cut-off);
- ``chapter_delay``: {outline chapter: seconds} added to answers about that chapter (its writes
  and the memory calls of its passages), so that a chapter commits after the next one;
- an author's edits (``activities.selection``, ``activities.coverage``): ``rewrites`` is a queue of
  how the next selection rewrites answer: "whole" (the passage with the text shown around it, as a
  model that rewrites the whole passage does), "meta" (talk about the passage, ending in a colon),
  "unfinished" (cut off mid-sentence), "overshoot" (three times the words), "comply" (the
  instruction said in a sentence); past the queue, prose (an instruction ignored). The coverage
  judge (its system prompt) says an item is covered, quoting the sentence, when every word of five
  letters or more of it stands in one sentence of the text, else not (``judge_mode`` "names", the
  default); ``judge_mode`` "invalid"
  answers no valid JSON, "lying" claims every item covered with a quote that is not in the text. A
  coverage retry (one paragraph rewritten to carry the items) gives the paragraph back unchanged,
  or, with ``comply``, with each item said as a sentence; ``comply`` also has a chunk write say its
  author's instruction;
- ``faults``: a queue of one-shot faults applied to the next requests in order:
  "429", "500", "timeout" (answers after ``hang_s``), "truncate" (finish_reason=length),
  "empty", "garbage" (junk text), "stall" (a stream that sends its first words, then nothing
  for ``hang_s``, then the rest), "broken" (a stream whose second chunk is not JSON),
  "error_event" (a stream whose second chunk is an ``{"error": ...}`` object, as providers send
  when they fail mid-answer, its message ``error_message``); ``mode`` "error_event": every answer so.
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

WORDS = (
    "river archive lantern quiet harbor method signal patient ledger orchard granite measure "
    "window current letter station valley thread record council engine season compass garden "
    "bridge answer pattern meadow theory voyage circuit folio margin timber beacon canyon echo "
    "prairie chapter figure notion kernel summit glacier vessel mirror hollow ember tide cipher"
).split()
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
            content = self._coverage(prompt)
        elif json_mode:
            content = self._plan(prompt, rng, malformed=(mode == "malformed_plan"), mark=XSS if mode == "html" else "")
        elif "contradicts what the document established earlier" in prompt:
            content = self._repair(prompt)
        elif "The passage ends mid-sentence:" in prompt and self.state.bridge_mode:
            content = {"unfinished": "and the keepers went on counting the", "opens": "The tide came in."}[
                self.state.bridge_mode
            ]
        elif "does not yet do what its author asked" in prompt:
            content = self._cover(prompt)
        elif system.startswith("You summarise"):
            content = (re.findall(r"^- (.+)$", prompt, re.M) or ["A summary."])[0]
        else:
            asked = _asked_words(messages, body.get("max_tokens"))
            lo, hi = ratio
            want = max(1, int(asked * rng.uniform(lo, hi)))
            content = _prose(want, rng)
            if "The passage to rewrite:" in prompt:
                content = self._rewrite(prompt, content, want, rng)
            elif self.state.comply and (
                asked_for := re.search(r"^The author asks of this passage: (.+)$", prompt, re.M)
            ):
                content = f"{_carrying(asked_for.group(1))} {content}"
            if seam_drift:
                content = _plant_term(content, prompt)
            if "Continue the document with the next passage" in str(messages[-1].get("content", "")):
                content = self._plant(content, prompt)
            max_tokens = body.get("max_tokens")
            if fault == "truncate" or (max_tokens and want * 1.4 > max_tokens):
                # Cut at the token cap like a real server: roughly 1.4 tokens per word.
                cap = max(1, int((max_tokens or want) / 1.4)) if fault != "truncate" else max(1, want // 2)
                content = " ".join(content.split()[:cap])
                finish = "length"
            if mode == "controls" and n % 3 == 0:
                words = content.split(" ")
                third = max(1, len(words) // 3)
                words[third] += "\x00"
                words[2 * third] = "\x1b[31m" + words[2 * third] + "\x1b[0m\x07"
                content = " ".join(words) + " \x1b]0;title\x07"
            if mode == "echo" and _asks_words(messages):
                content, echoed = _echo(messages, content, asked, rng)
                with self.lock:
                    st.echoed.extend(echoed)
            elif mode == "junk" and _asks_words(messages):
                content = _junk(content)
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

    def _plant(self, content: str, prompt: str) -> str:
        """A chunk write: the plants due in it go at the top of its first paragraph."""
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
            run_on = st.writes in st.run_on
        for p in reversed(due):
            content = f"{p['sentence']} {content}"
        if run_on:  # its last 95 words one sentence, unended: past what the gate cuts
            words = content.split(" ")
            head, tail = " ".join(words[:-95]), " ".join(words[-95:])
            tail = re.sub(r"[.!?]\s+(\w)", lambda m: " " + m.group(1).lower(), tail.replace("\n\n", " "))
            content = f"{head} {tail.rstrip('.')}"
        return content

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

    def _memory(self, prompt: str) -> str:
        """The memory call's answer, from the passage it shows (and the plants it holds)."""
        with self.lock:
            mode, plants = self.state.memory_mode, [dict(p) for p in self.state.plants]
            judge_mode, recheck, reported = self.state.judge_mode, self.state.recheck_mode, set(self.state.reported)
        judge_only = "Only the contradictions" in prompt
        if mode == "invalid" or (judge_only and judge_mode == "invalid"):
            return '{"summary": "cut short", "entities": [{"name": '
        passage = prompt.split('"""', 2)[1] if prompt.count('"""') >= 2 else ""
        again = [p for p in plants if p["sentence"] in passage and p["sentence"] in reported]
        if recheck == "invalid" and again:
            return '{"summary": "cut short", "entities": [{"name": '
        if recheck == "lazy":  # what it already reported, it leaves out
            plants = [p for p in plants if p not in again]
        with self.lock:
            self.state.reported |= {p["sentence"] for p in plants if p["sentence"] in passage}
        known = prompt.split("New passage:", 1)[0]
        sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", passage) if x.strip()]
        entities: dict[str, dict[str, Any]] = {}
        if mode != "incomplete":
            for sent in sentences:
                for name in re.findall(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", sent):
                    entities.setdefault(name, {"name": name, "type": "other", "quote": sent, "attributes": []})
        contradictions, agrees = [], []
        for p in plants:
            if p["sentence"] not in passage or not p.get("entity"):
                continue
            e = entities.setdefault(
                p["entity"], {"name": p["entity"], "type": "person", "quote": p["sentence"], "attributes": []}
            )
            e["type"] = "person"
            e["attributes"].append({"attribute": p["attribute"], "value": p["value"], "quote": p["sentence"]})
            ref = re.search(rf"^\[(E\d+)\] {re.escape(p['entity'])}'s {re.escape(p['attribute'])}: (.+)$", known, re.M)
            if ref and ref.group(2).strip() == p["value"] and judge_mode != "weak":
                agrees.append(ref.group(1))
            if ref and ref.group(2).strip() != p["value"] and judge_mode != "weak":
                contradictions.append(
                    {
                        "category": "characters",
                        "known": ref.group(1),
                        "quote": p["sentence"],
                        "explanation": f"{p['entity']}'s {p['attribute']} was {ref.group(2).strip()}",
                    }
                )
        if judge_only:  # the judge alone
            return json.dumps(
                {"summary": sentences[0] if sentences else "-", "contradictions": contradictions, "agrees": agrees}
            )
        return json.dumps(
            {
                "summary": " ".join(sentences[:2]) or "An empty passage.",
                "entities": list(entities.values()),
                "events": [],
                "threads_opened": [],
                "threads_resolved": [],
                "facts": [],
                "contradictions": contradictions,
                "agrees": agrees,
            }
        )

    def _repair(self, prompt: str) -> str:
        """A repair: the paragraph with each contradicting plant put back as established."""
        paragraph = prompt.split('"""', 2)[1].strip() if prompt.count('"""') >= 2 else ""
        with self.lock:
            mode, plants = self.state.repair_mode, [dict(p) for p in self.state.plants]
        if mode == "stubborn":
            return paragraph
        if mode == "cosmetic":  # other words changed, the contradiction kept
            return f"{paragraph} The tide turned slowly."
        established = re.findall(r'\(established earlier: "(.+?)"\)$', prompt, re.M)
        for p in plants:
            for there in established:
                if p["sentence"] in paragraph and p.get("entity") and p["entity"] in there and p["sentence"] != there:
                    paragraph = there if mode == "terse" else paragraph.replace(p["sentence"], there)
        told = "Your last rewrite was not used" in prompt
        if mode == "midstart" or (mode == "midstart_once" and not told):  # it starts mid-sentence
            paragraph = f"2500 BC) stood beyond the harbor wall. {paragraph}"
        return paragraph

    def _rewrite(self, prompt: str, prose: str, want: int, rng: random.Random) -> str:
        """A selection's rewrite, as the next of ``rewrites`` scripts it."""
        with self.lock:
            how = self.state.rewrites.popleft() if self.state.rewrites else ""
        before = re.search(r'just before the passage:\n"…(.*?)"\n', prompt, re.S)
        after = re.search(r'just after it:\n"(.*?)…"', prompt, re.S)
        instruction = re.search(r"as its author asks: (.+)$", prompt, re.M)
        if how == "whole":
            return " ".join(x.group(1) for x in (before, after) if x) + " " + prose
        if how == "meta":
            return "The main purpose of the passage is to show the harbour. The author's question is asking you:"
        if how == "unfinished":
            return prose.rstrip(".") + " and then the"
        if how == "overshoot":
            return _prose(want * 3 + 40, rng)
        if how == "comply" and instruction:
            return f"{prose} {_sentence(instruction.group(1))}"
        return prose

    def _coverage(self, prompt: str) -> str:
        """The coverage judge: each item covered where its long words stand in one sentence."""
        with self.lock:
            mode = self.state.judge_mode
        if mode == "invalid":
            return '{"items": [{"item": 1, "covered": '
        text = prompt.split('"""', 2)[1] if prompt.count('"""') >= 2 else ""
        items = re.findall(r"^(\d+)\. \((?:instruction|key point)\) (.+)$", prompt.split("Items:", 1)[-1], re.M)
        sents = [x.strip() for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
        out = []
        for n, item in items:
            want = {w.lower() for w in re.findall(r"[A-Za-z]{5,}", item)}
            where = next((x for x in sents if want <= {w.lower() for w in re.findall(r"[A-Za-z]{5,}", x)}), None)
            if mode == "lying":
                out.append({"item": int(n), "covered": True, "quote": "a sentence the text never had", "why": "yes"})
            elif where is not None and want:
                out.append({"item": int(n), "covered": True, "quote": where, "why": "it says so"})
            else:
                out.append({"item": int(n), "covered": False, "quote": "", "why": "the text does not say it"})
        return json.dumps({"items": out})

    def _cover(self, prompt: str) -> str:
        """A coverage retry: the paragraph back, or (``comply``) with each item said in it."""
        paragraph = prompt.split('"""', 2)[1].strip() if prompt.count('"""') >= 2 else ""
        with self.lock:
            comply = self.state.comply
        if not comply:
            return paragraph
        items = re.findall(r"^- (?:follow the instruction|state the key point): (.+)$", prompt, re.M)
        return " ".join([paragraph, *(_sentence(i) for i in items)])

    def _plan(self, prompt: str, rng: random.Random, malformed: bool, mark: str = "") -> str:
        """A plan as JSON; ``mark`` goes into every string of it."""
        if malformed:
            return '{"title": "Broken", "sections": [{"title": 7, "words": "many"'
        m = re.search(r"exactly (\d+)", prompt) or re.search(r"(\d+) sections", prompt)
        k = int(m.group(1)) if m else 3
        with self.lock:
            if self.state.mode == "short_plan":  # fewer items than asked for (the plan pads them)
                k = max(1, k // 2)
        return json.dumps(
            {
                "title": mark + "A Study of " + rng.choice(WORDS).title(),
                "thesis": mark + _prose(20, rng),
                "sections": [
                    {
                        "title": f"{mark}{rng.choice(WORDS).title()} {rng.choice(WORDS)}",
                        "summary": mark + _prose(15, rng),
                        "key_points": [mark + _prose(6, rng) for _ in range(2)],
                    }
                    for _ in range(k)
                ],
                "glossary": {mark + rng.choice(WORDS).title(): mark + _prose(8, rng) for _ in range(3)},
                "style": mark + "plain, precise prose",
            }
        )


@dataclass
class _Stream:
    """What one streamed answer sends, and how."""

    content: str
    finish: str
    usage: dict[str, int] | None
    tokens_per_s: float
    fault: str | None
    hang_s: float
    error_message: str = ""


PIECE_WORDS = 32  # words per streamed chunk after the first (a real server sends ~1 token a chunk)


def _pieces(content: str) -> list[str]:
    """``content`` cut into stream chunks that join back to it exactly: its first word alone, then
    ``PIECE_WORDS`` words at a time (fewer, bigger chunks than a real server's: tests stay fast)."""
    words = re.findall(r"\s*\S+\s*", content) or ([content] if content else [])
    if not words:
        return []
    rest = ["".join(words[i : i + PIECE_WORDS]) for i in range(1, len(words), PIECE_WORDS)]
    return [words[0], *rest]


TERM = "Harbor Lantern Council"
MEMORY_SYSTEM = "You keep the story memory"  # the memory call's system prompt (activities.prompts)
COVERAGE_SYSTEM = "You check whether a text"  # the coverage judge's (activities.edit_prompts)


def _carrying(instruction: str) -> str:
    """A sentence that carries an instruction's long words (not its words in order: no echo)."""
    long = [w.lower() for w in re.findall(r"[A-Za-z]{5,}", instruction)]
    return f"At last came the {' and the '.join(long)}." if long else ""


def _sentence(words: str) -> str:
    """``words`` as a sentence: capitalised, ending with a full stop."""
    w = words.strip().rstrip(".")
    return (w[:1].upper() + w[1:] + ".") if w else ""


def _chapter_of(prompt: str) -> int:
    """The outline index (1-based) of the chapter a chunk prompt is in, 0 if none."""
    chapter = re.search(r"^Chapter: (.+?)\.", prompt, re.M)
    outline = re.findall(r"^(\d+)\. (.+)$", prompt, re.M)
    return next((int(n) for n, t in outline if chapter and t.strip() == chapter.group(1).strip()), 0)


def _plant_term(content: str, prompt: str) -> str:
    """The term in its established spelling in the book's 1st, 3rd, ... chapters (by the outline),
    otherwise in lower case: a drift at the seams after the odd ones. It goes inside the prose's
    own first and last sentences, so that no sentence repeats one the prompt showed."""
    chapter = re.search(r"^Chapter: (.+?)\.", prompt, re.M)
    outline = re.findall(r"^(\d+)\. (.+)$", prompt, re.M)
    index = next((int(n) for n, t in outline if chapter and t.strip() == chapter.group(1).strip()), 1)
    term = TERM.lower() if index % 2 == 0 else TERM
    paras = content.split("\n\n")
    for i in {0, len(paras) - 1}:
        words = paras[i].split(" ")
        paras[i] = " ".join(words[:3] + ["of", "the", term] + words[3:])
    return "\n\n".join(paras)


def _asks_words(messages: list[dict[str, Any]]) -> bool:
    """A prose request ("about N words"), or a document to continue from its last line (the
    small-model prompt: one message ending a paragraph): chunks and bridges, not a plan's outline."""
    last = str(messages[-1].get("content", "")) if messages else ""
    return re.search(r"about \d+ (?:more )?words", last) is not None or (len(messages) == 1 and last.endswith("\n\n"))


def _asked_words(messages: list[dict[str, Any]], max_tokens: int | None = None) -> int:
    """The words asked for: "about N words", or what ``max_tokens`` leaves room for (1.6 a word)."""
    last = str(messages[-1].get("content", "")) if messages else ""
    m = re.findall(r"about (\d+) (?:more )?words", last)
    if m:
        return int(m[-1])
    return max(8, int((max_tokens - 32) / 1.6)) if max_tokens and _asks_words(messages) else 100


def _asks(line: str) -> bool:
    return line.startswith("(") or re.search(r"\bwords?\b", line) is not None


# Prompt lines that are instructions, not document text: the system prompt, labelled notes
# ("Key terms: ...", "Thesis: ..."), outline entries and bracketed requests. Headings are left
# out: the document has its own.
_INSTRUCTION = re.compile(r"^(?:\(|\d+\. |[A-Z][\w ()]{0,40}:)")


def _echo(messages: list[dict[str, Any]], prose: str, asked: int, rng: random.Random) -> tuple[str, list[str]]:
    """``prose`` with what a small base model adds: its prompt's instruction lines said back
    (whole, and one sentence of the system prompt), the request that ends the prompt verbatim,
    paraphrased and cut short, and junk tokens. Returns the answer and the echoed lines."""
    system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
    lines = [ln.strip() for m in messages for ln in str(m.get("content", "")).splitlines() if ln.strip()]
    # The request that ends the prompt; a document to continue (the small-model prompt) has none.
    request = lines[-1] if lines and _asks(lines[-1]) else ""
    notes = [ln for ln in lines[:-1] if _INSTRUCTION.match(ln) and len(ln.split()) <= 40]
    echoed = [*rng.sample(notes, min(3, len(notes))), *([request] if request else [])]
    if system:
        echoed.append(system[0].split(". ")[0] + ".")
    paraphrase = f"(Continue from where it stopped, with about {asked} words.)"
    fragment = " ".join(request.split()[:6]) or paraphrase
    paras = prose.split("\n\n")
    paras[0] = f"{echoed[0] if echoed else ''}\n{paras[0]} {paraphrase} <start_of_image> 1) 2) 3)".lstrip()
    paras.insert(len(paras) // 2 + 1, "\n".join(echoed[1:]) + "\n<end_of_turn>")
    paras.append(fragment)
    return "\n\n".join(paras), [*echoed, paraphrase, fragment]


# The junk of issue 18, word for word, and a paragraph said in every answer (any chapter's).
JUNK_LINES = (
    "Note: This text contains a few grammatical errors. Please check with your grammar book…",
    "penduduk",
    "penduduk で購入する",
    "\\subsubsection{The Harbor Archive}",
    " - ".join(f"( {n} )" for n in range(75, 95)),
)
JUNK_INLINE = ("$\\mathrm{n}$", "vertretenmodel")
JUNK_ENDING = "A good"
REPEATED = "Patient keepers measure every season by the lantern and the quiet harbor record."


def _junk(prose: str) -> str:
    """``prose`` with issue 18's junk between and inside its paragraphs, ``REPEATED`` first, and an
    ending cut off mid-sentence."""
    paras = prose.split("\n\n")
    first = paras[0].split(". ")[0] + "."
    words = paras[0].split(" ")
    paras[0] = " ".join([*words[:2], *JUNK_INLINE, *words[2:]]) + (" " + first) * 5
    out = [REPEATED]
    for i, p in enumerate(paras):
        out += [p, JUNK_LINES[i % len(JUNK_LINES)]]
    return "\n\n".join([*out, JUNK_ENDING])


def _prose(words: int, rng: random.Random) -> str:
    out: list[str] = []
    paragraphs: list[str] = []
    while len(out) < words:
        n = min(rng.randint(8, 16), words - len(out))
        sent = [rng.choice(WORDS) for _ in range(n)]
        sent[0] = sent[0].title()
        out.extend(sent)
        paragraphs.append(" ".join(sent) + ".")
    # Group sentences into paragraphs of about five sentences.
    grouped = [" ".join(paragraphs[i : i + 5]) for i in range(0, len(paragraphs), 5)]
    return "\n\n".join(grouped)


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
