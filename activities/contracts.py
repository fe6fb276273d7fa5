"""What crosses Temporal into and out of the activities: ids and small numbers only, never
document text (payload limit 2 MiB). Workflows import these to call the steps by typed reference."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobRef:
    job_id: str


@dataclass
class PlanResult:
    # The units (chapters, or the book when it is only sections) in document order, each with
    # the node that must be expanded before it starts (its part, at depth 3; else 0).
    units: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    parallelism: int = 1
    # Where a resumed run picks up: the units complete so far (they complete in order) and the
    # last finalize round that has a stored length check (0 if none).
    units_done: int = 0
    round: int = 0
    # The job asked to stop after planning until its plan is approved (options.review_plan).
    review: bool = False
    target_words: int = 0


@dataclass
class NodeRef:
    job_id: str
    node_id: int


@dataclass
class SectionChunks:
    section_id: int
    chunk_ids: list[int] = field(default_factory=list)


@dataclass
class UnitChunks:
    sections: list[SectionChunks] = field(default_factory=list)


@dataclass
class ChunkRef:
    job_id: str
    chunk_id: int


@dataclass
class ChunkDone:
    words: int
    min_words: int
    attempts: int
    passed: bool  # False: the model stalled; finalize tops the document up


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
