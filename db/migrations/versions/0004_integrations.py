"""integrations: webhooks (a job's target, a user's default and sealed signing secret), per-user
quotas, and each model call's cost

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Adds columns only (every one nullable): existing users have no quota and no webhook, existing
calls no cost. The jobs' error codes gain E_QUOTA_EXCEEDED; the job history gains each job's cost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ERROR_CODES = ('E_LENGTH_NOT_MET', 'E_BUDGET_EXHAUSTED', 'E_LLM_UNAVAILABLE', 'E_INPUT_INVALID', 'E_CANCELLED', 'E_INTERNAL', 'E_QUOTA_EXCEEDED')
OLD_ERROR_CODES = tuple(c for c in ERROR_CODES if c != "E_QUOTA_EXCEEDED")
# Frozen copies of db/ddl.py's job_history at this revision and at the one before.
JOB_HISTORY_VIEW = "\nCREATE OR REPLACE VIEW job_history AS\nSELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,\n       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,\n       j.words_written, o.word_count AS output_words,\n       COALESCE(o.word_count >= j.target_words, false) AS target_met,\n       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,\n       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,\n       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,\n       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out,\n       (SELECT COALESCE(sum(c.cost_micro_usd), 0) FROM llm_calls c WHERE c.job_id = j.id) AS cost_micro_usd\n  FROM jobs j\n  LEFT JOIN documents o ON o.job_id = j.id AND o.role = 'output' AND o.version = 1\n"
OLD_JOB_HISTORY_VIEW = "\nCREATE OR REPLACE VIEW job_history AS\nSELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,\n       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,\n       j.words_written, o.word_count AS output_words,\n       COALESCE(o.word_count >= j.target_words, false) AS target_met,\n       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,\n       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,\n       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,\n       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out\n  FROM jobs j\n  LEFT JOIN documents o ON o.job_id = j.id AND o.role = 'output' AND o.version = 1\n"
USER_COLUMNS = (
    ("webhook_url", sa.Text()),
    ("webhook_secret_sealed", sa.Text()),
    ("webhook_secret_created_at", sa.DateTime(timezone=True)),
    ("quota_tokens_per_day", sa.BigInteger()),
    ("quota_concurrent_jobs", sa.Integer()),
    ("quota_words_per_month", sa.BigInteger()),
)


def _error_codes(codes: tuple[str, ...]) -> str:
    return "error_code IS NULL OR error_code IN (" + ", ".join(repr(c) for c in codes) + ")"


def upgrade() -> None:
    for name, type_ in USER_COLUMNS:
        op.add_column("users", sa.Column(name, type_, nullable=True))
    op.create_check_constraint(
        op.f("ck_users_quotas"),
        "users",
        "quota_tokens_per_day >= 0 AND quota_concurrent_jobs >= 0 AND quota_words_per_month >= 0",
    )
    op.add_column("jobs", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.add_column("llm_calls", sa.Column("cost_micro_usd", sa.BigInteger(), nullable=True))
    op.drop_constraint(op.f("ck_jobs_error_code"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_error_code"), "jobs", _error_codes(ERROR_CODES))
    op.execute(JOB_HISTORY_VIEW)  # a column appended: CREATE OR REPLACE keeps the others


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_history")
    op.execute(OLD_JOB_HISTORY_VIEW)
    op.execute("UPDATE jobs SET error_code = 'E_INTERNAL' WHERE error_code = 'E_QUOTA_EXCEEDED'")
    op.drop_constraint(op.f("ck_jobs_error_code"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_error_code"), "jobs", _error_codes(OLD_ERROR_CODES))
    op.drop_column("llm_calls", "cost_micro_usd")
    op.drop_column("jobs", "webhook_url")
    op.drop_constraint(op.f("ck_users_quotas"), "users", type_="check")
    for name, _ in reversed(USER_COLUMNS):
        op.drop_column("users", name)
