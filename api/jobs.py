"""/v1 routes: jobs, outputs, audit logs (pages, downloads, live stream), history, cancel, delete.

Every route answers for the caller's own jobs only: another user's job id is a 404, exactly as a
job that does not exist, on every route including the stream.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from sqlalchemy import func, select, text
from sse_starlette.sse import EventSourceResponse
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.text import sha256
from api import audit
from api.auth import Caller, authenticate, bearer
from api.schemas import (
    ERRORS,
    AuditPage,
    Cancelling,
    HistoryItem,
    HistoryPage,
    JobCreated,
    JobKind,
    JobStatus,
    JobView,
    Message,
    Progress,
    Tokens,
    links,
)
from db.ddl import NOTIFY_CHANNEL
from db.models import TERMINAL_STATUSES, AccountEvent, Chunk, Document, Job, LlmCall, Section
from db.session import Database
from quire import jobs as job_service
from quire.config import Settings

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1", tags=["jobs"], responses={401: ERRORS[401]})

AuditKind = Literal["sql", "row", "llm", "chunk", "length", "activity", "error", "workflow", "job", "plan", "stitch"]
SSE_PING_S = 15.0  # keep-alive comment lines on an idle stream (read per request: tests shorten it)
MAX_SEQ = 2**62


def deps(request: Request) -> tuple[Database, Client, Settings]:
    st = request.app.state
    return st.db, st.client, st.settings


async def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    return await authenticate(request.app.state.db, request, creds)


CallerDep = Annotated[Caller, Depends(caller)]


async def own_job(request: Request, job_id: str, who: Caller) -> Job:
    """The caller's job, or 404: another user's job is indistinguishable from a missing one."""
    try:
        jid = uuid.UUID(job_id)
    except ValueError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    async with request.app.state.db.tx() as s:
        job = await s.get(Job, jid)
    if job is None or job.user_id != who.user_id:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def unprocessable(loc: list[str | int], msg: str, type_: str) -> HTTPException:
    """A 422 shaped like FastAPI's own: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": type_}])


# --- submit -------------------------------------------------------------------------------


def _spec_errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in e["loc"]]
        field = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if loc == ["target_words"] and e["type"] == "missing":
            msg = "missing field 'target_words' (an integer from 1 to 500,000)"
        elif loc[:1] == ["target_words"]:
            got = json.dumps(e.get("input"), ensure_ascii=False)
            msg = f"target_words must be an integer from 1 to 500,000 (got {got})"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}"
        elif e["type"] == "missing":
            msg = f"missing field {field!r}"
        out.append({"loc": ["body", *loc], "msg": msg, "type": e["type"]})
    return out


_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_INT = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() rejects


def _int_or_none(s: str | None) -> int | None:
    return int(s) if s is not None and _INT.fullmatch(s.strip()) else None


def _text_problems(value: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    """Strings that Postgres text cannot hold: lone surrogates (JSON escapes can make them) and NUL."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _text_problems(v, [*loc, str(k)])]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _text_problems(v, [*loc, i])]
    if not isinstance(value, str):
        return []
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return []
    name = ".".join(str(x) for x in loc[1:]) or "body"
    if bad.group() == "\x00":
        return [{"loc": loc, "type": "nul", "msg": f"{name} contains a NUL character (at {bad.start()})"}]
    return [{"loc": loc, "type": "not_utf8", "msg": f"{name} is not valid Unicode (lone surrogate at {bad.start()})"}]


def _too_large(loc: list[str | int], what: str, cap: int) -> HTTPException:
    return unprocessable(loc, f"{what} is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)", "too_large")


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (read no further)."""
    declared = _int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        return None
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > limit:
            return None
    return bytes(buf)


async def _multipart_body(request: Request, cap: int) -> tuple[dict[str, Any], str | None]:
    declared = _int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > cap + 1_048_576:
        raise _too_large(["body", "file"], "input", cap)
    form = await request.form()
    raw: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
    filename = None
    upload = form.get("file")
    if upload is not None and not isinstance(upload, str):
        # A name to show later, not a path: no directories, no characters text can't hold.
        filename = (
            _BAD_TEXT.sub("", (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1])[:255] or "upload.txt"
        )
        if not filename.lower().endswith((".txt", ".md", ".markdown")):
            raise unprocessable(["body", "file"], "file must be a .txt or .md document", "file_type")
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise _too_large(["body", "file"], "input", cap)
        try:
            raw["input_text"] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise unprocessable(
                ["body", "file"], f"input is not UTF-8 text (invalid byte at offset {exc.start})", "not_utf8"
            ) from None
        raw.setdefault("kind", "rewrite")
    if "target_words" in raw:
        tw = raw["target_words"].strip()
        as_int = _int_or_none(tw)
        raw["target_words"] = tw if as_int is None else as_int
    if "options" in raw:
        try:
            raw["options"] = json.loads(raw["options"])
        except ValueError:
            raise unprocessable(["body", "options"], "options must be a JSON object", "json") from None
    return raw, filename


async def _json_body(request: Request, cap: int) -> dict[str, Any]:
    # JSON escaping can grow text up to 6x (\u0001); allow that, then check the decoded input.
    body = await _read_capped(request, 6 * cap + 1_048_576)
    if body is None:
        raise _too_large(["body"], "request body", 6 * cap + 1_048_576)
    try:
        raw = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise unprocessable(["body"], f"body is not UTF-8 (invalid byte at offset {exc.start})", "not_utf8") from None
    except (ValueError, RecursionError) as exc:
        raise unprocessable(["body"], f"body is not valid JSON: {exc}", "json") from None
    if not isinstance(raw, dict):
        raise unprocessable(["body"], "body must be a JSON object", "json")
    return raw


async def _same_request(db: Database, job: Job, spec: job_service.JobSpec, default_model: str) -> bool:
    if (job.kind, job.target_words, job.prompt, job.title, job.model, job.params) != (
        spec.kind,
        spec.target_words,
        spec.prompt,
        spec.title,
        spec.model or default_model,
        spec.options.model_dump(),
    ):
        return False
    if spec.input_text is None:
        return True
    async with db.tx() as s:
        stored = (
            await s.execute(select(Document.sha256).where(Document.job_id == job.id, Document.role == "input"))
        ).scalar_one_or_none()
    return stored == sha256(spec.input_text)


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["target_words", "file"],
    "properties": {
        "kind": {"type": "string", "enum": ["generate", "rewrite"], "default": "rewrite"},
        "target_words": {"type": "integer", "minimum": 1, "maximum": 500000},
        "prompt": {"type": "string"},
        "title": {"type": "string"},
        "model": {"type": "string"},
        "options": {"type": "string", "description": "JSON object of job options"},
        "file": {"type": "string", "format": "binary", "description": "the input document: .txt or .md, UTF-8"},
    },
}


def openapi_components() -> dict[str, Any]:
    """Schemas the submit route's hand-written request body refers to (app.py adds them)."""
    spec = job_service.JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    # What the model's validator checks, said in the schema: each kind's required text.
    spec["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {"required": [field], "properties": {field: {"type": "string", "pattern": "\\S"}}},
        }
        for kind, field in (("generate", "prompt"), ("rewrite", "input_text"))
    ]
    return {"JobSpec": {k: v for k, v in spec.items() if k != "$defs"}, **spec.get("$defs", {})}


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    summary="Submit a generate or rewrite job",
    description="JSON, or multipart/form-data with a .txt/.md `file` (a rewrite's input). 202 with the new "
    "job; with an `Idempotency-Key` that was used before for the same request, 200 with that job instead.",
    responses={
        200: {"model": JobCreated, "description": "the job an earlier request with this Idempotency-Key made"},
        422: ERRORS[422],
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    },
)
async def submit_job(
    request: Request,
    who: CallerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Response:
    db, client, settings = deps(request)
    cap = settings.quire_max_input_bytes
    filename = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raw, filename = await _multipart_body(request, cap)
    else:
        raw = await _json_body(request, cap)
    problems = _text_problems(raw, ["body"])
    if problems:
        raise HTTPException(422, problems)
    try:
        spec = job_service.JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise HTTPException(422, _spec_errors(exc)) from None
    if spec.input_text is not None and len(spec.input_text.encode("utf-8")) > cap:
        raise _too_large(["body", "input_text"], "input_text", cap)
    if idempotency_key:
        existing = await job_service.find_by_idempotency_key(db, who.user_id, idempotency_key)
        if existing is not None and not await _same_request(db, existing, spec, settings.quire_model):
            raise unprocessable(
                ["header", "idempotency-key"],
                f"Idempotency-Key {idempotency_key!r} was used for a different request (job {existing.id})",
                "idempotency_key_reused",
            )
    job, created = await job_service.submit(
        db,
        client,
        user_id=who.user_id,
        user_name=who.name,
        spec=spec,
        task_queue=settings.temporal_task_queue,
        default_model=settings.quire_model,
        idempotency_key=idempotency_key,
        filename=filename,
    )
    jid = str(job.id)
    log.info("job.submitted", job_id=jid, user_id=who.user_id, kind=spec.kind, target=spec.target_words, new=created)
    body = JobCreated(id=jid, status=job.status, workflow_id=job.workflow_id, created=created, links=links(jid))  # type: ignore[arg-type]
    return Response(
        body.model_dump_json(),
        status_code=202 if created else 200,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{jid}"},
    )


# --- status ---------------------------------------------------------------------------------


async def job_view(db: Database, job: Job) -> JobView:
    async with db.tx() as s:
        tokens = (
            await s.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0),
                    func.coalesce(func.sum(LlmCall.tokens_out), 0),
                    func.count(),
                ).where(LlmCall.job_id == job.id)
            )
        ).one()
        sections_done = (
            await s.execute(
                select(func.count()).select_from(Section).where(Section.job_id == job.id, Section.status == "done")
            )
        ).scalar_one()
        words_so_far = (
            await s.execute(select(func.coalesce(func.sum(Chunk.word_count), 0)).where(Chunk.job_id == job.id))
        ).scalar_one()
        out = (
            await s.execute(
                select(Document.word_count)
                .where(Document.job_id == job.id, Document.role == "output")
                .order_by(Document.version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    end = job.completed_at or dt.datetime.now(dt.UTC)
    return JobView(
        id=str(job.id),
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        title=job.title,
        target_words=job.target_words,
        max_words=job.max_words,
        words_written=out if out is not None else int(words_so_far),
        output_words=out,
        target_met=out is not None and out >= job.target_words,
        progress=Progress(
            sections_done=sections_done,
            sections_total=job.sections_total,
            chunks_done=job.chunks_done,
            chunks_total=job.chunks_total,
            current_step=job.current_step,
            finalize_rounds=job.finalize_rounds,
        ),
        error_code=job.error_code,
        failure_reason=job.failure_reason,
        model=job.model,
        options=job.params,
        workflow_id=job.workflow_id,
        created_at=job.created_at.isoformat(),
        started_at=job.started_at.isoformat() if job.started_at else None,
        completed_at=job.completed_at.isoformat() if job.completed_at else None,
        elapsed_seconds=round((end - (job.started_at or job.created_at)).total_seconds(), 3),
        tokens=Tokens.model_validate({"in": int(tokens[0] or 0), "out": int(tokens[1] or 0), "llm_calls": tokens[2]}),
        audit_events=job.audit_seq,
        links=links(str(job.id)),
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job's status, progress, failure reason and totals",
    responses={404: ERRORS[404]},
)
async def get_job(request: Request, job_id: str, who: CallerDep) -> JobView:
    job = await own_job(request, job_id, who)
    return await job_view(request.app.state.db, job)


@router.get(
    "/jobs/{job_id}/output",
    summary="The finished document",
    description="Headers: X-Quire-Word-Count, X-Quire-Target-Words, X-Quire-Target-Met, X-Quire-Sha256.",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/markdown": {}, "text/plain": {}}},
        404: ERRORS[404],
        409: {"model": Message, "description": "the job has no output (yet): not finished, or failed"},
    },
)
async def get_output(
    request: Request,
    job_id: str,
    who: CallerDep,
    format: Annotated[Literal["text", "markdown"], Query(description="the media type to send")] = "markdown",
    partial: Annotated[bool, Query(description="the latest partial output of an unfinished or failed job")] = False,
) -> Response:
    job = await own_job(request, job_id, who)
    role = "partial" if partial else "output"
    async with request.app.state.db.tx() as s:
        doc = (
            await s.execute(
                select(Document)
                .where(Document.job_id == job.id, Document.role == role)
                .order_by(Document.version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    if doc is None:
        if partial:
            raise HTTPException(409, f"job is {job.status}: no partial output stored yet")
        why = f": {job.error_code}: {job.failure_reason}" if job.status == "failed" else ""
        raise HTTPException(409, f"job is {job.status}; the output is not ready{why}")
    media = "text/markdown" if format == "markdown" else "text/plain"
    return Response(
        doc.text,
        media_type=f"{media}; charset=utf-8",
        headers={
            "X-Quire-Word-Count": str(doc.word_count),
            "X-Quire-Target-Words": str(job.target_words),
            "X-Quire-Target-Met": str(doc.word_count >= job.target_words).lower(),
            "X-Quire-Sha256": doc.sha256,
        },
    )


# --- audit ----------------------------------------------------------------------------------

AUDIT_MEDIA = {"json": "application/json", "ndjson": "application/x-ndjson", "txt": "text/plain; charset=utf-8"}


@router.get(
    "/jobs/{job_id}/audit",
    summary="The audit log: JSON, NDJSON or TXT, paginated or whole",
    description="Events with seq > `after`, in seq order; `limit` pages, no `limit` sends the whole log, "
    "streamed in constant memory. TXT: a header line, then one tab-separated line per event: "
    "`seq ts kind action table row summary data` (the summary of an sql event is its SQL text; tabs, "
    "newlines and backslashes escaped as \\t \\n \\\\; `-` for none; data is the event's JSON).",
    responses={
        200: {
            "model": AuditPage,
            "content": {"application/x-ndjson": {}, "text/plain": {}},
            "description": "format=json: an AuditPage; ndjson: one AuditEvent per line; txt: as described",
        },
        404: ERRORS[404],
        422: ERRORS[422],
    },
)
async def get_audit(
    request: Request,
    job_id: str,
    who: CallerDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="return events with seq > after")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1_000_000, description="page size; omit for the whole log")] = None,
    format: Annotated[Literal["json", "ndjson", "txt"], Query()] = "json",
    kind: Annotated[list[AuditKind] | None, Query(description="only events of these kinds")] = None,
    download: Annotated[bool, Query(description="send as an attachment (Content-Disposition)")] = False,
) -> StreamingResponse:
    job = await own_job(request, job_id, who)
    headers = {}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="quire-audit-{job.id}.{format}"'
    body = audit.render(request.app.state.db, job.id, after, limit, format, list(kind) if kind else None)
    return StreamingResponse(body, media_type=AUDIT_MEDIA[format], headers=headers)


async def workflow_open(client: Client, workflow_id: str) -> bool | None:
    """Whether the job's workflow is still running: True, False, or None when Temporal can't say.
    (A describe is not a job action: the audit interceptor records starts, queries, signals,
    cancels and terminations only.)"""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        return False if exc.status == RPCStatusCode.NOT_FOUND else None
    except Exception:  # noqa: BLE001 - Temporal unreachable: unknown
        return None
    return desc.status == WorkflowExecutionStatus.RUNNING


@router.get(
    "/jobs/{job_id}/audit/stream",
    summary="Live audit events (server-sent events; id = seq)",
    description="The log after `after` (or the Last-Event-ID header, whichever is later), then each event as "
    "it commits. Each event: `id:` its seq, `data:` the AuditEvent as JSON. Keep-alive comments on an idle "
    "stream. Once the job has finished and all its events are sent: `event: end` with "
    '`{"status", "last_seq"}` (or `{"reason": "deleted"}`), and the stream closes.',
    responses={200: {"content": {"text/event-stream": {}}}, 404: ERRORS[404], 422: ERRORS[422]},
)
async def stream_audit(
    request: Request,
    job_id: str,
    who: CallerDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header(description="the last seq received (sent by EventSource)")] = None,
) -> EventSourceResponse:
    job = await own_job(request, job_id, who)
    start = after or 0
    if last_event_id is not None and last_event_id.strip():
        seq = _int_or_none(last_event_id)
        if seq is None or seq < 0:
            raise unprocessable(["header", "last-event-id"], "Last-Event-ID must be an audit seq (an integer)", "seq")
        start = max(start, seq)
    st = request.app.state
    client: Client = st.client
    wid = job.workflow_id

    async def is_open() -> bool | None:
        return await workflow_open(client, wid)

    return EventSourceResponse(
        audit.stream(st.db, st.listener, job.id, start, workflow_open=is_open),
        ping=SSE_PING_S,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- history, cancel, delete ---------------------------------------------------------------


def _cursor(created: dt.datetime, jid: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{jid}".encode()).decode()


def _uncursor(c: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        ts, _, jid = base64.urlsafe_b64decode(c.encode()).decode().partition("|")
        when = dt.datetime.fromisoformat(ts)
        if when.tzinfo is None:
            raise ValueError(ts)
        return when, uuid.UUID(jid)
    except (ValueError, UnicodeError):
        raise unprocessable(
            ["query", "cursor"], "invalid cursor: pass next_cursor from the previous page", "cursor"
        ) from None


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.datetime) else v


@router.get(
    "/jobs",
    response_model=HistoryPage,
    summary="The caller's job history, newest first",
    responses={422: ERRORS[422]},
)
async def list_jobs(
    request: Request,
    who: CallerDep,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> HistoryPage:
    where = ["user_id = :u"]
    params: dict[str, Any] = {"u": who.user_id, "n": limit + 1}
    if status:
        where.append("status = :status")
        params["status"] = status
    if kind:
        where.append("kind = :kind")
        params["kind"] = kind
    if cursor:
        params["c_ts"], params["c_id"] = _uncursor(cursor)
        where.append("(created_at, id) < (:c_ts, :c_id)")
    sql = f"SELECT * FROM job_history WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT :n"
    async with request.app.state.db.tx() as s:
        rows = (await s.execute(text(sql), params)).mappings().all()
    items = [
        HistoryItem(
            **{k: _iso(v) for k, v in r.items() if k not in ("user_id", "id")},
            id=str(r["id"]),
            links=links(str(r["id"])),
        )
        for r in rows[:limit]
    ]
    nxt = _cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return HistoryPage(items=items, next_cursor=nxt)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Cancelling,
    summary="Cancel a job (it stops at the next activity boundary; what it wrote stays)",
    responses={404: ERRORS[404], 409: {"model": Message, "description": "the job has already finished"}},
)
async def cancel_job(request: Request, job_id: str, who: CallerDep) -> Cancelling:
    job = await own_job(request, job_id, who)
    if job.status in TERMINAL_STATUSES:
        raise HTTPException(409, f"job already {job.status}")
    await request.app.state.client.get_workflow_handle(job.workflow_id).cancel()
    log.info("job.cancel_requested", job_id=str(job.id), user_id=who.user_id)
    return Cancelling(id=str(job.id), status="cancelling")


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Delete a job and everything it owns (its output, log, chunks, calls); recorded in the account log",
    responses={404: ERRORS[404]},
)
async def delete_job(request: Request, job_id: str, who: CallerDep) -> Response:
    job = await own_job(request, job_id, who)
    db: Database = request.app.state.db
    if job.status not in TERMINAL_STATUSES:
        try:  # a running job is stopped first: nothing may write for it after the delete
            await request.app.state.client.get_workflow_handle(job.workflow_id).terminate("job deleted by its owner")
        except Exception:  # noqa: BLE001 - already closed or never started
            pass
    async with db.tx() as s:
        counts = (
            await s.execute(
                text(
                    "SELECT (SELECT count(*) FROM audit_events WHERE job_id=:j),"
                    " (SELECT count(*) FROM chunks WHERE job_id=:j),"
                    " (SELECT count(*) FROM llm_calls WHERE job_id=:j)"
                ),
                {"j": job.id},
            )
        ).one()
        await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job.id})
        # Wake the job's live streams (in every API process) at commit: they end with "deleted".
        await s.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": f"{job.id}:0"})
        s.add(
            AccountEvent(
                user_id=who.user_id,
                kind="job.deleted",
                job_id=job.id,
                method="DELETE",
                path=request.url.path,
                data={
                    "title": job.title,
                    "kind": job.kind,
                    "status": job.status,
                    "target_words": job.target_words,
                    "audit_events": counts[0],
                    "chunks": counts[1],
                    "llm_calls": counts[2],
                },
            )
        )
    log.info("job.deleted", job_id=str(job.id), user_id=who.user_id, audit_events=counts[0])
    return Response(status_code=204)
