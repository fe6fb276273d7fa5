"""SQLAlchemy models: everything a job reads, writes and proves lives in these tables.

Triggers, the NOTIFY hook and the job-history view are plain SQL in ``db/ddl.py`` and are
created by the Alembic migrations, never by ``create_all`` against a user's database.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.eventformat import CHAIN_VERSION, GENESIS
from core.spec import (
    ERROR_CODES,
    JOB_KINDS,
    JOB_STATUSES,
    MAX_TARGET_WORDS,
    MIN_TARGET_WORDS,
    TERMINAL_STATUSES,
    sql_in,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def ts_column(nullable: bool = True, default: bool = False) -> Any:
    if default:
        return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "quota_tokens_per_day >= 0 AND quota_concurrent_jobs >= 0 AND quota_words_per_month >= 0", name="quotas"
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = ts_column(default=True)
    # The default webhook of the user's jobs, and the secret that signs every webhook of theirs:
    # sealed (core.sealing: encrypted under QUIRE_SECRET_KEY, never stored in clear), shown once.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_sealed: Mapped[str | None] = mapped_column(Text)
    webhook_secret_created_at: Mapped[datetime | None] = ts_column()
    # Quotas (core.quota); NULL: no limit.
    quota_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    quota_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    quota_words_per_month: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(Text, unique=True)
    # sha256 of the whole key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = ts_column(default=True)
    revoked_at: Mapped[datetime | None] = ts_column()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(sql_in("kind", JOB_KINDS), name="kind"),
        CheckConstraint(sql_in("status", JOB_STATUSES), name="status"),
        CheckConstraint(f"target_words BETWEEN {MIN_TARGET_WORDS} AND {MAX_TARGET_WORDS}", name="target_words"),
        CheckConstraint("max_words >= target_words", name="max_words"),
        CheckConstraint("started_at IS NULL OR started_at >= created_at", name="started_after_created"),
        CheckConstraint(
            "completed_at IS NULL OR completed_at >= COALESCE(started_at, created_at)",
            name="completed_after_started",
        ),
        CheckConstraint(
            f"({sql_in('status', TERMINAL_STATUSES)}) = (completed_at IS NOT NULL)",
            name="completed_iff_terminal",
        ),
        CheckConstraint("error_code IS NULL OR " + sql_in("error_code", ERROR_CODES), name="error_code"),
        CheckConstraint(
            "status <> 'failed' OR (error_code IS NOT NULL AND failure_reason IS NOT NULL)", name="failed_has_reason"
        ),
        CheckConstraint("audit_seq >= 0", name="audit_seq"),
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_jobs_user_created", "user_id", "created_at", "id"),
        Index("ix_jobs_user_status_created", "user_id", "status", "created_at"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    title: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    target_words: Mapped[int] = mapped_column(Integer)
    max_words: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The plan's skeleton (title, thesis, section titles, glossary, style): small, read by every chunk.
    skeleton: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    workflow_id: Mapped[str] = mapped_column(Text, unique=True)
    # Where the job's end is POSTed (its own webhook_url, else its owner's default at submit).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = ts_column(default=True)
    started_at: Mapped[datetime | None] = ts_column()
    completed_at: Mapped[datetime | None] = ts_column()
    failure_reason: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(Text)
    current_step: Mapped[str | None] = mapped_column(Text)
    words_written: Mapped[int] = mapped_column(Integer, server_default="0")
    sections_total: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_total: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_done: Mapped[int] = mapped_column(Integer, server_default="0")
    finalize_rounds: Mapped[int] = mapped_column(Integer, server_default="0")
    units_total: Mapped[int] = mapped_column(Integer, server_default="0")  # chapters (or the book)
    units_done: Mapped[int] = mapped_column(Integer, server_default="0")
    # Per-job audit sequence: bumped under this row's lock so commit order equals seq order.
    audit_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The hash of event audit_seq (the chain's head), advanced with it; GENESIS before any event.
    audit_head: Mapped[str] = mapped_column(Text, server_default=GENESIS)
    # The right edge of the log's Merkle tree (core.merkle.Frontier, hex), advanced with the head;
    # NULL for a log written before it was kept (rebuilt from the hashes on its next write).
    audit_frontier: Mapped[str | None] = mapped_column(Text)
    # The tree size of the log's last signed checkpoint (0: none yet).
    audit_signed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The seq of the job's terminal event while it has ended (its checkpoints say ``end``); NULL while it runs.
    audit_end: Mapped[int | None] = mapped_column(BigInteger)
    # Why a checkpoint of this log was refused (a witness, or the signer's own check): no more are signed.
    audit_alarm: Mapped[str | None] = mapped_column(Text)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("role IN ('input','output','partial')", name="role"),
        UniqueConstraint("job_id", "role", "version"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    filename: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(Integer)
    # The job's audit head when this document was saved: links the output to its proof.
    audit_seq: Mapped[int | None] = mapped_column(BigInteger)
    audit_head: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = ts_column(default=True)


class LlmCall(Base):
    __tablename__ = "llm_calls"
    __table_args__ = (
        CheckConstraint("status IN ('pending','ok','error')", name="status"),
        CheckConstraint("status = 'pending' OR completed_at IS NOT NULL", name="completed_unless_pending"),
        Index("ix_llm_calls_job_id_request_key", "job_id", "request_key"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_id: Mapped[int | None] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    # Identifies the logical request so that a retried activity reuses a successful answer.
    request_key: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    base_url: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    response: Mapped[str | None] = mapped_column(Text)
    # The answer's exact bytes (UTF-8), when its text holds what Postgres cannot store (NUL, a lone
    # surrogate): ``response`` then shows those as U+2400 / U+FFFD (core.controls).
    response_raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    finish_reason: Mapped[str | None] = mapped_column(Text)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    tokens_cached: Mapped[int | None] = mapped_column(Integer)
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, server_default="false")
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    # US micro-dollars by the price table (QUIRE_PRICES); NULL: the model has no price there.
    cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # The row is committed as pending before the request is sent (a worker dying mid-call is seen).
    started_at: Mapped[datetime] = ts_column(nullable=False)
    completed_at: Mapped[datetime | None] = ts_column()


class AuditEvent(Base):
    """Append-only (a trigger rejects UPDATE and stray DELETE); seq is per job and gap-free, and
    each event is chained to the one before it by its hash."""

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"), Index("ix_audit_events_job_kind_seq", "job_id", "kind", "seq"))
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    table_name: Mapped[str | None] = mapped_column(Text)
    row_id: Mapped[str | None] = mapped_column(Text)
    sql_text: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The hash chain (core.eventformat.event_hash): hash = sha256(prev_hash + canonical content), the
    # content's form by ``chain`` (2: the job id is hashed in; 1: events written before it was).
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text)
    chain: Mapped[int] = mapped_column(SmallInteger, server_default=str(CHAIN_VERSION))


class AuditCheckpoint(Base):
    """A signed checkpoint of a job's log (core.checkpoint): the Merkle root at a tree size,
    signed with the operator's key (kept outside the database), naming the one before it. Rows are
    never updated, and go only with their job."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "tree_size"),
        ForeignKeyConstraint(
            ["job_id", "prev_size"],
            ["audit_checkpoints.job_id", "audit_checkpoints.tree_size"],
            name="fk_audit_checkpoints_prev",
        ),
        CheckConstraint("prev_size < tree_size", name="prev_before"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(Text)  # hex
    key_id: Mapped[str] = mapped_column(Text)  # <name>+<8 hex>: the verifier key that checks it
    note: Mapped[str] = mapped_column(Text)  # the signed note, as verifiers read it
    ts: Mapped[datetime] = ts_column(default=True)
    # The tree size of the checkpoint signed before it (NULL: the first, or one signed before 0012).
    prev_size: Mapped[int | None] = mapped_column(BigInteger)


class AuditCosignature(Base):
    """A witness's cosignature on a checkpoint (C2SP tlog-cosignature): its signature line."""

    __tablename__ = "audit_cosignatures"
    __table_args__ = (
        UniqueConstraint("job_id", "tree_size", "key_id"),
        ForeignKeyConstraint(
            ["job_id", "tree_size"],
            ["audit_checkpoints.job_id", "audit_checkpoints.tree_size"],
            name="fk_audit_cosignatures_checkpoint",
            ondelete="CASCADE",
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tree_size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(Text)  # the witness's <name>+<8 hex>
    line: Mapped[str] = mapped_column(Text)  # "— <name> <base64>", as the note carries it
    ts: Mapped[datetime] = ts_column(default=True)


class AuditNode(Base):
    """An interior node of a log's Merkle tree: the hash of the perfect subtree of 2^level leaves
    starting at leaf idx * 2^level (level >= 1; leaves are the events' hashes). Proofs read
    O(log n) of them (core.merkle.needed)."""

    __tablename__ = "audit_nodes"
    __table_args__ = (CheckConstraint("level >= 1", name="level"),)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class CodecSession(Base):
    """A browser signed in to the operators' codec server (api/codec.py): its cookie names it, and a
    sign-out (or an operator's "revoke all") ends it here, before its 12 hours are up."""

    __tablename__ = "codec_sessions"
    id: Mapped[str] = mapped_column(Text, primary_key=True)  # random, 128 bits, hex
    created_at: Mapped[datetime] = ts_column(default=True)
    expires_at: Mapped[datetime] = ts_column(nullable=False)
    revoked_at: Mapped[datetime | None] = ts_column()
    ip: Mapped[str | None] = mapped_column(Text)


class AccountEvent(Base):
    """Account-level log: API access and deletions. Survives the deletion of the jobs it names."""

    __tablename__ = "account_events"
    __table_args__ = (Index("ix_account_events_user_ts", "user_id", "ts"),)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = ts_column(default=True)
    kind: Mapped[str] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int | None] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


# Indexes for foreign keys that no unique constraint above already leads with.
Index("ix_documents_job_id", Document.job_id)
Index("ix_llm_calls_job_started", LlmCall.job_id, LlmCall.started_at)
