"""honest words: what the degeneration gate cut from each chunk attempt, and the document's
paragraph and sentence fingerprints (repeats across chapters are cut once)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

Adds two columns to chunk_attempts (older attempts: nothing recorded as cut, their words as the
model's) and the table text_marks. Rows are not touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chunk_attempts", sa.Column("words_model", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "chunk_attempts",
        sa.Column("cuts", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
    )
    op.create_table(
        "text_marks",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("fingerprint", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("chunk_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("words", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('paragraph','sentence')", name=op.f("ck_text_marks_kind")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_text_marks_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.id"], name=op.f("fk_text_marks_chunk_id_chunks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "fingerprint", name=op.f("pk_text_marks")),
    )
    op.create_index(op.f("ix_text_marks_chunk_id"), "text_marks", ["chunk_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_text_marks_chunk_id"), table_name="text_marks")
    op.drop_table("text_marks")
    op.drop_column("chunk_attempts", "cuts")
    op.drop_column("chunk_attempts", "words_model")
