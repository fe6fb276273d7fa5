"""The LLM client: openai's AsyncOpenAI against any OpenAI-compatible endpoint, in four rooms:

- on the wire (``llm_stream``): the streamed answer, its deadline, which failures another HTTP
  attempt may cure (429 honouring Retry-After, 5xx, timeouts, connection resets; retried here with
  tenacity, then ``LlmUnavailable`` for Temporal to retry the activity later);
- the record (``llm_record``): every HTTP attempt is a row in ``llm_calls`` and an ``llm`` audit
  event, committed ``pending`` before the request leaves and closed with what came back, shielded
  from cancellation and retried through a database outage, so that a call paid for is never lost;
- budgets and quotas (``llm_budget``): checked before every new call;
- metrics and traces (``llm_telemetry``).

The text handed to the steps has no control characters (``core.controls``): the record keeps the
answer exactly as it came.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai
import structlog
from openai import AsyncOpenAI
from temporalio import activity
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from activities.llm_budget import budget_exhausted, quota_refused
from activities.llm_record import STORE_RETRY_S, Call, CallRecords, Closed, LlmResult, answer_of, shielded
from activities.llm_stream import TRANSIENT, Outcome, retry_wait, stream_completion
from activities.llm_telemetry import CallRecord, observe, outcome_label, start_span
from core.controls import sanitized, without_controls
from core.cost import Price
from core.errors import BudgetExhausted, JobGone, LlmUnavailable
from core.runs import edit_of
from core.spec import JobOptions
from db.models import Job
from db.session import Database, JobTx
from db.usage import clock_and_quotas

__all__ = ["Call", "LlmClient", "LlmResult"]
log = structlog.get_logger(__name__)
T = TypeVar("T")


def safe_base_url(url: str) -> str:
    """The base URL without credentials or query string, fit to store."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class LlmClient:
    def __init__(
        self,
        db: Database,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float = 300.0,
        max_retries: int = 5,
        retry_wait_cap: float = 30.0,
        prompt_style: str = "instruct",
        prices: Mapping[str, Price] | None = None,
        judge_model: str | None = None,
        store_retry_s: float = STORE_RETRY_S,
        sampling: Mapping[str, Any] | None = None,
        max_prose_tokens: int | None = None,
    ) -> None:
        self.db = db
        self.judge_model = judge_model  # the story memory's and the judge's model; None: the job's
        # Request fields for prose (chunk) calls beyond the OpenAI API's own (llama.cpp's
        # repeat_penalty, top_k, min_p): only for an endpoint known to take them, the local model.
        self.sampling = dict(sampling or {})
        # The most tokens one prose call may write (the local base model loops in long answers:
        # more, shorter calls keep more of its words); None: what the chunk asks.
        self.max_prose_tokens = max_prose_tokens
        self.prices = dict(prices or {})  # model -> price (QUIRE_PRICES): each call's cost
        # "instruct" for chat models; "document" for small base models (see activities.prompts).
        self.prompt_style = prompt_style
        self.model = model
        self.base_url = safe_base_url(base_url)
        self.max_retries = max_retries
        self.retry_wait_cap = retry_wait_cap
        self.timeout = timeout
        self.records = CallRecords(db, self.base_url, self.prices, store_retry_s)
        # The SDK's own retries are off: each attempt must be recorded, so tenacity drives them.
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0)

    async def close(self) -> None:
        await self.client.close()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return retry_wait(exc, state.attempt_number, self.retry_wait_cap)

    def request(
        self,
        *,
        job_id: uuid.UUID,
        purpose: str,
        request_key: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        model: str | None = None,
        chunk_id: int | None = None,
        temperature: float = 0.8,
        json_mode: bool = False,
        prose: bool = False,
    ) -> Call:
        """A completion to make: ``open_in`` a transaction, then ``send``, then ``settle``."""
        # Streamed, for the time to first token; usage is asked for where the server gives it
        # (llama.cpp's does not: tokens are then estimated, and tokens_estimated says so).
        if prose and self.max_prose_tokens:
            max_tokens = min(max_tokens, self.max_prose_tokens)
        params: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if json_mode:
            params["response_format"] = {"type": "json_object"}
        if prose and self.sampling:
            params["extra_body"] = dict(self.sampling)
        return Call(job_id, purpose, request_key, messages, params, model or self.model, chunk_id)

    async def complete(self, **request: Any) -> LlmResult:
        """One logical completion in two transactions of its own (the pending row; the answer).
        A successful answer already stored under ``request_key`` (from an activity attempt that
        crashed before using it) is reused, not paid for again."""
        return await self.complete_call(self.request(**request))

    async def complete_call(self, call: Call) -> LlmResult:
        """``complete`` for a call already made by ``request``."""
        async with self.db.job_tx(call.job_id) as tx:
            await self.open_in(tx, call)
        if call.reused is not None:
            return call.reused
        await self.send(call)
        await self.settle(call)
        assert call.result is not None
        return call.result

    async def open_in(self, tx: JobTx, call: Call, *, first: bool = False) -> None:
        """In the caller's transaction (committed before ``send``): an answer already paid for
        under the call's key (``call.reused``), else the job's budgets and its owner's quota (a
        refusal is recorded here and raised by ``send``, after the commit), else the call's row,
        ``pending``. ``first``: the caller knows no call was ever made under this key (the key's
        step is opened by the very transaction that stored what it follows): nothing to look for."""
        job = await tx.session.get(Job, call.job_id)
        if job is None:
            raise JobGone(str(call.job_id))
        opts = JobOptions(**(job.params or {}))
        if not call.deadline:  # read once per step: a step's calls share it (``Call.deadline``)
            # Not the review's wait, nor the job's own time for an edit of it (db.loop.clock_start).
            wid = activity.info().workflow_id if activity.in_activity() else None
            started, owner = await clock_and_quotas(tx.session, job, edit_of(wid))
            call.deadline = started.timestamp() + opts.max_wall_seconds
            call.quotas = call.quotas or owner
        earlier = [] if first else await self.records.attempts_of(tx, call.request_key)
        row = self.records.answer_paid_for(earlier)
        if row is not None:
            tx.event(
                "llm",
                "reuse",
                {
                    "llm_call_id": row.id,
                    "request_key": call.request_key,
                    "reason": "answer stored by an earlier attempt of this activity",
                },
            )
            text = without_controls(answer_of(row))
            call.reused = call.result = LlmResult(
                row.id, text, row.finish_reason, row.tokens_in or 0, row.tokens_out or 0, reused=True
            )
            return
        exhausted = await budget_exhausted(tx, call.job_id, opts, call.deadline)
        refused = None
        if exhausted is None:
            refused, call.quotas = await quota_refused(tx, job.user_id, call.quotas)
        if refused is not None:
            tx.event("error", "quota", {"reason": str(refused), "request_key": call.request_key})
            call.refused = refused
        elif exhausted is not None:
            tx.event("error", "budget", {"reason": exhausted, "request_key": call.request_key})
            call.refused = BudgetExhausted(exhausted)
        else:
            call.row = await self.records.open_in(tx, call, earlier)
            call.call_id, call.attempt_no = call.row.id, call.row.attempt

    async def send(self, call: Call) -> None:
        """The request, once its row is committed: returns with the answer in hand (``call.out``),
        to be stored by ``settle``. A failed HTTP attempt is closed at once and the next one opens
        a row of its own (429 honouring Retry-After, 5xx, timeouts, resets: retried here, then
        ``LlmUnavailable``)."""
        if call.refused is not None:
            raise call.refused  # recorded by open_in's transaction
        assert call.reused is None, "a reused answer is not sent"
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, TRANSIENT)),
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                reraise=True,
            ):
                with attempt:
                    if call.call_id is None:  # a retry: a row of its own, within the job's time
                        if time.time() >= call.deadline:
                            raise BudgetExhausted("the job's time budget ran out while retrying a model call")
                        call.row = await self.records.open(call)
                        call.call_id, call.attempt_no = call.row.id, call.row.attempt
                    await self._http(call)
        except TRANSIENT as exc:
            # The endpoint's own words, as a job's reason may quote them: storable, no raw controls.
            why = sanitized(f"{type(exc).__name__} after {self.max_retries + 1} attempts: {exc}")
            raise LlmUnavailable(why) from exc

    async def _http(self, call: Call) -> None:
        """One HTTP attempt. A failure is stored before anything else can happen (cancellation
        included: storing is shielded from it) and raised; an answer is measured and kept on
        ``call`` for ``settle``."""
        assert call.call_id is not None
        span = start_span(
            self.base_url, call.job_id, call.call_id, call.purpose, call.model, call.attempt_no, call.params
        )
        t0 = time.perf_counter()
        out = Outcome()
        try:
            await stream_completion(
                self.client, model=call.model, messages=call.messages, params=call.params, limit_s=self.timeout,
                out=out, t0=t0,
            )  # fmt: skip
        except asyncio.CancelledError:
            out.error = asyncio.CancelledError("cancelled while the call was in flight")
            await shielded(self._close_alone(call, out, t0, span))
            raise
        except openai.APIStatusError as exc:
            out.error, out.http_status = exc, exc.status_code
        except Exception as exc:  # timeouts (a stalled stream too), connection resets, garbage bodies
            out.error = exc
        if out.error is not None:
            await shielded(self._close_alone(call, out, t0, span))
            call.call_id, call.row = None, None
            raise out.error
        self._measure(call, out, t0, span)

    def _measure(self, call: Call, out: Outcome, t0: float, span: Any) -> Closed:
        """The call's figures, its metrics and span (the call happened, whatever the write does)."""
        call.latency_ms = (time.perf_counter() - t0) * 1000
        call.out, call.closed = out, self.records.outcome(call.messages, out, call.model)
        closed = call.closed
        record = CallRecord(
            call.model,
            call.purpose,
            outcome_label(out, closed.status),
            call.latency_ms,
            out.ttft_ms,
            closed.tokens_in,
            closed.tokens_out,
            closed.cached,
            out.finish,
            closed.error,
        )
        observe(record, span, time.time_ns())
        log.info(
            "llm.call",
            job_id=str(call.job_id),
            purpose=call.purpose,
            status=closed.status,
            ms=round(call.latency_ms),
            ttft_ms=round(out.ttft_ms) if out.ttft_ms is not None else None,
            tokens_in=closed.tokens_in,
            tokens_out=closed.tokens_out,
            finish=out.finish,
        )
        call.result = LlmResult(
            call.call_id or 0,
            without_controls(out.text or ""),
            out.finish,
            closed.tokens_in or 0,
            closed.tokens_out or 0,
        )
        return closed

    async def _close_alone(self, call: Call, out: Outcome, t0: float, span: Any) -> None:
        self._measure(call, out, t0, span)
        await self.records.close(call)

    async def store_in(self, tx: JobTx, call: Call) -> None:
        """The answer ``send`` brought onto its row, in the caller's transaction."""
        if call.reused is not None:
            return
        await self.records.write_outcome(tx, call)

    async def settle(
        self, call: Call, work: Callable[[JobTx], Awaitable[T]] | None = None, *, final: bool = False
    ) -> T | None:
        """Store the answer and, in the same transaction, what the step made of it (``work(tx)``):
        shielded from cancellation and retried through a database outage, like every close. If
        ``work`` fails otherwise, the answer is stored alone (it was paid for) and the error raised."""
        if call.reused is not None and work is None:
            return None

        async def write() -> T | None:
            async with self.db.job_tx(call.job_id, final=final) as tx:
                await self.store_in(tx, call)
                return await work(tx) if work is not None else None

        try:
            return await shielded(self.records.through_outage(write, f"storing model call {call.call_id}"))
        except Exception:
            if call.reused is None and work is not None:
                await shielded(self.records.close(call))
            raise
