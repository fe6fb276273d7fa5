"""What crosses Temporal into and out of the activities: ids and small numbers only, never
document text (payload limit 2 MiB). Workflows import these to call the steps by typed reference."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobRef:
    job_id: str


@dataclass
class PlanResult:
    sections: int


@dataclass
class SectionRef:
    job_id: str
    section: int  # the section's ordinal within the job


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
class RoundRef:
    """A finalize round (0 before any top-up) or the top-up that follows it."""

    job_id: str
    round: int


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
class FailInput:
    job_id: str
    error_code: str
    reason: str
    status: str = "failed"
