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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import structlog
from openai import AsyncOpenAI
from temporalio import activity
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from activities.llm_budget import budget_exhausted, quota_refused
from activities.llm_record import STORE_RETRY_S, CallRecords, Closed, answer_of, shielded
from activities.llm_stream import TRANSIENT, Outcome, retry_wait, stream_completion
from activities.llm_telemetry import CallRecord, observe, outcome_label, start_span
from core.controls import without_controls
from core.cost import Price
from core.errors import BudgetExhausted, JobGone, LlmUnavailable
from core.runs import edit_of
from core.spec import JobOptions
from db.loop import clock_start
from db.models import Job
from db.session import Database

__all__ = ["LlmClient", "LlmResult"]
log = structlog.get_logger(__name__)


@dataclass
class LlmResult:
    call_id: int
    text: str  # the answer without control characters (the record keeps it exactly)
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    reused: bool = False


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
    ) -> None:
        self.db = db
        self.judge_model = judge_model  # the story memory's and the judge's model; None: the job's
        # Request fields for prose (chunk) calls beyond the OpenAI API's own (llama.cpp's
        # repeat_penalty, top_k, min_p): only for an endpoint known to take them, the local model.
        self.sampling = dict(sampling or {})
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

    async def complete(
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
    ) -> LlmResult:
        """One logical completion. A successful answer already stored under ``request_key``
        (from an activity attempt that crashed before using it) is reused, not paid for again."""
        reused, deadline = await self._admit(job_id, request_key)
        if reused is not None:
            return reused
        # Streamed, for the time to first token; usage is asked for where the server gives it
        # (llama.cpp's does not: tokens are then estimated, and tokens_estimated says so).
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
        use_model = model or self.model
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, TRANSIENT)),
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                reraise=True,
            ):
                with attempt:
                    if time.time() >= deadline:  # a retry must respect it too
                        raise BudgetExhausted("the job's time budget ran out while retrying a model call")
                    return await self._attempt(job_id, chunk_id, purpose, request_key, use_model, messages, params)
        except TRANSIENT as exc:
            raise LlmUnavailable(f"{type(exc).__name__} after {self.max_retries + 1} attempts: {exc}") from exc
        raise AssertionError("unreachable")

    async def _admit(self, job_id: uuid.UUID, request_key: str) -> tuple[LlmResult | None, float]:
        """(an answer already paid for under ``request_key``, the job's deadline as a Unix time).

        Before any new call, the job's budgets: BudgetExhausted if its tokens or time are used up;
        and its owner's quota: QuotaExceeded if their tokens of the day are."""
        async with self.db.job_tx(job_id) as tx:
            job = await tx.session.get(Job, job_id)
            if job is None:
                raise JobGone(str(job_id))
            opts = JobOptions(**(job.params or {}))
            # Not the review's wait, nor the job's own time for an edit of it (db.loop.clock_start).
            wid = activity.info().workflow_id if activity.in_activity() else None
            started = await clock_start(tx.session, job, edit_of(wid))
            deadline = started.timestamp() + opts.max_wall_seconds
            row = await self.records.answer_paid_for(tx, job_id, request_key)
            if row is not None:
                tx.event(
                    "llm",
                    "reuse",
                    {
                        "llm_call_id": row.id,
                        "request_key": request_key,
                        "reason": "answer stored by an earlier attempt of this activity",
                    },
                )
                text = without_controls(answer_of(row))
                return LlmResult(
                    row.id, text, row.finish_reason, row.tokens_in or 0, row.tokens_out or 0, reused=True
                ), deadline
            exhausted = await budget_exhausted(tx, job_id, opts, deadline)
            refused = None if exhausted is not None else await quota_refused(tx, job.user_id)
            if exhausted is None and refused is None:
                return None, deadline
            if refused is not None:
                tx.event("error", "quota", {"reason": str(refused), "request_key": request_key})
            else:
                tx.event("error", "budget", {"reason": exhausted, "request_key": request_key})
        if refused is not None:
            raise refused  # after the commit: the refusal is in the log
        raise BudgetExhausted(exhausted)

    async def _attempt(
        self,
        job_id: uuid.UUID,
        chunk_id: int | None,
        purpose: str,
        request_key: str,
        model: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
    ) -> LlmResult:
        """One HTTP attempt. Its row is committed (``pending``) before the request leaves, and its
        outcome is stored before anything else can fail: cancellation included, since storing is
        shielded from it (``asyncio.CancelledError`` is not an ``Exception``)."""
        call_id, attempt_no = await self.records.open(job_id, chunk_id, purpose, request_key, model, messages, params)
        span = start_span(self.base_url, job_id, call_id, purpose, model, attempt_no, params)
        t0 = time.perf_counter()
        out = Outcome()
        try:
            await stream_completion(
                self.client, model=model, messages=messages, params=params, limit_s=self.timeout, out=out, t0=t0
            )
        except asyncio.CancelledError:
            out.error = asyncio.CancelledError("cancelled while the call was in flight")
            await shielded(self._close(job_id, call_id, purpose, model, attempt_no, messages, out, t0, span))
            raise
        except openai.APIStatusError as exc:
            out.error, out.http_status = exc, exc.status_code
        except Exception as exc:  # timeouts (a stalled stream too), connection resets, garbage bodies
            out.error = exc
        closed = await shielded(self._close(job_id, call_id, purpose, model, attempt_no, messages, out, t0, span))
        if out.error is not None:
            raise out.error
        text = without_controls(out.text or "")
        return LlmResult(call_id, text, out.finish, closed.tokens_in or 0, closed.tokens_out or 0)

    async def _close(
        self,
        job_id: uuid.UUID,
        call_id: int,
        purpose: str,
        model: str,
        attempt_no: int,
        messages: list[dict[str, str]],
        out: Outcome,
        t0: float,
        span: Any = None,
    ) -> Closed:
        """Measure the call (metrics, its span: the call happened, whatever the write does), then
        store its outcome."""
        latency_ms = (time.perf_counter() - t0) * 1000
        end_ns = time.time_ns()
        closed = self.records.outcome(messages, out, model)
        record = CallRecord(
            model,
            purpose,
            outcome_label(out, closed.status),
            latency_ms,
            out.ttft_ms,
            closed.tokens_in,
            closed.tokens_out,
            closed.cached,
            out.finish,
            closed.error,
        )
        observe(record, span, end_ns)
        await self.records.close(job_id, call_id, purpose, model, attempt_no, messages, out, latency_ms, closed)
        log.info(
            "llm.call",
            job_id=str(job_id),
            purpose=purpose,
            status=closed.status,
            ms=round(latency_ms),
            ttft_ms=round(out.ttft_ms) if out.ttft_ms is not None else None,
            tokens_in=closed.tokens_in,
            tokens_out=closed.tokens_out,
            finish=out.finish,
        )
        return closed
