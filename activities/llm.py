"""The LLM client: openai's AsyncOpenAI against any OpenAI-compatible endpoint.

Transient failures (429 honouring Retry-After, 5xx, timeouts, connection resets) are retried
here with tenacity; what is still failing after that is raised as ``LlmUnavailable`` for
Temporal to retry the activity later. Every HTTP attempt, failed or not, becomes a row in
``llm_calls`` and an ``llm`` audit event, committed immediately in its own transaction so that a
worker crash never loses the record of a call that was paid for. Answers are streamed
(``activities.llm_stream``), so each call's time to first token is measured and stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai
import structlog
from openai import AsyncOpenAI
from sqlalchemy import func, select
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from activities.llm_stream import CallRecord, LlmTimeout, Outcome, observe, outcome_label, start_span, stream_completion
from core.cost import Price, cost_micro_usd
from core.quota import QuotaExceeded, day_start, tokens_refusal
from core.spec import JobOptions
from core.text import count_words
from db.audit import shorten
from db.models import Job, LlmCall
from db.session import Database, JobGone, JobTx
from db.usage import quotas, tokens_since

log = structlog.get_logger(__name__)
T = TypeVar("T")

TRANSIENT = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    LlmTimeout,
)


class LlmUnavailable(Exception):
    """The endpoint kept failing with transient errors; Temporal retries the activity later."""


class BudgetExhausted(Exception):
    """The job's token or time budget is used up: no more model calls are made for it."""


@dataclass
class LlmResult:
    call_id: int
    text: str
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
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        self.db = db
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
        # The SDK's own retries are off: each attempt must be recorded, so tenacity drives them.
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0)

    async def close(self) -> None:
        await self.client.close()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, openai.RateLimitError):
            ra = exc.response.headers.get("retry-after") if exc.response is not None else None
            try:
                if ra is not None:
                    return min(float(ra), 120.0)
            except ValueError:
                pass
        return float(min(self.retry_wait_cap, 0.5 * 2 ** (state.attempt_number - 1)))

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
        reused, deadline = await self._stored(job_id, request_key)
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
                    if deadline is not None and time.time() >= deadline:  # a retry must respect it too
                        raise BudgetExhausted("the job's time budget ran out while retrying a model call")
                    return await self._attempt(job_id, chunk_id, purpose, request_key, use_model, messages, params)
        except TRANSIENT as exc:
            raise LlmUnavailable(f"{type(exc).__name__} after {self.max_retries + 1} attempts: {exc}") from exc
        raise AssertionError("unreachable")

    async def _stored(self, job_id: uuid.UUID, request_key: str) -> tuple[LlmResult | None, float | None]:
        """(an answer already paid for under ``request_key``, the job's deadline as a Unix time).

        Before any new call, the job's budgets: BudgetExhausted if its tokens or time are used up;
        and its owner's quota: QuotaExceeded if their tokens of the day are."""
        async with self.db.job_tx(job_id) as tx:
            job = await tx.session.get(Job, job_id)
            if job is None:
                raise JobGone(str(job_id))
            opts = JobOptions(**(job.params or {}))
            started = job.started_at or job.created_at
            deadline = started.timestamp() + opts.max_wall_seconds
            row = (
                await tx.session.execute(
                    select(LlmCall)
                    .where(LlmCall.job_id == job_id, LlmCall.request_key == request_key, LlmCall.status == "ok")
                    .order_by(LlmCall.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            refused: QuotaExceeded | None = None
            if row is None:
                exhausted = await _budget_exhausted(tx, job_id, opts, deadline)
                refused = None if exhausted is not None else await _quota_refused(tx, job.user_id)
                if exhausted is None and refused is None:
                    return None, deadline
                if refused is not None:
                    tx.event("error", "quota", {"reason": str(refused), "request_key": request_key})
                else:
                    tx.event("error", "budget", {"reason": exhausted, "request_key": request_key})
            else:
                tx.event(
                    "llm",
                    "reuse",
                    {
                        "llm_call_id": row.id,
                        "request_key": request_key,
                        "reason": "answer stored by an earlier attempt of this activity",
                    },
                )
                return LlmResult(
                    row.id, row.response or "", row.finish_reason, row.tokens_in or 0, row.tokens_out or 0, reused=True
                ), deadline
        if refused is not None:
            raise refused  # after the commit, as below
        raise BudgetExhausted(exhausted)  # after the commit: the refusal is in the log

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
        call_id, attempt_no = await self._open(job_id, chunk_id, purpose, request_key, model, messages, params)
        span = start_span(self.base_url, job_id, call_id, purpose, model, attempt_no, params)
        t0 = time.perf_counter()
        out = Outcome()
        close = (job_id, call_id, purpose, model, attempt_no, messages, out, t0, span)
        try:
            await stream_completion(
                self.client, model=model, messages=messages, params=params, limit_s=self.timeout, out=out, t0=t0
            )
        except asyncio.CancelledError:
            out.error = asyncio.CancelledError("cancelled while the call was in flight")
            await _shielded(self._close(*close))
            raise
        except openai.APIStatusError as exc:
            out.error, out.http_status = exc, exc.status_code
        except Exception as exc:  # timeouts (a stalled stream too), connection resets, garbage bodies
            out.error = exc
        status = await _shielded(self._close(*close))
        if out.error is not None:
            raise out.error
        return LlmResult(call_id, out.text or "", out.finish, status.tokens_in or 0, status.tokens_out or 0)

    async def _open(
        self,
        job_id: uuid.UUID,
        chunk_id: int | None,
        purpose: str,
        request_key: str,
        model: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
    ) -> tuple[int, int]:
        """The call's row, ``pending``, committed before the request is sent: a worker that dies
        with the call in flight leaves it in the log. Earlier attempts of the same request still
        ``pending`` died so: they are marked ``interrupted``."""
        async with self.db.job_tx(job_id) as tx:
            earlier = (
                (
                    await tx.session.execute(
                        select(LlmCall).where(LlmCall.job_id == job_id, LlmCall.request_key == request_key)
                    )
                )
                .scalars()
                .all()
            )
            for row in earlier:
                if row.status == "pending":
                    row.status, row.error = "error", INTERRUPTED
                    row.completed_at = dt.datetime.now(dt.UTC)
                    tx.event("error", "llm", {"llm_call_id": row.id, "purpose": row.purpose, "error": INTERRUPTED})
            row = LlmCall(
                job_id=job_id,
                chunk_id=chunk_id,
                purpose=purpose,
                request_key=request_key,
                attempt=len(earlier) + 1,
                model=model,
                base_url=self.base_url,
                messages=messages,
                params=params,
                status="pending",
                started_at=dt.datetime.now(dt.UTC),
            )
            tx.session.add(row)
            await tx.session.flush()
            return row.id, row.attempt

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
    ) -> LlmCall:
        """The outcome of a call onto its row, with its ``llm`` audit event; counted in the
        metrics and its span ended before the write (the call happened, whatever the write does)."""
        latency_ms = (time.perf_counter() - t0) * 1000
        end_ns = time.time_ns()
        usage, text = out.usage, out.text
        tokens_in = getattr(usage, "prompt_tokens", None)
        tokens_out = getattr(usage, "completion_tokens", None)
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
        estimated = usage is None and out.error is None
        if estimated:  # some servers omit usage: estimate at ~4 characters a token, and say so
            tokens_in = sum(len(m.get("content", "")) for m in messages) // 4
            tokens_out = len(text or "") // 4
        status = "ok" if out.error is None and text else "error"
        cost = cost_micro_usd(self.prices.get(model), tokens_in, cached, tokens_out)
        err_text = None
        if out.error is not None:
            err_text = f"{type(out.error).__name__}: {out.error}"
        elif not text:
            err_text = "empty content"
        record = CallRecord(
            model,
            purpose,
            outcome_label(out, status),
            latency_ms,
            out.ttft_ms,
            tokens_in,
            tokens_out,
            cached,
            out.finish,
            err_text,
        )
        observe(record, span, end_ns)
        async with self.db.job_tx(job_id) as tx:
            row = await tx.session.get(LlmCall, call_id)
            assert row is not None
            row.response, row.finish_reason = text, out.finish
            row.tokens_in, row.tokens_out, row.tokens_cached, row.tokens_estimated = (
                tokens_in,
                tokens_out,
                cached,
                estimated,
            )
            row.latency_ms, row.status, row.http_status, row.error = latency_ms, status, out.http_status, err_text
            row.ttft_ms = out.ttft_ms
            row.cost_micro_usd = cost
            row.completed_at = dt.datetime.now(dt.UTC)
            last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
            tx.event(
                "llm",
                "call" if status == "ok" else "error",
                {
                    "llm_call_id": call_id,
                    "purpose": purpose,
                    "model": model,
                    "attempt": attempt_no,
                    "status": status,
                    "http_status": out.http_status,
                    "error": err_text,
                    "finish_reason": out.finish,
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "tokens_cached": cached,
                    "tokens_estimated": estimated,
                    "cost_micro_usd": cost,
                    "latency_ms": round(latency_ms, 1),
                    "ttft_ms": round(out.ttft_ms, 1) if out.ttft_ms is not None else None,
                    "prompt_summary": shorten(" ".join(last_user.split()), 300),
                    "prompt_chars": sum(len(m.get("content", "")) for m in messages),
                    "response_summary": shorten(" ".join((text or "").split()), 300),
                    "response_words": count_words(text or ""),
                },
            )
            if out.error is not None:
                tx.event("error", "llm", {"llm_call_id": call_id, "purpose": purpose, "error": err_text})
        log.info(
            "llm.call",
            job_id=str(job_id),
            purpose=purpose,
            status=status,
            ms=round(latency_ms),
            ttft_ms=round(out.ttft_ms) if out.ttft_ms is not None else None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            finish=out.finish,
        )
        return row


INTERRUPTED = "interrupted: the worker stopped while this call was in flight; its answer, if any, never arrived"


async def _shielded(coro: Awaitable[T]) -> T:
    """Run ``coro`` to the end even if this task is cancelled meanwhile, then honour the cancel."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _quota_refused(tx: JobTx, user_id: int) -> QuotaExceeded | None:
    """Whether the job's owner has used up their tokens of the day (core.quota)."""
    q = await quotas(tx.session, user_id)
    if q.tokens_per_day is None:
        return None
    now = dt.datetime.now(dt.UTC)
    return tokens_refusal(q, await tokens_since(tx.session, user_id, day_start(now)), now)


async def _budget_exhausted(tx: JobTx, job_id: uuid.UUID, opts: JobOptions, deadline: float) -> str | None:
    """Why the next model call must not be made (the job's token or time budget is used up), or None."""
    if time.time() >= deadline:
        return f"time budget of {opts.max_wall_seconds} s used up before the next model call"
    if opts.max_tokens is not None:
        used = (
            await tx.session.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0)
                ).where(LlmCall.job_id == job_id)
            )
        ).scalar_one() or 0
        if used >= opts.max_tokens:
            return f"token budget of {opts.max_tokens} used up ({used} tokens) before the next model call"
    return None
