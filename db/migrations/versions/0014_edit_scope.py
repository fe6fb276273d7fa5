"""edits that prove their scope: coverage checks, rewrite and repair attempts, coverage repairs

Revision ID: 0014_edit_scope
Revises: 0010
Create Date: 2026-12-16

Coverage checks are a new table (whether a node's text carries each instruction and key point,
per round). A chunk attempt may be a selection's rewrite or a coverage retry's paragraph (their
model words and cuts counted as any answer's); a chunk version may be a coverage repair.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014_edit_scope"
down_revision = "0010"
branch_labels = None
depends_on = None

REASONS = (
    "written", "trim", "stitch", "seam_repair", "continuity_repair", "regenerate", "edit", "rewrite", "rollback"
)  # fmt: skip
OLD_KINDS = ("write", "extend", "trim")
NEW_KINDS = ("rewrite", "repair")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "coverage_checks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("node_id", sa.BigInteger(), nullable=False),
        sa.Column("edit_id", sa.BigInteger(), nullable=True),
        sa.Column("round", sa.Integer(), server_default="0", nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("detector", sa.Text(), nullable=False),
        sa.Column("quote", sa.Text(), server_default="", nullable=False),
        sa.Column("why", sa.Text(), server_default="", nullable=False),
        sa.Column("llm_call_ids", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("finding_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(_in("source", ("instruction", "key_point")), name=op.f("ck_coverage_checks_source")),
        sa.CheckConstraint(
            _in("verdict", ("covered", "missing", "unchecked")), name=op.f("ck_coverage_checks_verdict")
        ),
        sa.CheckConstraint(_in("detector", ("rule", "judge", "none")), name=op.f("ck_coverage_checks_detector")),
        sa.CheckConstraint("round >= 0", name=op.f("ck_coverage_checks_round")),
        sa.CheckConstraint("verdict <> 'covered' OR quote <> ''", name=op.f("ck_coverage_checks_covered_has_quote")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_coverage_checks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["plan_nodes.id"], name=op.f("fk_coverage_checks_node_id_plan_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["edit_id"], ["edits.id"], name=op.f("fk_coverage_checks_edit_id_edits"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["finding_id"],
            ["continuity_findings.id"],
            name=op.f("fk_coverage_checks_finding_id_continuity_findings"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coverage_checks")),
    )
    op.create_index("ix_coverage_checks_job_id", "coverage_checks", ["job_id"], unique=False)
    op.drop_constraint(op.f("ck_chunk_attempts_kind"), "chunk_attempts", type_="check")
    op.create_check_constraint(op.f("ck_chunk_attempts_kind"), "chunk_attempts", _in("kind", OLD_KINDS + NEW_KINDS))
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(
        op.f("ck_chunk_versions_reason"), "chunk_versions", _in("reason", (*REASONS, "coverage_repair"))
    )


def downgrade() -> None:
    op.execute("DELETE FROM chunk_versions WHERE reason = 'coverage_repair'")
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", _in("reason", REASONS))
    op.execute(f"DELETE FROM chunk_attempts WHERE {_in('kind', NEW_KINDS)}")
    op.drop_constraint(op.f("ck_chunk_attempts_kind"), "chunk_attempts", type_="check")
    op.create_check_constraint(op.f("ck_chunk_attempts_kind"), "chunk_attempts", _in("kind", OLD_KINDS))
    op.drop_index("ix_coverage_checks_job_id", table_name="coverage_checks")
    op.drop_table("coverage_checks")
