"""A model call's row in ``llm_calls`` and its ``llm`` audit event: committed ``pending`` before the
request leaves (a worker dying mid-call leaves it in the log), the outcome stored before anything
else can fail, and an answer paid for never lost:

- whatever the answer holds is storable: NUL and lone surrogates are shown as U+2400 / U+FFFD in
  ``response`` and kept exactly in ``response_raw`` (``core.controls``);
- the close is retried through a database outage, with a capped backoff, for up to
  ``STORE_RETRY_S`` (inside the step's own time limit, the worker's heartbeat keeping it alive);
  an outage longer than that fails the step as an outage, retried by Temporal for the job's
  window, and the call is then counted as below;
- a call cut off by a dead worker is marked ``interrupted`` with its tokens estimated (the prompt's
  at ~4 characters a token; the answer's as the ``max_tokens`` it may have been billed for), so it
  counts toward cost, budgets and quotas like any other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import inspect, select
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from activities.llm_stream import Outcome
from core.controls import from_raw, is_storable, raw_bytes, storable
from core.cost import Price, cost_micro_usd
from core.text import count_words
from db.models import LlmCall
from db.session import OUTAGE_ERRORS, Database, JobTx
from db.usage import Quotas
from db.values import shorten

log = structlog.get_logger(__name__)
T = TypeVar("T")

INTERRUPTED = "interrupted: the worker stopped while this call was in flight; its answer, if any, never arrived"
CHARS_PER_TOKEN = 4  # the estimate where an endpoint gives no usage
STORE_RETRY_S = 20 * 60  # how long an answer's commit is retried (under the model steps' 30-min limit)


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content", "")) for m in messages)


def answer_of(row: LlmCall) -> str:
    """The answer exactly as the endpoint sent it."""
    return from_raw(row.response_raw) if row.response_raw is not None else row.response or ""


@dataclass
class Closed:
    """What a finished call's row says (the figures the metrics and the caller need)."""

    status: str
    tokens_in: int | None
    tokens_out: int | None
    cached: int | None
    estimated: bool
    error: str | None


@dataclass
class LlmResult:
    call_id: int
    text: str  # the answer without control characters (the record keeps it exactly)
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    reused: bool = False


@dataclass
class Call:
    """One logical completion on its way (``activities.llm``): what is asked, then its row, then
    its answer."""

    job_id: uuid.UUID
    purpose: str
    request_key: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    model: str
    chunk_id: int | None = None
    deadline: float = 0.0  # the job's, as a Unix time (read once per step: ``follow``)
    quotas: Quotas | None = None  # its owner's, as the step read them
    call_id: int | None = None  # the open row
    row: LlmCall | None = None  # as its opening transaction committed it
    attempt_no: int = 0
    reused: LlmResult | None = None  # an answer already paid for under request_key
    refused: Exception | None = None  # a budget or quota said no (recorded)
    out: Outcome | None = None
    closed: Closed | None = None
    latency_ms: float = 0.0
    result: LlmResult | None = None

    def follow(self, before: Call | None, limits: tuple[float, Quotas] | None = None) -> Call:
        """This call, made by the step that made ``before``: what it read of the job's deadline
        and its owner's quotas holds for it too. ``limits``: (deadline, quotas) as the step read
        them with its own first statement, when no call came before."""
        if before is not None:
            self.deadline, self.quotas = before.deadline, before.quotas
        elif limits is not None:
            self.deadline, self.quotas = limits
        return self


class CallRecords:
    """Opens and closes the rows of one client's calls (its endpoint's base URL, its price table)."""

    def __init__(self, db: Database, base_url: str, prices: dict[str, Price], store_retry_s: float) -> None:
        self.db, self.base_url, self.prices, self.store_retry_s = db, base_url, prices, store_retry_s

    async def attempts_of(self, tx: JobTx, request_key: str) -> list[LlmCall]:
        """Every call made under ``request_key`` (one statement: the answer to reuse, the attempts
        to count and those a dead worker left ``pending``)."""
        rows = await tx.session.execute(
            select(LlmCall).where(LlmCall.job_id == tx.job_id, LlmCall.request_key == request_key).order_by(LlmCall.id)
        )
        return list(rows.scalars().all())

    @staticmethod
    def answer_paid_for(rows: list[LlmCall]) -> LlmCall | None:
        """The latest successful answer among ``rows`` (reused, not paid for again)."""
        return next((r for r in reversed(rows) if r.status == "ok"), None)

    async def open(self, call: Call) -> LlmCall:
        """The call's row, ``pending``, committed before the request is sent."""
        async with self.db.job_tx(call.job_id) as tx:
            return await self.open_in(tx, call)

    async def open_in(self, tx: JobTx, call: Call, earlier: list[LlmCall] | None = None) -> LlmCall:
        """``open`` inside the caller's transaction (which must commit before the request is sent).
        Earlier attempts of the same request still ``pending`` died so: they are marked ``interrupted``."""
        if earlier is None:
            earlier = await self.attempts_of(tx, call.request_key)
        for row in earlier:
            if row.status == "pending":
                self._interrupted(tx, row)
        row = LlmCall(
            job_id=tx.job_id,
            chunk_id=call.chunk_id,
            purpose=call.purpose,
            request_key=call.request_key,
            attempt=len(earlier) + 1,
            model=call.model,
            base_url=self.base_url,
            messages=call.messages,
            params=call.params,
            status="pending",
            started_at=dt.datetime.now(dt.UTC),
        )
        tx.session.add(row)
        await tx.session.flush()
        return row

    def _interrupted(self, tx: JobTx, row: LlmCall) -> None:
        row.status, row.error = "error", INTERRUPTED
        row.completed_at = dt.datetime.now(dt.UTC)
        # What it may have cost: the prompt was sent; the answer may have been written and billed.
        row.tokens_in = estimate_tokens("".join(m.get("content", "") for m in row.messages or []))
        row.tokens_out = int((row.params or {}).get("max_tokens") or 0)
        row.tokens_estimated = True
        row.cost_micro_usd = cost_micro_usd(self.prices.get(row.model), row.tokens_in, None, row.tokens_out)
        tx.event(
            "error",
            "llm",
            {
                "llm_call_id": row.id,
                "purpose": row.purpose,
                "error": INTERRUPTED,
                "tokens_in": row.tokens_in,
                "tokens_out": row.tokens_out,
                "tokens_estimated": True,
                "cost_micro_usd": row.cost_micro_usd,
            },
        )

    def outcome(self, messages: list[dict[str, str]], out: Outcome, model: str) -> Closed:
        """The figures of a finished call (estimated where the endpoint gave no usage)."""
        usage, text = out.usage, out.text
        figures = usage or {}
        tokens_in = figures.get("prompt_tokens")
        tokens_out = figures.get("completion_tokens")
        cached = (figures.get("prompt_tokens_details") or {}).get("cached_tokens")
        estimated = usage is None and (out.error is None or text is not None)
        if estimated:  # some servers omit usage: estimate, and say so
            tokens_in = prompt_chars(messages) // CHARS_PER_TOKEN
            tokens_out = estimate_tokens(text or "")
        status = "ok" if out.error is None and text else "error"
        err = None
        if out.error is not None:
            err = storable(f"{type(out.error).__name__}: {out.error}")
        elif not text:
            err = "empty content"
        return Closed(status, tokens_in, tokens_out, cached, estimated, err)

    async def close(self, call: Call) -> None:
        """The outcome onto the call's row, with its ``llm`` event, in a transaction of its own,
        retried through an outage."""

        async def write() -> None:
            async with self.db.job_tx(call.job_id) as tx:
                await self.write_outcome(tx, call)

        await self.through_outage(write, f"storing model call {call.call_id}")

    async def write_outcome(self, tx: JobTx, call: Call) -> None:
        """The outcome onto the call's row and its ``llm`` event, in the caller's transaction (the
        step's own, where it stores what it made of the answer: ``LlmClient.settle``)."""
        out, closed, call_id = call.out, call.closed, call.call_id
        assert out is not None and closed is not None and call_id is not None
        purpose, model, attempt_no, messages, latency_ms = (
            call.purpose, call.model, call.attempt_no, call.messages, call.latency_ms
        )  # fmt: skip
        text = out.text
        cost = cost_micro_usd(self.prices.get(model), closed.tokens_in, closed.cached, closed.tokens_out)
        # The row as its opening transaction left it (no read to load it again), else read.
        row = await self._row(tx, call.row or call_id)
        assert row is not None
        row.response, row.finish_reason = None if text is None else storable(text), out.finish
        row.response_raw = None if text is None or is_storable(text) else raw_bytes(text)
        row.tokens_in, row.tokens_out = closed.tokens_in, closed.tokens_out
        row.tokens_cached, row.tokens_estimated = closed.cached, closed.estimated
        row.latency_ms, row.status, row.http_status = latency_ms, closed.status, out.http_status
        row.error, row.ttft_ms, row.cost_micro_usd = closed.error, out.ttft_ms, cost
        row.completed_at = dt.datetime.now(dt.UTC)
        last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        tx.event(
            "llm",
            "call" if closed.status == "ok" else "error",
            {
                "llm_call_id": call_id,
                "purpose": purpose,
                "model": model,
                "attempt": attempt_no,
                "status": closed.status,
                "http_status": out.http_status,
                "error": closed.error,
                "finish_reason": out.finish,
                "tokens_in": closed.tokens_in,
                "tokens_out": closed.tokens_out,
                "tokens_cached": closed.cached,
                "tokens_estimated": closed.estimated,
                "cost_micro_usd": cost,
                "latency_ms": round(latency_ms, 1),
                "ttft_ms": round(out.ttft_ms, 1) if out.ttft_ms is not None else None,
                "prompt_summary": shorten(" ".join(last_user.split()), 300),
                "prompt_chars": prompt_chars(messages),
                "response_summary": shorten(" ".join((text or "").split()), 300),
                "response_words": count_words(text or ""),
                "response_raw": row.response_raw is not None,
            },
        )
        if out.error is not None:
            tx.event("error", "llm", {"llm_call_id": call_id, "purpose": purpose, "error": closed.error})

    @staticmethod
    async def _row(tx: JobTx, ref: int | LlmCall) -> LlmCall | None:
        """The call's row in ``tx``: as its opening transaction committed it (attached, no read),
        or read again where that state is gone (a store that rolled back expired it)."""
        if isinstance(ref, LlmCall):
            state = inspect(ref)
            if state.detached and not state.expired_attributes:
                tx.session.add(ref)
                return ref
            ref = state.identity[0] if state.identity else ref.id
        return await tx.session.get(LlmCall, ref)

    async def through_outage(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """``write()``, again after each database outage (1 s doubling to 30 s) for up to
        ``store_retry_s``: what the endpoint already answered must not be lost to a blip."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(OUTAGE_ERRORS),
            wait=wait_exponential(multiplier=1, max=30),
            stop=stop_after_delay(self.store_retry_s),
            reraise=True,
            before_sleep=lambda s: log.warning(
                "llm.store_retry", what=what, attempt=s.attempt_number, error=str(s.outcome and s.outcome.exception())
            ),
        ):
            with attempt:
                return await write()
        raise AssertionError("unreachable")


async def shielded(coro: Awaitable[T]) -> T:
    """Run ``coro`` to the end even if this task is cancelled meanwhile, then honour the cancel."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
