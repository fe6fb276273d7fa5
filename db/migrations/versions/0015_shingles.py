"""shingles: a document's paragraphs are marked by their runs of words too, so that one said again
with a few words changed is cut in any chapter (core.repeats, rule near_repeat)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-10

text_marks.kind may be 'shingle' (a sampled run of four words). Rows are not touched; a job
written before keeps its marks, and its later attempts are judged against them word for word.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_text_marks_kind"), "text_marks", type_="check")
    op.create_check_constraint(op.f("ck_text_marks_kind"), "text_marks", "kind IN ('paragraph','sentence','shingle')")


def downgrade() -> None:
    op.execute("DELETE FROM text_marks WHERE kind = 'shingle'")
    op.drop_constraint(op.f("ck_text_marks_kind"), "text_marks", type_="check")
    op.create_check_constraint(op.f("ck_text_marks_kind"), "text_marks", "kind IN ('paragraph','sentence')")
