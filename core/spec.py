"""What a job is: its kinds, statuses, error codes, bounds and options, each defined once.

The API validates requests with ``JobSpec``, the database's CHECK constraints are built from the
same constants, the CLI's argument types and the activities' options read them from here.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.plan import clean_title
from core.text import count_words
from core.webhooks import url_problem

JobKind = Literal["generate", "rewrite"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_KINDS: tuple[str, ...] = get_args(JobKind)
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")

MIN_TARGET_WORDS = 1
MAX_TARGET_WORDS = 500_000
TARGET_WORDS_RULE = f"an integer from {MIN_TARGET_WORDS} to {MAX_TARGET_WORDS:,}"
MAX_PROMPT_CHARS = 20_000
MAX_URL_CHARS = 2_000
# Chapters of one job written at once. 100 is a 500,000-word book's every chapter: each is a child
# workflow holding no database connection while its model call runs (README: Chapters in parallel).
MAX_PARALLELISM = 100
PARALLELISM_RULE = f"an integer from 1 to {MAX_PARALLELISM} (chapters written at the same time)"


class ErrorCode(StrEnum):
    """Why a job did not succeed: stored on the job, shown by the API and the CLI."""

    LENGTH_NOT_MET = "E_LENGTH_NOT_MET"
    BUDGET_EXHAUSTED = "E_BUDGET_EXHAUSTED"
    LLM_UNAVAILABLE = "E_LLM_UNAVAILABLE"
    INPUT_INVALID = "E_INPUT_INVALID"
    CANCELLED = "E_CANCELLED"
    INTERNAL = "E_INTERNAL"
    QUOTA_EXCEEDED = "E_QUOTA_EXCEEDED"
    CONTINUITY = "E_CONTINUITY"


ERROR_CODES: tuple[str, ...] = tuple(c.value for c in ErrorCode)


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """``column IN ('a', 'b')``: a CHECK constraint over one of the vocabularies above."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class JobOptions(BaseModel):
    """Per-job knobs; every one has a sane default."""

    model_config = ConfigDict(extra="forbid")
    max_overshoot: float = Field(default=1.1, ge=1.0, le=3.0, description="output stays <= target x this")
    chunk_words: int = Field(default=700, ge=50, le=3000, description="words per chunk (one model call)")
    max_attempts_per_chunk: int = Field(default=8, ge=1, le=20, description="write + extends per chunk")
    max_rounds: int = Field(default=8, ge=0, le=50, description="finalize top-up rounds before failing")
    max_tokens: int | None = Field(default=None, ge=1, description="stop when the job has used this many tokens")
    max_wall_seconds: int = Field(default=7 * 24 * 3600, ge=1, description="stop after this long")
    stitch_repairs_with_model: bool = Field(default=True, description="bridge broken seams with the model")
    parallelism: int = Field(default=6, ge=1, le=MAX_PARALLELISM, description="chapters written at the same time")
    review_plan: bool = Field(
        default=False,
        description="stop after planning until the plan is approved, as is or edited (POST /v1/jobs/{id}/plan)",
    )
    continuity: Literal["flag", "strict"] = Field(
        default="flag",
        description="a continuity finding that cannot be repaired: 'flag' reports it open in the coherence "
        "report and the job goes on; 'strict' fails the job with E_CONTINUITY",
    )


class JobSpec(BaseModel):
    """A job as submitted: what to write, how long, with which options."""

    model_config = ConfigDict(extra="forbid")
    kind: JobKind
    target_words: int = Field(ge=MIN_TARGET_WORDS, le=MAX_TARGET_WORDS, strict=True)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    input_text: str | None = None
    title: str | None = Field(default=None, max_length=500)
    model: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="POSTed a signed event when the job ends (default: your webhook, PUT /v1/webhook)",
    )
    options: JobOptions = Field(default_factory=lambda: JobOptions())

    @field_validator("title")
    @classmethod
    def _title(cls, v: str | None) -> str | None:
        # Stored as the document's title, under a heading marker Quire writes: no Markdown of its own.
        return (clean_title(v) or None) if v is not None else None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        why = None if v is None else url_problem(v)
        if why is not None:
            raise ValueError(f"webhook_url {why}")
        return v

    @model_validator(mode="after")
    def _kind_needs(self) -> JobSpec:
        if self.kind == "generate" and not (self.prompt and self.prompt.strip()):
            raise ValueError("kind 'generate' needs a non-empty 'prompt'")
        if self.kind == "rewrite":
            if not (self.input_text and self.input_text.strip()):
                raise ValueError("kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)")
            if count_words(self.input_text) > MAX_TARGET_WORDS:
                raise ValueError(f"input_text has more than {MAX_TARGET_WORDS:,} words")
        return self

    @property
    def max_words(self) -> int:
        return max_words(self.target_words, self.options.max_overshoot)


def max_words(target_words: int, overshoot: float) -> int:
    """The most words an output may have: the target times the allowed overshoot."""
    return max(target_words, math.floor(target_words * overshoot))


# What a rewrite's input may be, and how a file that is something else is named when refused.
INPUT_ACCEPTED = "accepted: a .txt or .md file of UTF-8 text"
INPUT_SUFFIXES = (".txt", ".md", ".markdown")
_SIGNATURES = (
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (a .docx, .epub or .odt document is one)"),
    (b"\xd0\xcf\x11\xe0", "a Microsoft Office document"),
    (b"{\\rtf", "an RTF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)


def input_problem(data: bytes, name: str) -> tuple[str, str] | None:
    """Why a file cannot be a rewrite's input: (error type, a message naming the file and what is
    accepted), or None for UTF-8 text in a .txt or .md file. One rule for the API and the CLI."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return "file_type", f"{name} is {kind}, not text; {INPUT_ACCEPTED}"
    if not name.lower().endswith(INPUT_SUFFIXES):
        return "file_type", f"{name} is not a .txt or .md file; {INPUT_ACCEPTED}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        return "not_utf8", f"{name} is not UTF-8 text (byte 0x{byte} at offset {exc.start}); {INPUT_ACCEPTED}"
    if (at := text.find("\x00")) >= 0:
        return "binary", f"{name} is binary, not text (a NUL byte at offset {at}); {INPUT_ACCEPTED}"
    return None
