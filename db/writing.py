"""The tables of the writing itself: the plan tree, chunks and their attempts and versions, the
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
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.spec import sql_in
from db.models import Base, ts_column

NODE_LEVELS = ("book", "part", "chapter", "section")
# pending: laid out; expanded: its children planned; writing; written: its chunks done (a unit
# awaiting its seam); done.
NODE_STATUSES = ("pending", "expanded", "writing", "written", "done")
STATE_KINDS = ("root", "chunk", "handoff")
VERSION_REASONS = ("written", "trim", "stitch", "seam_repair")


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
    created_at: Mapped[datetime] = ts_column(default=True)
    completed_at: Mapped[datetime | None] = ts_column()


class ChunkAttempt(Base):
    __tablename__ = "chunk_attempts"
    __table_args__ = (
        UniqueConstraint("chunk_id", "attempt_no"),
        CheckConstraint("kind IN ('write','extend','trim')", name="kind"),  # trim: rows of before 0002
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
        UniqueConstraint("unit_id"),
        CheckConstraint("mode IN ('strict','handoff')", name="mode"),
        CheckConstraint("(mode = 'strict') = (predecessor_state_id = successor_state_id)", name="strict_means_same"),
        CheckConstraint("repaired = (repair_version_id IS NOT NULL)", name="repair_has_version"),
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
    validated: Mapped[bool] = mapped_column(Boolean)
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


Index("ix_plan_nodes_job_id", PlanNode.job_id)
Index("ix_chunks_section_id", Chunk.section_id)
Index("ix_stitch_results_job_id", StitchResult.job_id)
