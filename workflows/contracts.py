"""What crosses Temporal: ids and small numbers only, never document text (payload limit 2 MiB)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobInput:
    job_id: str
    # Where a continued-as-new run picks up; a fresh job starts at "plan".
    stage: str = "plan"
    next_section: int = 0
    sections_total: int = 0
    round: int = 0


@dataclass
class SectionInput:
    job_id: str
    section: int  # the section's ordinal within the job
    label: str
    start_index: int = 0


@dataclass
class JobRef:
    job_id: str


@dataclass
class PlanResult:
    sections: int
    chunks: int
    max_attempts_per_chunk: int
    max_rounds: int
    max_wall_seconds: int


@dataclass
class SectionChunks:
    chunk_ids: list[int] = field(default_factory=list)


@dataclass
class ChunkRef:
    job_id: str
    chunk_id: int
    # The attempt this call makes (write = 1, extends = 2, 3, ...): a retried activity that
    # finds the attempt already stored returns it instead of writing it again.
    attempt_no: int = 1


@dataclass
class ChunkStatus:
    words: int
    min_words: int
    attempts: int
    passed: bool
    # Set when the model stops adding text: further extends are pointless.
    stalled: bool = False


@dataclass
class SectionRef:
    job_id: str
    section: int  # ordinal


@dataclass
class FinalizeInput:
    job_id: str
    round: int
    elapsed_seconds: int


@dataclass
class FinalizeResult:
    met: bool
    words: int
    target_words: int
    # When not met: give up (with the reason already stored) or top up with a new section.
    give_up: bool = False
    error_code: str | None = None
    reason: str | None = None


@dataclass
class ContinuationInput:
    job_id: str
    round: int


@dataclass
class FailInput:
    job_id: str
    error_code: str
    reason: str
    status: str = "failed"


@dataclass
class Progress:
    stage: str
    sections_done: int
    sections_total: int
    round: int
    current: str
