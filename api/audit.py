"""/v1 audit routes: a job's log as JSON, NDJSON or TXT (paged or whole), its live stream, the
verification of its hash chain, and the view reports of the job's page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from api import actions, live
from api.audit_schemas import SSE_EVENT, AuditPage, AuditVerdict, ConsistencyProof, InclusionProof
from api.deps import (
    CallerDep,
    ClientDep,
    DbDep,
    KeyStillValidDep,
    ListenerDep,
    OwnJobDep,
    SettingsDep,
    StreamsDep,
)
from api.intake import SEQ_PATTERN, last_event_id
from api.schemas import COMMON, ERRORS
from core.eventformat import EventKind
from services import logreader
from services.temporal import workflow_open

router = APIRouter(prefix="/v1", tags=["audit"], responses=COMMON)

SSE_PING_S = 15.0  # keep-alive comment lines on an idle stream (read per request: tests shorten it)
MAX_SEQ = 2**62
AUDIT_MEDIA = {"json": "application/json", "ndjson": "application/x-ndjson", "txt": "text/plain; charset=utf-8"}


@router.get(
    "/jobs/{job_id}/audit",
    summary="The audit log: JSON, NDJSON or TXT, paginated or whole",
    description="Events with seq > `after`, in seq order; `limit` pages, no `limit` sends the whole log, "
    "streamed in constant memory. TXT: a header line, then one tab-separated line per event: "
    "`seq ts kind action table row summary prev_hash hash data` (the summary of an sql event is its SQL "
    "text; tabs, newlines and backslashes escaped as \\t \\n \\\\; `-` for none; data is the event's JSON). "
    "JSON ends with `head_seq` and `head_hash` (the hash of the last event sent); in TXT and NDJSON the "
    "last event's `hash` is the head. `download=1` is recorded in the job's log as a user action.",
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
    job: OwnJobDep,
    who: CallerDep,
    db: DbDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="return events with seq > after")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1_000_000, description="page size; omit for the whole log")] = None,
    format: Annotated[Literal["json", "ndjson", "txt"], Query()] = "json",
    kind: Annotated[list[EventKind] | None, Query(description="only events of these kinds")] = None,
    download: Annotated[bool, Query(description="send as an attachment (Content-Disposition)")] = False,
) -> StreamingResponse:
    headers = {}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="quire-audit-{job.id}.{format}"'
        # Recorded before the log is read: the copy the user gets holds its own download.
        await actions.record(request, db, who, job, "download_audit", format=format, after=after, limit=limit)
    body = logreader.render(db, job.id, after, limit, format, list(kind) if kind else None)
    return StreamingResponse(body, media_type=AUDIT_MEDIA[format], headers=headers)


@router.get(
    "/jobs/{job_id}/audit/stream",
    summary="Live audit events (server-sent events; id = seq)",
    description="The log after `after` (or the Last-Event-ID header, whichever is later), then each event as "
    "it commits. Each event: `id:` its seq, `data:` the AuditEvent as JSON. Keep-alive comments on an idle "
    "stream. Once the job has finished and all its events are sent: `event: end` with "
    '`{"status", "last_seq"}` (or `{"reason": "deleted"}`; `{"reason": "revoked"}` when the API key is '
    "revoked meanwhile), and the stream closes.",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "the event stream", "content": {"text/event-stream": {"schema": SSE_EVENT}}},
        400: ERRORS[400],
        404: ERRORS[404],
        422: ERRORS[422],
        429: {**ERRORS[429], "description": "too many live streams open (yours, or this server's)"},
    },
)
async def stream_audit(
    job: OwnJobDep,
    who: CallerDep,
    streams: StreamsDep,
    key_valid: KeyStillValidDep,
    db: DbDep,
    client: ClientDep,
    listener: ListenerDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="resume after this seq")] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="the last seq received (sent by EventSource); malformed: 400",
            json_schema_extra={"pattern": SEQ_PATTERN},
        ),
    ] = None,
) -> EventSourceResponse:
    start = max(after or 0, last_event_id(last_event_id_header) or 0)
    wid = job.workflow_id
    slot = streams.take(who.user_id)  # 429 past the per-user or per-process bound

    async def is_open() -> bool | None:
        return await workflow_open(client, wid)

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            async for e in live.stream(db, listener, job.id, start, workflow_open=is_open, authorized=key_valid):
                yield e
        finally:
            slot.release()

    return EventSourceResponse(
        events(),
        ping=SSE_PING_S,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),  # a stream never started frees its slot too
    )


@router.get(
    "/jobs/{job_id}/audit/verify",
    response_model=AuditVerdict,
    summary="Verify the audit log: its hash chain, its head, and the rows it references",
    description="Recomputes every event's hash from seq 1 (`hash = sha256(prev_hash + canonical JSON)`, see "
    "the README), compares the last with the head kept on the job, checks the heads the job's documents "
    "recorded, and recomputes the sha256 of every long value the log references (`$ref`) that still exists. "
    "`intact: false` names the first bad seq and why. `quire audit verify` gives the same verdict.",
    responses={404: ERRORS[404]},
)
async def verify_audit(job: OwnJobDep, db: DbDep, settings: SettingsDep) -> AuditVerdict:
    verdict = await logreader.verify(db, job.id, settings.audit_public_keys())
    if verdict is None:
        raise HTTPException(404, f"no job {str(job.id)!r}")
    return AuditVerdict(job_id=str(job.id), **verdict.__dict__)


@router.get(
    "/jobs/{job_id}/audit/proof",
    response_model=InclusionProof,
    summary="Prove one event is in the log: its Merkle inclusion proof against a signed checkpoint",
    description="Event `seq`, the log's latest signed checkpoint and the Merkle path from the event's leaf "
    "(its hash) to the checkpoint's root (RFC 9162 hashing). Anyone with the operator's public key checks it "
    "offline (`quire audit verify --proof FILE --key audit.pub`), without the rest of the log. 409 while no "
    "checkpoint covers the event yet (one is signed at the end of every step).",
    responses={
        404: ERRORS[404],
        409: {**ERRORS[404], "description": "no signed checkpoint covers the event yet"},
        422: ERRORS[422],
    },
)
async def prove_event(
    job: OwnJobDep, db: DbDep, seq: Annotated[int, Query(ge=1, le=MAX_SEQ, description="the event's seq")]
) -> InclusionProof:
    if seq > job.audit_seq:
        raise HTTPException(404, f"job {job.id} has no event {seq} (its log ends at seq {job.audit_seq})")
    try:
        return InclusionProof(**await logreader.inclusion(db, job.id, seq))
    except logreader.NoCheckpoint as exc:
        raise HTTPException(409, str(exc)) from None


@router.get(
    "/jobs/{job_id}/audit/consistency",
    response_model=ConsistencyProof,
    summary="Prove a later signed checkpoint extends an earlier one (nothing before it was changed)",
    description="`old` and `new` are tree sizes of two of the log's checkpoints (a download lists them; the "
    "larger is the later). "
    "`quire audit verify --proof FILE --key audit.pub` checks it offline.",
    responses={404: ERRORS[404], 422: ERRORS[422]},
)
async def prove_consistency(
    job: OwnJobDep,
    db: DbDep,
    old: Annotated[int, Query(ge=1, le=MAX_SEQ, description="the earlier checkpoint's tree size")],
    new: Annotated[int, Query(ge=1, le=MAX_SEQ, description="the later checkpoint's tree size")],
) -> ConsistencyProof:
    old, new = min(old, new), max(old, new)  # the later one extends the earlier, whichever is named first
    try:
        return ConsistencyProof(**await logreader.consistency(db, job.id, old, new))
    except logreader.NoCheckpoint as exc:
        raise HTTPException(404, str(exc)) from None


@router.post(
    "/jobs/{job_id}/views",
    status_code=204,
    summary="Report a view of the job's page (recorded in its audit log with user, time, IP, user agent)",
    description="The job page calls this once each time it is opened, before it reads the log.",
    responses={404: ERRORS[404]},
)
async def report_view(request: Request, job: OwnJobDep, who: CallerDep, db: DbDep) -> Response:
    await actions.record(request, db, who, job, "view", page=f"/jobs/{job.id}")
    return Response(status_code=204)
