"""Request and response models of the author's loop (``api.loop``): plan review, node actions,
edits, document versions and their diff, the book map, estimates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.intake import TEXT_PATTERN, text_problem
from core.review import WholeNumber

MAX_INSTRUCTION = 2000
MAX_NODE_TEXT = 2_000_000  # characters: a part of a 500,000-word book


def _text_ok(v: str) -> str:
    problems = text_problem(v, "text", [])
    if problems:
        raise ValueError(problems[0]["msg"])
    return v


def Text(max_length: int, min_length: int = 0, description: str = "") -> Any:  # noqa: N802 - a type
    return Annotated[
        str,
        Field(
            min_length=min_length,
            max_length=max_length,
            description=description,
            json_schema_extra={"pattern": TEXT_PATTERN},
        ),
        AfterValidator(_text_ok),
    ]


Instruction = Text(MAX_INSTRUCTION, 1, "what to do differently: 'make the ending darker', 'less jargon'")
NodeMarkdown = Text(MAX_NODE_TEXT, 1, "the node's new text, Markdown without headings (GET the node for its text)")
Quote = Text(20_000, 1, "the selected words, exactly as in the node's text (found once)")


class Regenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: Instruction | None = None


class NodeText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: NodeMarkdown


class Rewrite(BaseModel):
    """A selection of the node's text (as ``GET .../nodes/{id}`` returns it): its quoted words, or
    its offsets (characters, end excluded), and what to do with it."""

    model_config = ConfigDict(extra="forbid")
    instruction: Instruction
    quote: Quote | None = None
    start: WholeNumber | None = Field(default=None, ge=0, le=MAX_NODE_TEXT)
    end: WholeNumber | None = Field(default=None, ge=1, le=MAX_NODE_TEXT)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: WholeNumber = Field(ge=0, le=2**31 - 1, description="0: as the job wrote it; n: as edit n left it")


class OutlineItemView(BaseModel):
    node: int
    level: str
    title: str
    summary: str
    key_points: list[str]
    budget_words: int


class PlanVersionView(BaseModel):
    version: int
    status: Literal["planned", "proposed", "approved", "rejected"]
    by: str | None = Field(description="who proposed it (null: the planner)")
    changes: list[dict[str, Any]] = Field(description="what changed from the version before: field, before, after")
    reason: str | None = Field(description="why the job's workflow refused it")
    created_at: str
    decided_at: str | None


class PlanView(BaseModel):
    job_id: str
    review_plan: bool = Field(description="the job asked to stop after planning (options.review_plan)")
    awaiting_review: bool = Field(description="the job waits for this plan to be approved (POST .../plan)")
    target_words: int
    max_words: int
    items: list[OutlineItemView] = Field(description="the top-level nodes, in order")
    versions: list[PlanVersionView]


class PlanApplied(BaseModel):
    version: int = Field(description="the plan version the job's workflow applied (its Update's answer)")
    changes: list[dict[str, Any]]
    items: list[dict[str, Any]]


class EditView(BaseModel):
    number: int
    kind: Literal["regenerate", "edit", "rewrite", "rollback"]
    node: int
    by: str
    status: Literal["running", "done", "failed"]
    instruction: str | None
    selection: str | None = Field(description="the selected text a rewrite replaced")
    to: int | None = Field(description="the version a rollback went back to")
    document_version: int | None = Field(description="the document version it made")
    chunks: int = Field(description="chunks it gave a new version")
    flagged: int = Field(description="later passages flagged as relying on what it changed")
    llm_calls: int | None
    tokens_in: int | None
    tokens_out: int | None
    error_code: str | None
    reason: str | None
    created_at: str
    completed_at: str | None
    workflow_id: str


class EditStarted(BaseModel):
    number: int
    kind: str
    node: int
    status: Literal["running"]
    workflow_id: str
    link: str = Field(description="GET it for its progress and outcome")


class NodeView(BaseModel):
    node: int
    level: str
    title: str | None
    budget_words: int
    words: int
    chunks: list[dict[str, Any]]
    written: bool
    text: str = Field(description="its chunks' latest versions, a blank line apart: what PUT .../text replaces")
    locked: bool
    locked_by: str | None
    locked_at: str | None
    lock: dict[str, Any] | None = Field(description="the lock that covers it (its own, or a node above or inside it)")
    versions: list[int] = Field(description="what it can be rolled back to: 0 (as the job wrote it) and edits")
    edits: list[EditView]


class LockView(BaseModel):
    node: int
    locked: bool
    locked_by: str | None
    locked_at: str | None


class DocumentVersion(BaseModel):
    version: int
    words: int
    sha256: str
    created_at: str
    audit_seq: int | None
    target_met: bool
    edit: EditView | None = Field(description="the edit that made it (null: the job)")


class Versions(BaseModel):
    job_id: str
    items: list[DocumentVersion]


class Diff(BaseModel):
    job_id: str
    from_: int = Field(alias="from")
    to: int
    words: dict[str, int]
    lines_added: int
    lines_removed: int
    diff: str = Field(description="unified diff of the two versions' Markdown, line by line")

    model_config = ConfigDict(populate_by_name=True)


class Tile(BaseModel):
    node: int
    level: str
    title: str
    part: int | None
    part_title: str | None
    state: Literal["planned", "writing", "done", "locked", "regenerated"]
    words: int
    budget_words: int
    chunks_done: int
    chunks_total: int
    findings: int
    open_findings: int
    started_at: str | None
    ended_at: str | None


class BookMap(BaseModel):
    job_id: str
    status: str
    started_at: str | None
    completed_at: str | None
    now: str
    tiles: list[Tile]


class Range(BaseModel):
    expected: int
    low: int
    high: int


class Estimate(BaseModel):
    model: str
    basis: Literal["history", "defaults"] = Field(description="learnt from finished jobs of the model, or defaults")
    jobs_measured: int
    based_on: str = Field(description="what the figures and their ranges come from, in words")
    sigma: dict[str, float] = Field(
        description="per figure, the spread of ln(actual / expected): the range is expected x exp(+-1.645 sigma)"
    )
    compliance: float | None = Field(description="how much of what it is asked for the model writes (stored attempts)")
    shape: dict[str, int]
    calls: Range
    tokens_in: Range
    tokens_out: Range
    wall_seconds: Range
    cost: dict[str, Any] = Field(description="micro-dollars and dollars by QUIRE_PRICES (priced: false without)")
    by_purpose: dict[str, dict[str, float]]
    memory_share: float = Field(description="the story memory's share of the tokens (memory, judge, summary, repair)")


class JobEstimate(BaseModel):
    job_id: str
    estimate: Estimate = Field(description="as it would have been made when the job was submitted")
    actual: dict[str, Any] = Field(description="what the job used, up to its end")
