"""audit proofs: the job id hashed into every event (chain version 2), each log's Merkle tree kept
on its job, signed checkpoints, and the exact bytes of answers Postgres cannot store as text

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25

Events already written keep their hashes (``chain`` 1): heads kept elsewhere still verify. A
job's Merkle frontier starts NULL and is rebuilt from its hashes on its next write.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A frozen copy of db/ddl.py's audit_checkpoints_immutable at this revision.
CHECKPOINTS_IMMUTABLE = (
    "\nCREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE ON audit_checkpoints\n"
    "  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();\n"
)


def upgrade() -> None:
    # Existing rows get 1 (stored once, no rewrite); new rows 2.
    op.add_column("audit_events", sa.Column("chain", sa.SmallInteger(), server_default="1", nullable=False))
    op.alter_column("audit_events", "chain", server_default="2")
    op.add_column("jobs", sa.Column("audit_frontier", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("audit_signed", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("llm_calls", sa.Column("response_raw", sa.LargeBinary(), nullable=True))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_audit_checkpoints_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
        sa.UniqueConstraint("job_id", "tree_size", name=op.f("uq_audit_checkpoints_job_id_tree_size")),
    )
    op.execute(CHECKPOINTS_IMMUTABLE)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_immutable ON audit_checkpoints")
    op.drop_table("audit_checkpoints")
    op.drop_column("llm_calls", "response_raw")
    op.drop_column("jobs", "audit_signed")
    op.drop_column("jobs", "audit_frontier")
    op.drop_column("audit_events", "chain")
