"""/v1 audit routes: a job's log as JSON, NDJSON or TXT (paged or whole), and its live stream."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from sse_starlette.sse import EventSourceResponse

from api import live
from api.deps import ClientDep, DbDep, KeyStillValidDep, ListenerDep, OwnJobDep
from api.intake import SEQ_PATTERN, last_event_id
from api.schemas import COMMON, ERRORS, SSE_EVENT, AuditPage
from core.audit import EventKind
from services import auditlog
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
    job: OwnJobDep,
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
    body = auditlog.render(db, job.id, after, limit, format, list(kind) if kind else None)
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
    },
)
async def stream_audit(
    job: OwnJobDep,
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

    async def is_open() -> bool | None:
        return await workflow_open(client, wid)

    return EventSourceResponse(
        live.stream(db, listener, job.id, start, workflow_open=is_open, authorized=key_valid),
        ping=SSE_PING_S,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
