"""The manuscript's tables, the writing itself: the plan tree, chunks and their attempts and versions, the
coherence chain and its seams, length checks and stitch results.

Rules the models cannot express (the chain, immutability, completion only after a validated
seam) are triggers in ``db/ddl.py``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.spec import sql_in
from db import coverage, loop  # noqa: F401 - the edits that seam checks and findings name; coverage checks
from db.models import Base, ts_column

NODE_LEVELS = ("book", "part", "chapter", "section")
# pending: laid out; expanded: its children planned; writing; written: its chunks done (a unit
# awaiting its seam); done.
NODE_STATUSES = ("pending", "expanded", "writing", "written", "done")
STATE_KINDS = ("root", "chunk", "handoff")
# Who made a state's memory: the plan (the root), the model's memory call, the deterministic
# extractor when the model's answers were invalid, or derived (a handoff, from the plan and the ledger).
STATE_SOURCES = ("plan", "model", "fallback", "derived")
# Four are the author's (db.loop.Edit): a node regenerated, edited by hand, a selection rewritten, a
# node rolled back to an earlier version; coverage_repair: a paragraph rewritten to carry an
# instruction or a key point the text missed (activities.coverage).
VERSION_REASONS = (
    "written", "trim", "stitch", "seam_repair", "continuity_repair", "regenerate", "edit", "rewrite", "rollback",
    "coverage_repair",
)  # fmt: skip
# write, extend: a chunk's answers; rewrite: an answer for a selection of it (activities.selection);
# repair: a paragraph rewritten by a coverage retry; trim: rows of before 0002.
ATTEMPT_KINDS = ("write", "extend", "trim", "rewrite", "repair")
SEAM_STATUSES = ("validated", "repaired", "flagged")


class PlanNode(Base):
    """A node of a job's plan tree: the book, a part, a chapter or a section (sections own chunks).

    Laid out with its budget when the job is planned; its title, purpose, key points and the
    entities it introduces or relies on are planned when its parent is expanded. ``position``
    is document order; no two headings of a job are the same (``heading_key``)."""

    __tablename__ = "plan_nodes"
    __table_args__ = (
        UniqueConstraint("job_id", "position"),
        UniqueConstraint("id", "job_id"),
        UniqueConstraint("job_id", "heading_key"),
        ForeignKeyConstraint(["parent_id", "job_id"], ["plan_nodes.id", "plan_nodes.job_id"], ondelete="CASCADE"),
        CheckConstraint(sql_in("level", NODE_LEVELS), name="level"),
        CheckConstraint(sql_in("status", NODE_STATUSES), name="status"),
        CheckConstraint("budget_words >= 1", name="budget"),
        Index("ix_plan_nodes_parent_id", "parent_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(Text, server_default="section")
    depth: Mapped[int] = mapped_column(Integer, server_default="1")  # the book is 0; its heading is #
    ordinal: Mapped[int] = mapped_column(Integer)  # among its siblings
    position: Mapped[int] = mapped_column(Integer)  # in document order, among all the job's nodes
    title: Mapped[str | None] = mapped_column(Text)
    heading_key: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text, server_default="")
    key_points: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    introduces: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    relies_on: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    budget_words: Mapped[int] = mapped_column(Integer)
    # Top-up sections added by finalize continue the document: no heading of their own.
    is_continuation: Mapped[bool] = mapped_column(Boolean, server_default="false")
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    # A node its author locked: no regeneration or repair touches it or anything in it.
    locked_at: Mapped[datetime | None] = ts_column()
    locked_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = ts_column(default=True)
    completed_at: Mapped[datetime | None] = ts_column()


class CoherenceState(Base):
    """One link of the job's coherence chain, immutable once written. ``kind``: the plan's
    ``root`` (ordinal 0); the state after chunk k-1 (``chunk``, ordinal k, derived from a
    version of that chunk); or a ``handoff`` derived from the plan, for a chapter written before
    its predecessor has finished (ordinal = its first chunk's)."""

    __tablename__ = "coherence_states"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "ordinal"),
        UniqueConstraint("id", "job_id"),
        ForeignKeyConstraint(["parent_id", "job_id"], ["coherence_states.id", "coherence_states.job_id"]),
        CheckConstraint(sql_in("kind", STATE_KINDS), name="kind"),
        CheckConstraint(sql_in("source", STATE_SOURCES), name="source"),
        CheckConstraint("(kind = 'chunk') = (parent_id IS NOT NULL)", name="only_chunk_states_have_parents"),
        CheckConstraint("kind <> 'root' OR ordinal = 0", name="root_is_first"),
        Index("ix_coherence_states_parent_id", "parent_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text, server_default="chunk")
    ordinal: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(BigInteger)
    # The chunk version a chunk state was derived from; the unit a handoff was made for.
    chunk_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("chunk_versions.id", ondelete="CASCADE", use_alter=True), index=True
    )
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"), index=True)
    summary: Mapped[str] = mapped_column(Text, server_default="")
    glossary: Mapped[dict[str, str]] = mapped_column(JSONB, server_default="{}")
    open_threads: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    delta: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    source: Mapped[str] = mapped_column(Text, server_default="derived")
    created_at: Mapped[datetime] = ts_column(default=True)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "ordinal"),
        UniqueConstraint("section_id", "index_in_section"),
        CheckConstraint("status IN ('pending','writing','done')", name="status"),
        CheckConstraint("status = 'pending' OR state_before_id IS NOT NULL", name="written_from_state"),
        CheckConstraint("status <> 'done' OR state_after_id IS NOT NULL", name="done_has_state_after"),
        CheckConstraint("max_words >= min_words AND min_words >= 1", name="bounds"),
        ForeignKeyConstraint(["state_before_id", "job_id"], ["coherence_states.id", "coherence_states.job_id"]),
        ForeignKeyConstraint(["state_after_id", "job_id"], ["coherence_states.id", "coherence_states.job_id"]),
        Index("ix_chunks_state_before_id", "state_before_id"),
        Index("ix_chunks_state_after_id", "state_after_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    section_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    # The node written as one strictly chained run (its chapter, the book, or a top-up section).
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    index_in_section: Mapped[int] = mapped_column(Integer)
    brief: Mapped[str] = mapped_column(Text, server_default="")
    source_text: Mapped[str | None] = mapped_column(Text)  # the input part, for rewrites
    target_words: Mapped[int] = mapped_column(Integer)
    min_words: Mapped[int] = mapped_column(Integer)
    max_words: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    # The working text while attempts are made; frozen once done (later changes are versions).
    text: Mapped[str | None] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(Integer, server_default="0")  # of the latest version
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    state_before_id: Mapped[int | None] = mapped_column(BigInteger)
    state_after_id: Mapped[int | None] = mapped_column(BigInteger)
    # The version whose memory (ledger entries) is the chunk's current one: a repair after the
    # commit adds a version and its own entries, and moves this.
    memory_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("chunk_versions.id", ondelete="SET NULL", use_alter=True), index=True
    )
    created_at: Mapped[datetime] = ts_column(default=True)
    completed_at: Mapped[datetime | None] = ts_column()


class ChunkAttempt(Base):
    __tablename__ = "chunk_attempts"
    __table_args__ = (
        UniqueConstraint("chunk_id", "attempt_no"),
        CheckConstraint(sql_in("kind", ATTEMPT_KINDS), name="kind"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(Text)
    llm_call_id: Mapped[int | None] = mapped_column(ForeignKey("llm_calls.id", ondelete="SET NULL"), index=True)
    # What the prompt asked for: with words_added it measures how well the model follows lengths.
    words_asked: Mapped[int] = mapped_column(Integer, server_default="0")
    added_text: Mapped[str] = mapped_column(Text)
    text_after: Mapped[str] = mapped_column(Text)
    words_before: Mapped[int] = mapped_column(Integer)
    words_added: Mapped[int] = mapped_column(Integer)
    words_after: Mapped[int] = mapped_column(Integer)
    # What the story memory put into this attempt's prompt: ledger entry and summary ids, what
    # was left out by the budget (``core.memory.MemoryContext.record``).
    memory: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The answer's words as the model wrote them, and what the degeneration gate cut from them
    # (core.gate: [{rule, words, text}], the text shortened; the whole answer is in llm_calls).
    words_model: Mapped[int] = mapped_column(Integer, server_default="0")
    cuts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    created_at: Mapped[datetime] = ts_column(default=True)


class TextMark(Base):
    """A paragraph or sentence of a job's document, by fingerprint (``core.gate.fingerprints``),
    claimed by the chunk attempt that first wrote it. The primary key makes the claim race-free
    between chapters written in parallel: whoever commits it first keeps the words, any later
    chunk that says the same again has them cut (``activities.gating``)."""

    __tablename__ = "text_marks"
    __table_args__ = (CheckConstraint("kind IN ('paragraph','sentence')", name="kind"),)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    words: Mapped[int] = mapped_column(Integer)


class ChunkVersion(Base):
    """A chunk's text as accepted (version 1) and every later change (trim, stitch repair, seam
    repair), each a new row; the document is assembled from the latest versions."""

    __tablename__ = "chunk_versions"
    __table_args__ = (
        UniqueConstraint("chunk_id", "version"),
        CheckConstraint(sql_in("reason", VERSION_REASONS), name="reason"),
        CheckConstraint("version >= 1", name="version"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = ts_column(default=True)


class SeamCheck(Base):
    """The seam between a unit (chapter) and its predecessor, validated against the predecessor's
    real end state: ``strict`` when the unit's first chunk was written from it, ``handoff`` when
    it was written from a state derived from the plan; the differences, the conflicts, and the
    repair (a new version of the unit's first chunk) when there was one."""

    __tablename__ = "seam_checks"
    __table_args__ = (
        # One seam per unit as the job writes it; an edit re-checks a seam as rows of its own.
        Index("uq_seam_checks_unit_id", "unit_id", unique=True, postgresql_where=text("edit_id IS NULL")),
        UniqueConstraint("unit_id", "edit_id"),
        CheckConstraint("mode IN ('strict','handoff')", name="mode"),
        CheckConstraint("(mode = 'strict') = (predecessor_state_id = successor_state_id)", name="strict_means_same"),
        CheckConstraint("repaired = (repair_version_id IS NOT NULL)", name="repair_has_version"),
        CheckConstraint(sql_in("status", SEAM_STATUSES), name="status"),
        # Validated means a check ran and passed, or its repair passed: never a constant.
        CheckConstraint("validated = (status IN ('validated', 'repaired'))", name="validated_means_passed"),
        CheckConstraint("status <> 'repaired' OR repaired", name="repaired_status_has_repair"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    predecessor_chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    predecessor_state_id: Mapped[int] = mapped_column(ForeignKey("coherence_states.id", ondelete="CASCADE"), index=True)
    successor_state_id: Mapped[int] = mapped_column(ForeignKey("coherence_states.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(Text)
    differences: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    conflicts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    repaired: Mapped[bool] = mapped_column(Boolean, server_default="false")
    repair_version_id: Mapped[int | None] = mapped_column(ForeignKey("chunk_versions.id", ondelete="CASCADE"))
    # validated: the checks ran and found nothing; repaired: what they found was repaired and the
    # repair passed them; flagged: a finding could not be repaired and stays open in the report.
    status: Mapped[str] = mapped_column(Text, server_default="validated")
    validated: Mapped[bool] = mapped_column(Boolean)
    checks: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")  # what ran, with what result
    # The edit (db.loop.Edit) that checked this seam again after changing a neighbour; None: the job's.
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = ts_column(default=True)


class LengthCheck(Base):
    __tablename__ = "length_checks"
    __table_args__ = (
        CheckConstraint("scope IN ('chunk','final')", name="scope"),
        CheckConstraint("passed = (words >= min_words)", name="passed_means_min_met"),
        UniqueConstraint("job_id", "scope", "chunk_id", "round", postgresql_nulls_not_distinct=True),
        Index("ix_length_checks_chunk_id", "chunk_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_id: Mapped[int | None] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text)
    round: Mapped[int] = mapped_column(Integer)
    words: Mapped[int] = mapped_column(Integer)
    min_words: Mapped[int] = mapped_column(Integer)
    target_words: Mapped[int] = mapped_column(Integer)
    max_words: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = ts_column(default=True)


class StitchResult(Base):
    __tablename__ = "stitch_results"
    __table_args__ = (UniqueConstraint("job_id", "section_id"), Index("ix_stitch_results_section_id", "section_id"))
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    section_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    issues: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    repairs: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    words_before: Mapped[int] = mapped_column(Integer)
    words_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = ts_column(default=True)


ENTRY_SOURCES = ("plan", "model", "fallback")
LEDGER_KINDS = ("entity", "attribute", "event", "thread", "resolved", "fact")


class LedgerEntry(Base):
    """The story memory, one fact a row: an entity, an attribute's value, an event, a thread
    opened or resolved, a fact not to contradict, each with the sentence that establishes it.
    Immutable. Set by a chunk version (``chunk_version_id``; the plan's own have none), folded
    into a coherence state (``state_id``), and placed in the document by ``doc_order`` (its
    chunk's ordinal; -1 for the plan) so that a chunk is shown only what comes before it."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(sql_in("kind", LEDGER_KINDS), name="kind"),
        CheckConstraint(sql_in("source", ENTRY_SOURCES), name="source"),
        CheckConstraint("(chunk_id IS NULL) = (source = 'plan')", name="plan_entries_have_no_chunk"),
        Index("ix_ledger_entries_job_order", "job_id", "doc_order"),
        Index("ix_ledger_entries_job_key", "job_id", "key"),
        Index("ix_ledger_entries_version", "chunk_version_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_id: Mapped[int | None] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    chunk_version_id: Mapped[int | None] = mapped_column(ForeignKey("chunk_versions.id", ondelete="CASCADE"))
    state_id: Mapped[int | None] = mapped_column(ForeignKey("coherence_states.id", ondelete="CASCADE"), index=True)
    doc_order: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    attribute: Mapped[str | None] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text, server_default="")
    quote: Mapped[str] = mapped_column(Text, server_default="")
    etype: Mapped[str | None] = mapped_column(Text)
    when_: Mapped[str | None] = mapped_column("when", Text)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = ts_column(default=True)


class NodeSummary(Base):
    """What a chapter or a part said, written when it ends (a new version if it is written
    again), so that a chunk deep in a book knows the book so far in a bounded number of tokens."""

    __tablename__ = "node_summaries"
    __table_args__ = (
        UniqueConstraint("node_id", "version"),
        CheckConstraint(sql_in("source", ("model", "fallback")), name="source"),
        Index("ix_node_summaries_job_id", "job_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("plan_nodes.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    level: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    llm_call_id: Mapped[int | None] = mapped_column(ForeignKey("llm_calls.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = ts_column(default=True)


FINDING_CATEGORIES = ("characters", "facts", "timeline", "plot", "style")
FINDING_STATUSES = ("open", "repaired")


class ContinuityFinding(Base):
    """A continuity problem a check found: its category (ConStory-Bench's), the quote here and
    the ledger entry (and its quote) it contradicts, the check or the model call that found it,
    and what became of it: ``repaired`` (a new version, ``repair_version_id``, passed the checks
    again) or ``open`` (reported). Immutable; the audit event that recorded it names its id."""

    __tablename__ = "continuity_findings"
    __table_args__ = (
        CheckConstraint(sql_in("category", FINDING_CATEGORIES), name="category"),
        CheckConstraint(sql_in("severity", ("minor", "major")), name="severity"),
        CheckConstraint(sql_in("status", FINDING_STATUSES), name="status"),
        CheckConstraint("(status = 'repaired') = (repair_version_id IS NOT NULL)", name="repair_has_version"),
        Index("ix_continuity_findings_job_id", "job_id"),
        Index("ix_continuity_findings_seam", "seam_check_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    chunk_version_id: Mapped[int | None] = mapped_column(ForeignKey("chunk_versions.id", ondelete="CASCADE"))
    seam_check_id: Mapped[int | None] = mapped_column(ForeignKey("seam_checks.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(Text)
    subtype: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    detector: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    quote: Mapped[str] = mapped_column(Text)
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id", ondelete="CASCADE"))
    quote_there: Mapped[str] = mapped_column(Text, server_default="")
    doc_order_there: Mapped[int | None] = mapped_column(Integer)
    llm_call_id: Mapped[int | None] = mapped_column(ForeignKey("llm_calls.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(Text)
    repair_version_id: Mapped[int | None] = mapped_column(ForeignKey("chunk_versions.id", ondelete="CASCADE"))
    repair_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Found by an edit's checks (db.loop.Edit): its own chunks, its neighbours, what relied on it.
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = ts_column(default=True)


Index("ix_plan_nodes_job_id", PlanNode.job_id)
Index("ix_chunks_section_id", Chunk.section_id)
Index("ix_stitch_results_job_id", StitchResult.job_id)
