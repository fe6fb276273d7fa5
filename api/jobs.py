"""/v1 routes: jobs, outputs, audit logs (pages, downloads, live stream), history, cancel, delete."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, text
from sse_starlette.sse import EventSourceResponse
from temporalio.client import Client

from api import audit
from api.auth import Caller, authenticate, bearer
from db.models import TERMINAL_STATUSES, AccountEvent, Chunk, Document, Job, LlmCall, Section
from db.session import Database
from quire import jobs as job_service
from quire.config import Settings

router = APIRouter(prefix="/v1", tags=["jobs"])
AUDIT_KINDS = ["sql", "row", "llm", "chunk", "length", "activity", "error", "workflow", "job", "plan", "stitch"]


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


# --- submit -------------------------------------------------------------------------------


class JobCreated(BaseModel):
    id: str
    status: str
    workflow_id: str
    created: bool
    links: dict[str, str]


def _links(jid: str) -> dict[str, str]:
    return {
        "self": f"/v1/jobs/{jid}",
        "output": f"/v1/jobs/{jid}/output",
        "audit": f"/v1/jobs/{jid}/audit",
        "stream": f"/v1/jobs/{jid}/audit/stream",
        "cancel": f"/v1/jobs/{jid}/cancel",
        "page": f"/jobs/{jid}",
    }


def _unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(422, errors)


def _spec_errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in e["loc"]]
        field = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if loc[:1] == ["target_words"]:
            got = e.get("input")
            msg = f"target_words must be an integer from 1 to 500,000 (got {json.dumps(got)})"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}"
        elif e["type"] == "missing":
            msg = f"missing field {field!r}"
        out.append({"loc": ["body", *loc], "msg": msg, "type": e["type"]})
    return out


_SPEC_SCHEMA = job_service.JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    summary="Submit a generate or rewrite job",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {k: v for k, v in _SPEC_SCHEMA.items() if k != "$defs"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["kind", "target_words"],
                        "properties": {
                            "kind": {"type": "string", "enum": ["generate", "rewrite"]},
                            "target_words": {"type": "integer", "minimum": 1, "maximum": 500000},
                            "prompt": {"type": "string"},
                            "title": {"type": "string"},
                            "options": {"type": "string", "description": "JSON object of job options"},
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "a .txt or .md input document",
                            },
                        },
                    }
                },
            },
        }
    },
)
async def submit_job(
    request: Request,
    who: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    db, client, settings = deps(request)
    cap = settings.quire_max_input_bytes
    ctype = request.headers.get("content-type", "")
    filename = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        raw: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str):
            filename = upload.filename or "upload.txt"
            if not filename.lower().endswith((".txt", ".md", ".markdown")):
                raise _unprocessable(
                    [{"loc": ["body", "file"], "msg": "file must be a .txt or .md document", "type": "file_type"}]
                )
            data = await upload.read(cap + 1)
            if len(data) > cap:
                raise _unprocessable(
                    [
                        {
                            "loc": ["body", "file"],
                            "type": "too_large",
                            "msg": f"input is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)",
                        }
                    ]
                )
            try:
                raw["input_text"] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _unprocessable(
                    [
                        {
                            "loc": ["body", "file"],
                            "type": "not_utf8",
                            "msg": f"input is not UTF-8 text (invalid byte at offset {exc.start})",
                        }
                    ]
                ) from None
            raw.setdefault("kind", "rewrite")
        if "target_words" in raw:
            tw = raw["target_words"].strip()
            raw["target_words"] = int(tw) if tw.lstrip("-").isdigit() else tw
        if "options" in raw:
            try:
                raw["options"] = json.loads(raw["options"])
            except ValueError:
                raise _unprocessable(
                    [{"loc": ["body", "options"], "msg": "options must be a JSON object", "type": "json"}]
                ) from None
    else:
        body = await request.body()
        if len(body) > cap:
            raise _unprocessable(
                [
                    {
                        "loc": ["body"],
                        "type": "too_large",
                        "msg": f"request is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)",
                    }
                ]
            )
        try:
            raw = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _unprocessable(
                [
                    {
                        "loc": ["body"],
                        "type": "not_utf8",
                        "msg": f"body is not UTF-8 (invalid byte at offset {exc.start})",
                    }
                ]
            ) from None
        except ValueError as exc:
            raise _unprocessable([{"loc": ["body"], "msg": f"body is not valid JSON: {exc}", "type": "json"}]) from None
        if not isinstance(raw, dict):
            raise _unprocessable([{"loc": ["body"], "msg": "body must be a JSON object", "type": "json"}])
    try:
        spec = job_service.JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise _unprocessable(_spec_errors(exc)) from None
    if spec.input_text is not None and len(spec.input_text.encode("utf-8")) > cap:
        raise _unprocessable(
            [
                {
                    "loc": ["body", "input_text"],
                    "type": "too_large",
                    "msg": f"input_text is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)",
                }
            ]
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
    body = JobCreated(id=jid, status=job.status, workflow_id=job.workflow_id, created=created, links=_links(jid))
    return Response(
        body.model_dump_json(),
        status_code=202 if created else 200,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{jid}"},
    )


# --- status ---------------------------------------------------------------------------------


async def job_view(db: Database, job: Job) -> dict[str, Any]:
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
            await s.execute(select(Document.word_count).where(Document.job_id == job.id, Document.role == "output"))
        ).scalar_one_or_none()
    end = job.completed_at or dt.datetime.now(dt.UTC)
    words = out if out is not None else int(words_so_far)
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "title": job.title,
        "target_words": job.target_words,
        "max_words": job.max_words,
        "words_written": words,
        "output_words": out,
        "target_met": out is not None and out >= job.target_words,
        "progress": {
            "sections_done": sections_done,
            "sections_total": job.sections_total,
            "chunks_done": job.chunks_done,
            "chunks_total": job.chunks_total,
            "current_step": job.current_step,
            "finalize_rounds": job.finalize_rounds,
        },
        "error_code": job.error_code,
        "failure_reason": job.failure_reason,
        "model": job.model,
        "options": job.params,
        "workflow_id": job.workflow_id,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at and job.started_at.isoformat(),
        "completed_at": job.completed_at and job.completed_at.isoformat(),
        "elapsed_seconds": round((end - (job.started_at or job.created_at)).total_seconds(), 3),
        "tokens": {"in": int(tokens[0]), "out": int(tokens[1]), "llm_calls": int(tokens[2])},
        "audit_events": job.audit_seq,
        "links": _links(str(job.id)),
    }


@router.get("/jobs/{job_id}", summary="A job's status, progress, failure reason and totals")
async def get_job(request: Request, job_id: str, who: CallerDep) -> dict[str, Any]:
    job = await own_job(request, job_id, who)
    return await job_view(request.app.state.db, job)


@router.get(
    "/jobs/{job_id}/output",
    summary="The finished document",
    response_class=PlainTextResponse,
    responses={409: {"description": "the job has not succeeded (yet)"}},
)
async def get_output(
    request: Request,
    job_id: str,
    who: CallerDep,
    format: Annotated[Literal["text", "markdown"], Query()] = "markdown",
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
            "X-Quire-Sha256": doc.sha256,
            "X-Quire-Target-Met": str(doc.word_count >= job.target_words).lower(),
        },
    )


# --- audit ----------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/audit", summary="The audit log: JSON, NDJSON or TXT, paginated or whole")
async def get_audit(
    request: Request,
    job_id: str,
    who: CallerDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="return events with seq > after")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1_000_000, description="page size; omit for the whole log")] = None,
    format: Annotated[Literal["json", "ndjson", "txt"], Query()] = "json",
    kind: Annotated[list[str] | None, Query(description="only these kinds")] = None,
    download: Annotated[bool, Query(description="send as an attachment")] = False,
) -> StreamingResponse:
    job = await own_job(request, job_id, who)
    if kind:
        bad = [k for k in kind if k not in AUDIT_KINDS]
        if bad:
            raise HTTPException(422, f"unknown kind {bad[0]!r}; kinds are: {', '.join(AUDIT_KINDS)}")
    media = {"json": "application/json", "ndjson": "application/x-ndjson", "txt": "text/plain; charset=utf-8"}[format]
    headers = {}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="quire-audit-{job.id}.{format}"'
    return StreamingResponse(
        audit.render(request.app.state.db, job.id, after, limit, format, kind), media_type=media, headers=headers
    )


@router.get("/jobs/{job_id}/audit/stream", summary="Live audit events (server-sent events; id = seq)")
async def stream_audit(
    request: Request,
    job_id: str,
    who: CallerDep,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    job = await own_job(request, job_id, who)
    start = after if after is not None else 0
    if last_event_id and last_event_id.strip().isdigit():
        start = max(start, int(last_event_id))
    st = request.app.state
    return EventSourceResponse(
        audit.stream(st.db, st.listener, job.id, start),
        ping=15,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- history, cancel, delete ---------------------------------------------------------------


def _cursor(created: dt.datetime, jid: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{jid}".encode()).decode()


def _uncursor(c: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        ts, _, jid = base64.urlsafe_b64decode(c.encode()).decode().partition("|")
        return dt.datetime.fromisoformat(ts), uuid.UUID(jid)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(422, "invalid cursor") from None


@router.get("/jobs", summary="The caller's job history, newest first")
async def list_jobs(
    request: Request,
    who: CallerDep,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    kind: Annotated[Literal["generate", "rewrite"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
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
    items = []
    for r in rows[:limit]:
        d = {
            k: (v.isoformat() if isinstance(v, dt.datetime) else str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in r.items()
            if k != "user_id"
        }
        d["links"] = _links(d["id"])
        items.append(d)
    nxt = _cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return {"items": items, "next_cursor": nxt}


@router.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel at the next activity boundary")
async def cancel_job(request: Request, job_id: str, who: CallerDep) -> dict[str, Any]:
    job = await own_job(request, job_id, who)
    if job.status in TERMINAL_STATUSES:
        raise HTTPException(409, f"job already {job.status}")
    await request.app.state.client.get_workflow_handle(job.workflow_id).cancel()
    return {"id": str(job.id), "status": "cancelling"}


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and everything it owns")
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
    return Response(status_code=204)
