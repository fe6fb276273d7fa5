"""Response models of the /v1 API: what /docs shows and what clients (CLI, web pages) rely on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.spec import JobKind, JobStatus


class Links(BaseModel):
    self: str
    output: str
    audit: str
    stream: str
    cancel: str
    page: str = Field(description="the job's web page")


def links(job_id: str) -> Links:
    return Links(
        self=f"/v1/jobs/{job_id}",
        output=f"/v1/jobs/{job_id}/output",
        audit=f"/v1/jobs/{job_id}/audit",
        stream=f"/v1/jobs/{job_id}/audit/stream",
        cancel=f"/v1/jobs/{job_id}/cancel",
        page=f"/jobs/{job_id}",
    )


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    workflow_id: str
    created: bool = Field(description="false when an Idempotency-Key named an existing job")
    links: Links


class Progress(BaseModel):
    units_done: int = Field(description="chapters complete (their seams validated); the book, when it has none")
    units_total: int
    sections_done: int
    sections_total: int
    chunks_done: int
    chunks_total: int
    current_step: str | None
    finalize_rounds: int


class Tokens(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    in_: int = Field(alias="in", description="prompt tokens over all LLM calls")
    out: int = Field(description="completion tokens over all LLM calls")
    llm_calls: int


class JobView(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    title: str | None
    target_words: int
    max_words: int
    words_written: int = Field(description="words so far: the output's count once it exists, else the chunks' sum")
    output_words: int | None = Field(description="the finished output's word count (null until it exists)")
    target_met: bool
    progress: Progress
    error_code: str | None
    failure_reason: str | None
    model: str
    options: dict[str, Any]
    workflow_id: str
    created_at: str
    started_at: str | None
    completed_at: str | None
    elapsed_seconds: float
    tokens: Tokens
    audit_events: int = Field(description="the job's last audit seq (the log holds seqs 1..audit_events)")
    links: Links


class HistoryItem(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    title: str | None
    target_words: int
    max_words: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    error_code: str | None
    failure_reason: str | None
    words_written: int
    output_words: int | None
    target_met: bool
    sections_total: int
    chunks_total: int
    chunks_done: int
    audit_events: int
    llm_calls: int
    tokens_in: int
    tokens_out: int
    links: Links


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class Cancelling(BaseModel):
    id: str
    status: Literal["cancelling"]


class AuditEvent(BaseModel):
    seq: int = Field(description="per job, gap-free, in commit order")
    ts: str = Field(description="UTC, microseconds: 2026-11-23T14:05:30.271690Z (hashed exactly as written)")
    kind: str = Field(
        description="sql, row, llm, chunk, length, activity, workflow, job, plan, stitch, error, user ..."
    )
    action: str
    table_name: str | None
    row_id: str | None
    sql_text: str | None = Field(description="the statement, parameters separate (sql events)")
    data: dict[str, Any] = Field(
        description="a value too long to inline is {$ref: 'table.column#id', length, sha256, head}; the "
        "events of a transaction that rolled back carry rolled_back: true"
    )
    prev_hash: str = Field(description="the hash of seq - 1 (64 zeros for seq 1)")
    hash: str = Field(
        description="sha256(prev_hash + RFC 8785 JSON of seq, ts, kind, action, table_name, row_id, "
        "sql_text, data), hex"
    )


class AuditPage(BaseModel):
    """``format=json``. NDJSON is one AuditEvent per line; TXT is described at ``api.audit.txt_line``."""

    job_id: str
    events: list[AuditEvent]
    next_after: int | None = Field(description="with ?limit=: pass as ?after= for the next page; null at the end")
    head_seq: int | None = Field(None, description="the last seq sent (absent when filtered by kind)")
    head_hash: str | None = Field(None, description="the hash of that event: the head of the chain sent")


class AuditVerdict(BaseModel):
    """``GET /v1/jobs/{id}/audit/verify``: the log's hash chain recomputed from seq 1 and compared
    with the head kept on the job, the heads its documents recorded and the rows it references."""

    job_id: str
    intact: bool
    events: int = Field(description="events whose hashes were recomputed (seq 1..events)")
    head_seq: int
    head_hash: str = Field(description="the recomputed head (the hash of the last event verified)")
    first_bad_seq: int | None = Field(description="the first seq that fails, when not intact")
    reason: str | None = Field(description="what fails there")
    references_checked: int = Field(description="referenced long values whose sha256 was recomputed")
    references_gone: int = Field(description="referenced rows that no longer exist")
    anchors_checked: int = Field(description="documents whose recorded head was found in the chain")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str
    temporal: str
    listener: str = Field(description="the LISTEN connection that wakes live streams")


class Message(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrors(BaseModel):
    detail: list[FieldError]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing, invalid or revoked API key"},
    404: {"model": Message, "description": "no such job for this caller (another user's job answers the same)"},
    422: {"model": ValidationErrors, "description": "invalid input, each error with its field and message"},
}
