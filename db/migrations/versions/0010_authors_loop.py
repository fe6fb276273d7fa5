"""the author's loop: plan versions, edits of a finished job, locks, seams checked again by an edit

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-09

Plan versions and edits are new tables. Nodes can be locked. A seam is checked once by the job
and again by each edit that changes a neighbour (one row per unit and edit); findings name the
edit that found them; chunk versions may be an author's (regenerate, edit, rewrite, rollback). A
job's output in the history is its latest version.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen copies of db/ddl.py's job_history view at this revision and at the one before.
JOB_HISTORY_VIEW = "\nCREATE OR REPLACE VIEW job_history AS\nSELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,\n       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,\n       j.words_written, o.word_count AS output_words,\n       COALESCE(o.word_count >= j.target_words, false) AS target_met,\n       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,\n       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,\n       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,\n       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out,\n       (SELECT COALESCE(sum(c.cost_micro_usd), 0) FROM llm_calls c WHERE c.job_id = j.id) AS cost_micro_usd\n  FROM jobs j\n  LEFT JOIN LATERAL (SELECT d.word_count FROM documents d WHERE d.job_id = j.id AND d.role = 'output'\n                      ORDER BY d.version DESC LIMIT 1) o ON true\n"
OLD_JOB_HISTORY_VIEW = "\nCREATE OR REPLACE VIEW job_history AS\nSELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,\n       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,\n       j.words_written, o.word_count AS output_words,\n       COALESCE(o.word_count >= j.target_words, false) AS target_met,\n       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,\n       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,\n       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,\n       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out,\n       (SELECT COALESCE(sum(c.cost_micro_usd), 0) FROM llm_calls c WHERE c.job_id = j.id) AS cost_micro_usd\n  FROM jobs j\n  LEFT JOIN documents o ON o.job_id = j.id AND o.role = 'output' AND o.version = 1\n"
REASONS = ("written", "trim", "stitch", "seam_repair", "continuity_repair")
AUTHORS = ("regenerate", "edit", "rewrite", "rollback")

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "plan_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("outline", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("changes", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("user_name", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            _in("status", ("planned", "proposed", "approved", "rejected")), name=op.f("ck_plan_versions_status")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_plan_versions_version")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_plan_versions_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_versions")),
        sa.UniqueConstraint("job_id", "version", name=op.f("uq_plan_versions_job_id_version")),
    )
    op.create_table(
        "edits",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("node_id", sa.BigInteger(), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("words", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("workflow_id", sa.Text(), nullable=False),
        sa.Column("document_version", sa.Integer(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_in("kind", AUTHORS), name=op.f("ck_edits_kind")),
        sa.CheckConstraint(_in("status", ("running", "done", "failed")), name=op.f("ck_edits_status")),
        sa.CheckConstraint(
            "(status = 'running') = (completed_at IS NULL)", name=op.f("ck_edits_completed_unless_running")
        ),
        sa.CheckConstraint(
            "status <> 'done' OR document_version IS NOT NULL", name=op.f("ck_edits_done_has_document")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_edits_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["node_id"], ["plan_nodes.id"], name=op.f("fk_edits_node_id_plan_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edits")),
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_edits_job_id_number")),
    )
    op.create_index("ix_edits_node_id", "edits", ["node_id"], unique=False)
    op.create_index(
        "uq_edits_running", "edits", ["job_id"], unique=True, postgresql_where=sa.text("status = 'running'")
    )
    op.add_column("plan_nodes", sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("plan_nodes", sa.Column("locked_by", sa.Text(), nullable=True))
    op.add_column("seam_checks", sa.Column("edit_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_seam_checks_edit_id_edits"), "seam_checks", "edits", ["edit_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index(op.f("ix_seam_checks_edit_id"), "seam_checks", ["edit_id"], unique=False)
    op.drop_constraint(op.f("uq_seam_checks_unit_id"), "seam_checks", type_="unique")
    op.create_index(
        "uq_seam_checks_unit_id", "seam_checks", ["unit_id"], unique=True, postgresql_where=sa.text("edit_id IS NULL")
    )
    op.create_unique_constraint(op.f("uq_seam_checks_unit_id_edit_id"), "seam_checks", ["unit_id", "edit_id"])
    op.add_column("continuity_findings", sa.Column("edit_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_continuity_findings_edit_id_edits"),
        "continuity_findings",
        "edits",
        ["edit_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(op.f("ix_continuity_findings_edit_id"), "continuity_findings", ["edit_id"], unique=False)
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", _in("reason", REASONS + AUTHORS))
    op.execute(JOB_HISTORY_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW job_history")
    op.execute(OLD_JOB_HISTORY_VIEW)
    op.execute(f"DELETE FROM chunk_versions WHERE {_in('reason', AUTHORS)}")
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", _in("reason", REASONS))
    op.drop_index(op.f("ix_continuity_findings_edit_id"), table_name="continuity_findings")
    op.drop_constraint(op.f("fk_continuity_findings_edit_id_edits"), "continuity_findings", type_="foreignkey")
    op.drop_column("continuity_findings", "edit_id")
    op.execute("DELETE FROM seam_checks WHERE edit_id IS NOT NULL")
    op.drop_constraint(op.f("uq_seam_checks_unit_id_edit_id"), "seam_checks", type_="unique")
    op.drop_index("uq_seam_checks_unit_id", table_name="seam_checks")
    op.create_unique_constraint(op.f("uq_seam_checks_unit_id"), "seam_checks", ["unit_id"])
    op.drop_index(op.f("ix_seam_checks_edit_id"), table_name="seam_checks")
    op.drop_constraint(op.f("fk_seam_checks_edit_id_edits"), "seam_checks", type_="foreignkey")
    op.drop_column("seam_checks", "edit_id")
    op.drop_column("plan_nodes", "locked_by")
    op.drop_column("plan_nodes", "locked_at")
    op.drop_index("uq_edits_running", table_name="edits")
    op.drop_index("ix_edits_node_id", table_name="edits")
    op.drop_table("edits")
    op.drop_table("plan_versions")
