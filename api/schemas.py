"""Response models of the /v1 API: what /docs shows and what clients (CLI, web pages) rely on (the
audit log's own: api/audit_schemas.py; the author's loop's: api/loop_schemas.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.audit_schemas import AuditEvent, StreamEnd
from core.spec import JobKind, JobStatus
from core.webhooks import URL_PATTERN as WEBHOOK_URL_PATTERN


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


class Cost(BaseModel):
    micro_usd: int = Field(description="US micro-dollars of the priced model calls (QUIRE_PRICES)")
    usd: str = Field(description="the same in dollars, to read: 0.001234")
    unpriced_calls: int = Field(description="calls whose model has no price: not in micro_usd")


class WordAccountView(BaseModel):
    """What the job's words are made of: a succeeded job says how it got there."""

    words_model: int = Field(
        description="words the model wrote in its answers for the document (chunks, repairs, bridges), before the gate"
    )
    words_cut: int = Field(description="of those, words cut and never counted: words_junk + words_unused")
    words_junk: int = Field(description="cut as junk: the gate's rules, repeats of the document, sentence fragments")
    words_unused: int = Field(
        description="cut as answers not used: a repair's or bridge's (not_used), an edit's or a retry's (out_of_scope)"
    )
    cut_by_rule: dict[str, int] = Field(description="words cut by each rule (echo, repeat, meta, number_run, ...)")
    chunks_short: int = Field(
        description="chunks whose last length check failed: accepted short after their attempts ran out, or left "
        "short by a repair or an edit (the document made up by top-ups)"
    )
    top_up_rounds: int = Field(description="sections finalize added because the document was short")
    top_up_words: int = Field(description="words of those top-up sections")
    trimmed_words: int = Field(description="words cut from chunks over their maximum when they were committed")
    final_words_before: int = Field(description="the document's words before finalize cut its end (0: it did not)")
    final_trimmed: int = Field(description="words finalize cut from the document's end, down to max_words")
    final_trimmed_at: str = Field(description="where that cut began: the chunk and the last words kept")
    summary: str = Field(description="the same in one line")


class JobView(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    title: str | None
    target_words: int
    max_words: int
    words_written: int = Field(description="words so far: the output's count once it exists, else the done chunks' sum")
    output_words: int | None = Field(description="the finished output's word count (null until it exists)")
    target_met: bool
    progress: Progress
    account: WordAccountView
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
    cost: Cost = Field(description="this job's model calls")
    user_cost: Cost = Field(description="every model call of the job's owner (deleted jobs' too)")
    webhook_url: str | None = Field(description="where the job's end is POSTed, signed (null: nowhere)")
    audit_events: int = Field(description="the job's last audit seq (the log holds seqs 1..audit_events)")
    audit_alarm: str | None = Field(
        None, description="why a checkpoint of the log was refused (a witness or the signer found a rewrite)"
    )
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
    cost_micro_usd: int = Field(description="US micro-dollars of the job's priced model calls")
    links: Links


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    user_cost: Cost = Field(description="every model call of the caller (deleted jobs' too)")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class Cancelling(BaseModel):
    id: str
    status: Literal["cancelling", "cancelled"] = Field(
        description="cancelling: its workflow stops at its next step; cancelled: its workflow had ended "
        "(or never started) without recording it, so the job is cancelled at once"
    )


class DraftPiece(BaseModel):
    key: str = Field(description='"title", "n<node>" (a heading) or "c<ordinal>" (a chunk): stable while the job runs')
    heading: int = Field(description="1 = #, 2 = ##, ...; 0 for a chunk's text")
    chunk: int | None = Field(description="the chunk's ordinal (0-based) for a chunk's text")
    text: str | None = Field(description="Markdown; null for a chunk unchanged since `after` (the reader has it)")


class Draft(BaseModel):
    """The document so far: its pieces in order, joined by a blank line they are the Markdown."""

    job_id: str
    status: JobStatus
    seq: int = Field(description="the audit log's head when read: pass it as ?after= to get only what changed")
    complete: bool = Field(description="the job has ended: the output as stored (failed: the partial document)")
    pieces: list[DraftPiece]


class Resuming(BaseModel):
    id: str
    status: Literal["running"]
    workflow_id: str = Field(description="the new run's workflow: job-<id>-r<n>")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = Field(description="the first check that is not ok, as <check>_<state>; null when ready")
    database: Literal["ok", "unreachable", "error"]
    temporal: Literal["ok", "unreachable", "error"]
    listener: Literal["ok", "connecting"] = Field(description="the LISTEN connection that wakes live streams")


class RotatedKey(BaseModel):
    api_key: str = Field(description="the new key: shown here only, stored as a hash")
    prefix: str = Field(description="the new key's public handle (as `quire user keys` lists it)")
    revoked_prefix: str = Field(description="the handle of the key this request was made with, now revoked")


class WebhookView(BaseModel):
    url: str | None = Field(description="the default webhook of your jobs (a job's own webhook_url wins)")
    secret_set: bool = Field(description="whether a signing secret exists (it is never shown again)")
    secret_created_at: str | None


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(
        max_length=2000,
        description="an http(s) URL, or null to have none",
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
    )


class WebhookSet(WebhookView):
    secret: str | None = Field(
        description="a new signing secret when you had none (shown here only; it is stored sealed)"
    )


class WebhookSecret(BaseModel):
    secret: str = Field(description="whsec_...: the new signing secret, shown here only; the old one stops at once")
    created_at: str


class QuotaView(BaseModel):
    tokens_per_day: int | None = Field(description="null: no limit")
    concurrent_jobs: int | None
    words_per_month: int | None


class UsageView(BaseModel):
    quotas: QuotaView
    tokens_today: int = Field(description="tokens of your model calls since 00:00 UTC")
    running_jobs: int = Field(description="your jobs queued or running")
    words_this_month: int = Field(description="target words of the jobs you submitted since the 1st (UTC)")
    cost: Cost


class Message(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrors(BaseModel):
    detail: list[FieldError]


def _error(description: str, schema: str = "Message", **headers: str) -> dict[str, Any]:
    """An error response as the spec says it: always JSON, whatever the route's own media type."""
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if headers:
        out["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return out


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("a malformed header (each says which)"),
    401: _error("missing, invalid or revoked API key", **{"WWW-Authenticate": "Bearer"}),
    404: _error("no such job for this caller (another user's job answers the same)"),
    413: _error("the request body or the document in it is larger than QUIRE_MAX_INPUT_BYTES allows"),
    415: _error("the body is neither application/json nor multipart/form-data"),
    422: _error("invalid input, each error with its field and message", "ValidationErrors"),
    429: _error("a quota of yours is used up: the message says which", **{"Retry-After": "seconds"}),
    500: _error("an internal error (the server log has the details)"),
    503: _error("the database or Temporal is unreachable: try again shortly", **{"Retry-After": "seconds"}),
}
# Every /v1 route can answer these.
COMMON: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in (401, 500, 503)}


def error_schemas() -> dict[str, Any]:
    """The components the error responses above refer to (app.py adds them to the spec)."""
    out = ValidationErrors.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = out.pop("$defs", {})
    return {
        "ValidationErrors": out,
        **defs,
        "Message": Message.model_json_schema(),
        "StreamEnd": StreamEnd.model_json_schema(),
        "AuditEvent": AuditEvent.model_json_schema(),
    }


def tidy_parameters(spec: dict[str, Any]) -> None:
    """An optional header or query parameter is absent or a value, never null: drop the null branch
    FastAPI writes for ``X | None`` (a fuzzer would send the text "null", which is not a value)."""
    for operation in (op for path in spec.get("paths", {}).values() for op in path.values()):
        for param in operation.get("parameters", []):
            schema = param.get("schema", {})
            branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
            if param.get("in") in ("header", "query") and len(branches) == 1 and len(schema["anyOf"]) == 2:
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
                param["schema"] = {**branches[0], **rest}


class ContradictedEntry(BaseModel):
    entry_id: int | None = Field(description="the ledger entry contradicted (null: a rule that needs none)")
    chunk: int | None = Field(description="the chunk (0-based ordinal) that established it; null: the plan")
    quote: str = Field(description="the sentence that established it")


class CoherenceFinding(BaseModel):
    id: int
    category: Literal["characters", "facts", "timeline", "plot", "style"]
    category_name: str = Field(description="ConStory-Bench's name of the category")
    subtype: str = Field(description="name_variant, name_spelling, attribute_changed, thread_reopened, ...")
    severity: Literal["minor", "major"]
    status: Literal["open", "repaired"]
    detector: str = Field(description="`rule:<name>` or `judge` (the model, in the memory call)")
    message: str
    where: Literal["chunk", "seam"] = Field(
        description="found when its chunk was accepted, or at a seam: its chapter's, or a broken one inside it"
    )
    chunk: int = Field(description="the chunk (0-based ordinal) it was found in; the page's #chunk-N is N = chunk + 1")
    chapter: str | None
    version: int | None = Field(description="the chunk version it was found in")
    quote: str = Field(description="the words of that version")
    contradicts: ContradictedEntry
    repair_version: int | None = Field(description="the version that repaired it (the old one is kept)")
    tried: str | None = Field(default=None, description="open after repair attempts: what was tried, why not repaired")
    llm_call_id: int | None = Field(description="the model call that found it (judge findings)")
    audit_seq: int | None = Field(description="the seq of the audit event that recorded it")
    seam_check_id: int | None
    edit: int | None = Field(default=None, description="the author's edit whose checks found it (its id)")


class CoherenceCategory(BaseModel):
    name: str
    found: int
    per_10k_words: float
    open: int


class CoherenceReport(BaseModel):
    job_id: str
    summary: str
    words: int
    found: int
    repaired: int
    open: int
    per_10k_words: float
    open_per_10k_words: float
    by_category: dict[str, CoherenceCategory]
    ledger: dict[str, int] = Field(description="entries (current versions) and distinct entities")
    states: dict[str, float] = Field(description="memory states written by the model vs the fallback")
    seams: dict[str, int] = Field(description="seams by status: validated, repaired, flagged, unchecked")
    unchecked: dict[str, Any] = Field(
        default_factory=dict,
        description="passages (chunks) and seams a check could not answer for, counted apart, with their reasons",
    )
    judged_by: list[str] = Field(default_factory=list, description="the model(s) that answered the memory and judge")
    checked: str = Field(default="", description="what the checks could do, in words (e.g. names only, and why)")
    relied_on_changed: int = Field(
        default=0,
        description="open findings of passages that relied on what an author's edit changed (relied_on_changed)",
    )
    broken_seams: int = Field(
        default=0,
        description="open broken_seam findings: a passage that stops mid-sentence where the next begins, which "
        "the stitch could not bridge (what was tried in the finding)",
    )
    coverage: dict[str, int] = Field(
        default_factory=dict,
        description="an author's instructions and key points checked against the text, by last verdict: checked, "
        "covered, missing (each an open key_point_not_covered or instruction_not_followed finding), unchecked "
        "(no valid answer from the judge)",
    )
    items: list[CoherenceFinding]
