"""One model call on the wire: the streamed answer read as it arrives (its time to first token,
a deadline over the whole stream), what became of it, which failures are worth another HTTP
attempt, and how long to wait before it (``Retry-After`` honoured).

``activities.llm`` records each call (``llm_record``) and measures it (``llm_telemetry``); this
module only sends and reads it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI


class LlmTimeout(TimeoutError):
    """The answer did not end within the call's timeout (it never started, or stalled mid-way)."""


@dataclass
class Outcome:
    """What one HTTP attempt gave: filled as the answer streams in, so a failure keeps what came."""

    text: str | None = None
    finish: str | None = None
    usage: dict[str, Any] | None = None  # the endpoint's own figures, as it sent them
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
            # The raw lines, parsed here: the SDK's typed chunks cost a model object per streamed
            # token, the largest share of the worker's time in reading an answer.
            respond = client.chat.completions.with_streaming_response.create
            async with respond(model=model, messages=messages, **params) as response:  # type: ignore[call-overload]
                out.http_status = response.status_code
                async for data in sse_data(response.iter_lines()):
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a streamed chunk that is not an object: {data[:80]!r}")
                    if chunk.get("error"):  # an error sent mid-stream, as the SDK raises it
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else None
                        raise openai.APIError(
                            message if isinstance(message, str) and message else "An error occurred during streaming",
                            request=response.http_request,
                            body=error,
                        )
                    if isinstance(chunk.get("usage"), dict):  # OpenAI's include_usage chunk (choices empty)
                        out.usage = chunk["usage"]
                    for choice in (chunk.get("choices") or [])[:1]:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if out.ttft_ms is None:
                                out.ttft_ms = (time.perf_counter() - t0) * 1000
                            parts.append(piece)
                        if choice.get("finish_reason") is not None:
                            out.finish = choice["finish_reason"]
        ended = True
    except TimeoutError as exc:
        got = f" ({len(parts)} chunks of it had arrived)" if parts else ""
        raise LlmTimeout(f"the answer did not end within {limit_s:g} s{got}") from exc
    finally:  # a failed call keeps what arrived of its answer, or none
        out.text = "".join(parts) if parts or ended else None


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event, as the SSE spec reads it: ``data:`` lines (one leading
    space dropped) joined by newlines until a blank line ends the event; comments (``: ping``),
    ``event:``, ``id:`` and ``retry:`` lines are not data. A last event the stream ends without a
    blank line after is still given."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield "\n".join(data)


# Failures of the endpoint that another HTTP attempt may cure (the SDK's own retries are off:
# each attempt must be recorded, so the client's tenacity loop drives them).
TRANSIENT = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    LlmTimeout,
)


def retry_wait(exc: BaseException | None, attempt: int, cap: float) -> float:
    """Seconds before HTTP attempt ``attempt + 1``: a 429's Retry-After (at most 120 s), else
    0.5 s doubling up to ``cap``."""
    if isinstance(exc, openai.RateLimitError) and exc.response is not None:
        try:
            ra = exc.response.headers.get("retry-after")
            if ra is not None:
                return min(float(ra), 120.0)
        except ValueError:
            pass
    return float(min(cap, 0.5 * 2 ** (attempt - 1)))
