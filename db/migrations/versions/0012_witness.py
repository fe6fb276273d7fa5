"""a log no one rewrites unseen: the Merkle tree's interior nodes (proofs in O(log n) reads),
witnesses' cosignatures, checkpoints that name the one before and go only with their job, a job's
end and its alarm; codec server sessions that can be revoked

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-16

Existing logs get their interior nodes computed once here (from their events' hashes), their
checkpoints the one before each, and a job that has ended the seq of its last ``job`` event of
its status as its end (checkpoints signed from now on say so).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import context, op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# A frozen copy of db/ddl.py's AUDIT_PROOF_RULES at this revision.
APPEND_ONLY = """
CREATE OR REPLACE FUNCTION quire_audit_proofs_append_only() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    RAISE EXCEPTION '% is append-only: UPDATE of a row of job % rejected', TG_TABLE_NAME, OLD.job_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM jobs WHERE id = OLD.job_id) THEN
    RAISE EXCEPTION '% rows go only with their job: DELETE of a row of job % rejected', TG_TABLE_NAME, OLD.job_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN OLD;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_checkpoints_append_only BEFORE DELETE ON audit_checkpoints
  FOR EACH ROW EXECUTE FUNCTION quire_audit_proofs_append_only();
"""
COSIGNATURES_APPEND_ONLY = """
CREATE TRIGGER audit_cosignatures_append_only BEFORE UPDATE OR DELETE ON audit_cosignatures
  FOR EACH ROW EXECUTE FUNCTION quire_audit_proofs_append_only();
"""
NODES_APPEND_ONLY = """
CREATE TRIGGER audit_nodes_append_only BEFORE UPDATE OR DELETE ON audit_nodes
  FOR EACH ROW EXECUTE FUNCTION quire_audit_proofs_append_only();
"""


def _nodes(hashes: list[str]) -> list[tuple[int, int, bytes]]:
    """Every interior node (level >= 1) of the RFC 9162 tree over these leaves (event hashes)."""
    stack: list[bytes] = []
    out: list[tuple[int, int, bytes]] = []
    for n, h in enumerate(hashes):
        node, size, level = hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest(), n, 0
        while size & 1:
            node = hashlib.sha256(b"\x01" + stack.pop() + node).digest()
            size >>= 1
            level += 1
            out.append((level, n >> level, node))
        stack.append(node)
    return out


def upgrade() -> None:
    op.add_column("jobs", sa.Column("audit_end", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("audit_alarm", sa.Text(), nullable=True))
    op.add_column("audit_checkpoints", sa.Column("prev_size", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        "fk_audit_checkpoints_prev",
        "audit_checkpoints",
        "audit_checkpoints",
        ["job_id", "prev_size"],
        ["job_id", "tree_size"],
    )
    op.create_check_constraint(op.f("ck_audit_checkpoints_prev_before"), "audit_checkpoints", "prev_size < tree_size")
    op.create_table(
        "audit_cosignatures",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_audit_cosignatures_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "tree_size"],
            ["audit_checkpoints.job_id", "audit_checkpoints.tree_size"],
            name="fk_audit_cosignatures_checkpoint",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_cosignatures")),
        sa.UniqueConstraint(
            "job_id", "tree_size", "key_id", name=op.f("uq_audit_cosignatures_job_id_tree_size_key_id")
        ),
    )
    op.create_table(
        "audit_nodes",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("level >= 1", name=op.f("ck_audit_nodes_level")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_audit_nodes_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "level", "idx", name=op.f("pk_audit_nodes")),
    )
    op.create_table(
        "codec_sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_codec_sessions")),
    )
    op.execute(
        "UPDATE audit_checkpoints c SET prev_size = p.prev FROM (SELECT id, lag(tree_size) OVER "
        "(PARTITION BY job_id ORDER BY tree_size) AS prev FROM audit_checkpoints) p WHERE p.id = c.id"
    )
    op.execute(
        "UPDATE jobs j SET audit_end = (SELECT max(seq) FROM audit_events e WHERE e.job_id = j.id "
        "AND e.kind = 'job' AND e.action = j.status) WHERE j.status IN ('succeeded', 'failed', 'cancelled')"
    )
    if not context.is_offline_mode():  # `quire db sql` prints DDL; the nodes are computed when applied
        _backfill_nodes(op.get_bind())
    op.execute(APPEND_ONLY)
    op.execute(COSIGNATURES_APPEND_ONLY)
    op.execute(NODES_APPEND_ONLY)


def _backfill_nodes(conn: sa.engine.Connection) -> None:
    """Every existing log's interior nodes, computed from its events' hashes."""
    jobs = conn.execute(sa.text("SELECT id FROM jobs WHERE audit_seq > 0")).scalars().all()
    insert = sa.text("INSERT INTO audit_nodes (job_id, level, idx, hash) VALUES (:j, :level, :idx, :hash)")
    for job in jobs:
        hashes = conn.execute(
            sa.text("SELECT hash FROM audit_events WHERE job_id = :j ORDER BY seq"), {"j": job}
        ).scalars()
        rows = [{"j": job, "level": lv, "idx": i, "hash": h} for lv, i, h in _nodes(list(hashes))]
        for k in range(0, len(rows), 5000):
            conn.execute(insert, rows[k : k + 5000])


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_nodes_append_only ON audit_nodes")
    op.execute("DROP TRIGGER IF EXISTS audit_cosignatures_append_only ON audit_cosignatures")
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON audit_checkpoints")
    op.execute("DROP FUNCTION IF EXISTS quire_audit_proofs_append_only()")
    op.drop_table("codec_sessions")
    op.drop_table("audit_nodes")
    op.drop_table("audit_cosignatures")
    op.drop_constraint("ck_audit_checkpoints_prev_before", "audit_checkpoints", type_="check")
    op.drop_constraint("fk_audit_checkpoints_prev", "audit_checkpoints", type_="foreignkey")
    op.drop_column("audit_checkpoints", "prev_size")
    op.drop_column("jobs", "audit_alarm")
    op.drop_column("jobs", "audit_end")
