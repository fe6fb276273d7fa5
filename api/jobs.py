"""/v1 job routes: submit, status, output, coherence, history, cancel, resume, delete."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse
from temporalio.service import RPCError, RPCStatusCode

from api import actions
from api.deps import CallerDep, ClientDep, DbDep, OwnJobDep, SettingsDep
from api.intake import IDEMPOTENCY_KEY_PATTERN, idempotency_key, invalid, read_spec
from api.schemas import (
    COMMON,
    ERRORS,
    Cancelling,
    CoherenceReport,
    Cost,
    Draft,
    DraftPiece,
    HistoryItem,
    HistoryPage,
    JobCreated,
    JobView,
    Progress,
    Resuming,
    Tokens,
    WordAccountView,
    links,
)
from core.cost import usd
from core.eventformat import shown
from core.quota import QuotaExceeded
from core.spec import TERMINAL_STATUSES, JobKind, JobStatus
from db.models import Job
from db.session import Database
from db.usage import Cost as UsageCost
from services import coherence, exports, views
from services import jobs as job_service
from services import webhooks as webhook_service

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1", tags=["jobs"], responses=COMMON)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    summary="Submit a generate or rewrite job",
    description="JSON, or multipart/form-data with a .txt/.md `file` (a rewrite's input). 202 with the new "
    "job; with an `Idempotency-Key` that was used before for the same request, 200 with that job instead. "
    "`model` must be one of the configured models (QUIRE_MODEL, QUIRE_MODELS).",
    responses={
        200: {"model": JobCreated, "description": "the job an earlier request with this Idempotency-Key made"},
        409: {**ERRORS[404], "description": "the Idempotency-Key was used for a different request"},
        413: ERRORS[413],
        415: ERRORS[415],
        422: ERRORS[422],
        429: ERRORS[429],
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
                "multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/JobUpload"},
                    "encoding": {"options": {"contentType": "application/json"}},
                },
            },
        }
    },
)
async def submit_job(
    request: Request,
    who: CallerDep,
    db: DbDep,
    client: ClientDep,
    settings: SettingsDep,
    # Checked by intake.idempotency_key (for a precise message); the pattern is for the spec.
    idempotency_key_header: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="retries with the same key and request return the same job",
            json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN},
        ),
    ] = None,
) -> Response:
    idem = idempotency_key(idempotency_key_header)
    spec, filename = await read_spec(request, settings.quire_max_input_bytes, settings.allowed_models)
    existing = None
    if idem is not None:
        existing = await job_service.find_by_idempotency_key(db, who.user_id, idem)
    hook = None
    if existing is None:  # (a replay returns its job, whatever its webhook or the quotas say now)
        try:
            hook = await webhook_service.job_target(db, who.user_id, spec.webhook_url, settings.webhook_policy)
        except webhook_service.TargetRefused as exc:
            raise invalid(["body", "webhook_url"], str(exc), "webhook_url") from None
    try:
        job, created = await job_service.submit(
            db,
            client,
            user_id=who.user_id,
            user_name=who.name,
            spec=spec,
            task_queue=settings.temporal_task_queue,
            default_model=settings.quire_model,
            idempotency_key=idem,
            filename=filename,
            webhook_url=hook,
            webhook_retry=settings.webhook_retry,
            durability=job_service.durability(settings),
            witness=settings.quire_witness_url is not None,
        )
    except QuotaExceeded as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except job_service.IdempotencyConflict as exc:
        # 409, not 422: the request is well formed; it conflicts with what the key already names.
        raise HTTPException(409, str(exc)) from None
    jid = str(job.id)
    log.info("job.submitted", job_id=jid, user_id=who.user_id, kind=spec.kind, target=spec.target_words, new=created)
    body = JobCreated(id=jid, status=job.status, workflow_id=job.workflow_id, created=created, links=links(jid))  # type: ignore[arg-type]
    return Response(
        body.model_dump_json(),
        status_code=202 if created else 200,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{jid}"},
    )


def cost(c: UsageCost) -> Cost:
    return Cost(micro_usd=c.micro_usd, usd=usd(c.micro_usd), unpriced_calls=c.unpriced_calls)


async def job_view(db: Database, job: Job) -> JobView:
    t = await views.job_totals(db, job)
    job_cost, user_cost = await views.costs(db, job)
    end = job.completed_at or dt.datetime.now(dt.UTC)
    return JobView(
        id=str(job.id),
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        title=job.title,
        target_words=job.target_words,
        max_words=job.max_words,
        words_written=t.output_words if t.output_words is not None else t.words_so_far,
        output_words=t.output_words,
        target_met=t.output_words is not None and t.output_words >= job.target_words,
        progress=Progress(
            units_done=job.units_done,
            units_total=job.units_total,
            sections_done=t.sections_done,
            sections_total=job.sections_total,
            chunks_done=job.chunks_done,
            chunks_total=job.chunks_total,
            current_step=job.current_step,
            finalize_rounds=job.finalize_rounds,
        ),
        account=WordAccountView(**t.account.as_dict(), summary=t.account.describe()),
        error_code=job.error_code,
        failure_reason=shown(job.failure_reason) if job.failure_reason is not None else None,
        model=job.model,
        options=job.params,
        workflow_id=job.workflow_id,
        created_at=job.created_at.isoformat(),
        started_at=job.started_at.isoformat() if job.started_at else None,
        completed_at=job.completed_at.isoformat() if job.completed_at else None,
        elapsed_seconds=round((end - (job.started_at or job.created_at)).total_seconds(), 3),
        tokens=Tokens.model_validate({"in": t.tokens_in, "out": t.tokens_out, "llm_calls": t.llm_calls}),
        cost=cost(job_cost),
        user_cost=cost(user_cost),
        webhook_url=job.webhook_url,
        audit_events=job.audit_seq,
        audit_alarm=job.audit_alarm,
        links=links(str(job.id)),
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job's status, progress, failure reason and totals",
    responses={404: ERRORS[404], 422: ERRORS[422]},
)
async def get_job(job: OwnJobDep, db: DbDep) -> JobView:
    return await job_view(db, job)


@router.get(
    "/jobs/{job_id}/output",
    summary="The finished document, as Markdown, plain text, HTML, DOCX or EPUB",
    description="`format`: md (the canonical text), txt, html, docx or epub, each with the title, a contents "
    "page and every heading at its level (`markdown` and `text` are the earlier names of md and txt). "
    "Headers, for the canonical text whatever the format: X-Quire-Word-Count, X-Quire-Target-Words, "
    "X-Quire-Target-Met, X-Quire-Sha256, and X-Quire-Audit-Seq / X-Quire-Audit-Head: the audit log's head "
    "when the document was saved (its hash must be the hash of that seq in the log). Each read is recorded "
    "in the job's log as a user action. An author's edits make new versions: `version` reads an earlier one.",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "the document",
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
                exports.MEDIA_TYPES["docx"]: {"schema": {"type": "string", "format": "binary"}},
                exports.MEDIA_TYPES["epub"]: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        404: ERRORS[404],
        409: {**ERRORS[404], "description": "the job has no output (yet): not finished, or failed"},
        422: ERRORS[422],
    },
)
async def get_output(
    request: Request,
    job: OwnJobDep,
    who: CallerDep,
    db: DbDep,
    format: Annotated[
        Literal["md", "txt", "html", "docx", "epub", "markdown", "text"], Query(description="the format to send")
    ] = "md",
    partial: Annotated[bool, Query(description="the latest partial output of an unfinished or failed job")] = False,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**31 - 1,
            description="an earlier version of the output (GET .../versions); partial is then ignored",
        ),
    ] = None,
) -> Response:
    partial = partial and version is None
    doc = await views.latest_document(db, job.id, "partial" if partial else "output", version)
    if version is not None and doc is None and job.status == "succeeded":
        raise HTTPException(404, f"job {job.id} has no output version {version} (GET .../versions lists them)")
    if doc is not None and not partial and job.status != "succeeded":
        doc = None  # only a succeeded job has an output (the status rules keep it so; this says it twice)
    if doc is None:
        if partial:
            raise HTTPException(409, f"job is {job.status}: no partial output stored yet")
        why = f": {job.error_code}: {shown(job.failure_reason or '')}" if job.status == "failed" else ""
        raise HTTPException(409, f"job is {job.status}; the output is not ready{why}")
    fmt = exports.ALIASES.get(format, format)
    await actions.record(
        request, db, who, job, "download_output", role=doc.role, version=doc.version, sha256=doc.sha256, format=fmt
    )
    title = job.title or (job.skeleton or {}).get("title") or "Untitled"
    # Building a book is CPU work: in a thread, so the event loop keeps serving meanwhile.
    body = await asyncio.to_thread(exports.render, doc.text, fmt, str(title), str(job.id))
    disposition = {"Content-Disposition": f'attachment; filename="quire-{job.id}.{fmt}"'} if fmt in BINARY else {}
    return Response(
        body,
        media_type=exports.MEDIA_TYPES[fmt],
        headers={
            **disposition,
            "X-Quire-Word-Count": str(doc.word_count),
            "X-Quire-Target-Words": str(job.target_words),
            "X-Quire-Target-Met": str(doc.word_count >= job.target_words).lower(),
            "X-Quire-Sha256": doc.sha256,
            **(
                {"X-Quire-Audit-Seq": str(doc.audit_seq), "X-Quire-Audit-Head": doc.audit_head}
                if doc.audit_head is not None
                else {}
            ),
        },
    )


@router.get(
    "/jobs/{job_id}/draft",
    response_model=Draft,
    summary="The document so far, in pieces (what the job page shows)",
    description="While the job runs: its committed chunks' latest versions under the headings they have; once "
    "it has ended, the output as stored (failed or cancelled: the partial document). With `after` (the `seq` of "
    "the previous read) a chunk's text is sent only if it gained a version since, so a reader refreshing on each "
    "commit reads only what is new. A read that sends chunk text is recorded in the job's log (`read_draft`).",
    responses={404: ERRORS[404], 422: ERRORS[422]},
)
async def get_draft(
    request: Request,
    job: OwnJobDep,
    who: CallerDep,
    db: DbDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="the seq of the previous read; 0: everything")] = 0,
) -> Draft:
    d = await views.draft(db, job.id, after)
    if d is None:
        raise HTTPException(404, f"no job {str(job.id)!r}")
    sent = [p.piece.chunk for p in d.pieces if p.sent and p.piece.chunk is not None]
    if sent:
        await actions.record(request, db, who, job, "read_draft", after=after, seq=d.seq, chunks=sent)
    return Draft(
        job_id=str(job.id),
        status=d.status,  # type: ignore[arg-type]
        seq=d.seq,
        complete=d.complete,
        pieces=[
            DraftPiece(key=p.key, heading=p.piece.heading, chunk=p.piece.chunk, text=p.piece.text if p.sent else None)
            for p in d.pieces
        ],
    )


@router.get(
    "/jobs/{job_id}/coherence",
    response_model=CoherenceReport,
    summary="The coherence report: continuity findings with their evidence, by category",
    description="Every continuity finding of the job (a chunk checked against the story memory when it was "
    "accepted, a chapter at its seam): its ConStory-Bench category, the quote where it was found and the quote "
    "it contradicts, the model call and the audit seq that found it, and what became of it (repaired as a new "
    "version, the old kept, or open). Counts per 10,000 words by category, the ledger's size, the share of memory "
    "states the model wrote vs the deterministic fallback, the seams by status. Available while the job runs.",
    responses={404: ERRORS[404], 422: ERRORS[422]},
)
async def get_coherence(job: OwnJobDep, db: DbDep) -> dict[str, Any]:
    return await coherence.coherence(db, job)


BINARY = ("docx", "epub")


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.datetime) else v


@router.get(
    "/jobs",
    response_model=HistoryPage,
    summary="The caller's job history, newest first",
    responses={422: ERRORS[422]},
)
async def list_jobs(
    who: CallerDep,
    db: DbDep,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page", json_schema_extra={"pattern": views.CURSOR_PATTERN}),
    ] = None,
) -> HistoryPage:
    try:
        rows, nxt = await views.history(db, who.user_id, status=status, kind=kind, limit=limit, cursor=cursor)
    except views.BadCursor as exc:
        raise invalid(["query", "cursor"], str(exc), "cursor") from None
    items = [
        HistoryItem(
            **{k: _iso(v) for k, v in r.items() if k not in ("user_id", "id")},
            id=str(r["id"]),
            links=links(str(r["id"])),
        )
        for r in rows
    ]
    return HistoryPage(items=items, next_cursor=nxt, user_cost=cost(await views.user_costs(db, who.user_id)))


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Cancelling,
    summary="Cancel a job (it stops at the next activity boundary; what it wrote stays)",
    responses={
        404: ERRORS[404],
        409: {**ERRORS[404], "description": "the job has already finished"},
        422: ERRORS[422],
    },
)
async def cancel_job(request: Request, job: OwnJobDep, who: CallerDep, db: DbDep, client: ClientDep) -> Cancelling:
    if job.status in TERMINAL_STATUSES:
        raise HTTPException(409, f"job already {job.status}")
    await actions.record(request, db, who, job, "cancel")
    try:
        await job_service.cancel(client, job)
    except RPCError as exc:  # its workflow ended (or never started) after the status was read
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise HTTPException(409, f"job is {job.status} but has no workflow to cancel") from None
    log.info("job.cancel_requested", job_id=str(job.id), user_id=who.user_id)
    return Cancelling(id=str(job.id), status="cancelling")


@router.post(
    "/jobs/{job_id}/resume",
    status_code=202,
    response_model=Resuming,
    summary="Resume a failed or cancelled job (a new run that continues from what it committed, in the same log)",
    responses={
        404: ERRORS[404],
        409: {**ERRORS[404], "description": "the job succeeded, or it is running"},
        422: ERRORS[422],
        429: ERRORS[429],
    },
)
async def resume_job(
    request: Request, job: OwnJobDep, who: CallerDep, db: DbDep, client: ClientDep, settings: SettingsDep
) -> Resuming:
    if job.status == "succeeded":
        raise HTTPException(409, "job already succeeded: there is nothing to resume")
    await actions.record(request, db, who, job, "resume")
    try:
        resumed = await job_service.resume(
            db,
            client,
            job.id,
            user_name=who.name,
            task_queue=settings.temporal_task_queue,
            durability=job_service.durability(settings),
            webhook_retry=settings.webhook_retry,
            witness=settings.quire_witness_url is not None,
        )
    except job_service.NotResumable as exc:
        raise HTTPException(409, str(exc)) from None
    except QuotaExceeded as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    log.info("job.resume_requested", job_id=str(job.id), user_id=who.user_id, workflow_id=resumed.workflow_id)
    return Resuming(id=str(job.id), status="running", workflow_id=resumed.workflow_id)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Delete a job and everything it owns (its output, log, chunks, calls); recorded in the account log",
    responses={404: ERRORS[404], 422: ERRORS[422]},
)
async def delete_job(request: Request, job: OwnJobDep, who: CallerDep, db: DbDep, client: ClientDep) -> Response:
    await job_service.delete(db, client, job, user_id=who.user_id, path=request.url.path)
    return Response(status_code=204)
