"""audit hash chain: prev_hash and hash on every event, the head on the job, the head a document saw

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:00:00

Events written before this revision are chained here, in seq order, as if they had been written
with it: their hashes prove they have not changed since the upgrade (not before it). The chain's
canonical form (core.eventformat) is frozen by design, since changing it would break every stored chain,
so this migration can use it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.eventformat import GENESIS, event_hash

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BATCH = 2000


def upgrade() -> None:
    op.add_column('jobs', sa.Column('audit_head', sa.Text(), server_default=GENESIS, nullable=False))
    op.add_column('documents', sa.Column('audit_seq', sa.BigInteger(), nullable=True))
    op.add_column('documents', sa.Column('audit_head', sa.Text(), nullable=True))
    op.add_column('audit_events', sa.Column('prev_hash', sa.Text(), nullable=True))
    op.add_column('audit_events', sa.Column('hash', sa.Text(), nullable=True))
    if op.get_context().as_sql:
        # Offline (`quire db sql`): the DDL only. On a database that already holds events the
        # NOT NULL below fails loudly: run `quire db upgrade` there, which chains them first.
        op.execute("-- existing audit events are chained only by an online upgrade")
    else:
        _chain_existing(op.get_bind())
    op.alter_column('audit_events', 'prev_hash', nullable=False)
    op.alter_column('audit_events', 'hash', nullable=False)


def _chain_existing(conn: sa.engine.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
    for (job_id,) in conn.execute(sa.text("SELECT id FROM jobs ORDER BY created_at")).all():
        head, after = GENESIS, 0
        while True:
            rows = conn.execute(
                sa.text(
                    "SELECT id, seq, ts, kind, action, table_name, row_id, sql_text, data FROM audit_events"
                    " WHERE job_id = :j AND seq > :s ORDER BY seq LIMIT :n"
                ),
                {"j": job_id, "s": after, "n": BATCH},
            ).mappings().all()
            if not rows:
                break
            updates = []
            for r in rows:
                h = event_hash(head, dict(r))
                updates.append({"id": r["id"], "p": head, "h": h})
                head, after = h, r["seq"]
            conn.execute(sa.text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE id = :id"), updates)
        conn.execute(sa.text("UPDATE jobs SET audit_head = :h WHERE id = :j"), {"h": head, "j": job_id})
    conn.execute(sa.text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


def downgrade() -> None:
    op.drop_column('audit_events', 'hash')
    op.drop_column('audit_events', 'prev_hash')
    op.drop_column('documents', 'audit_head')
    op.drop_column('documents', 'audit_seq')
    op.drop_column('jobs', 'audit_head')
