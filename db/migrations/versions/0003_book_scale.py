"""book scale: the plan tree, chunk versions, handoff states and validated seams

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

`sections` becomes `plan_nodes` (books, parts, chapters and sections, with parent links, budgets
and one heading each); chunks belong to a unit (the chapter written as one chained run); chunk
text is versioned; coherence states are immutable and of three kinds (root, chunk, handoff);
every seam between units is validated against the predecessor's real end state before a unit may
be complete. Rows of jobs from before this revision become flat sections of chunks, their done
chunks a first version each.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of db/ddl.py at this revision: later edits there need a new migration.
DDL = {
    'coherence_states_chain': "\nCREATE OR REPLACE FUNCTION quire_state_chain() RETURNS trigger AS $$\nDECLARE parent_ordinal int;\nBEGIN\n  IF TG_OP = 'UPDATE' THEN\n    RAISE EXCEPTION 'coherence state % of job % is immutable: UPDATE rejected', OLD.id, OLD.job_id\n      USING ERRCODE = 'insufficient_privilege';\n  END IF;\n  IF NEW.kind = 'chunk' THEN\n    SELECT ordinal INTO parent_ordinal FROM coherence_states WHERE id = NEW.parent_id;\n    IF parent_ordinal IS DISTINCT FROM NEW.ordinal - 1 THEN\n      RAISE EXCEPTION 'coherence state % of job %: parent % has ordinal %, expected %',\n        NEW.ordinal, NEW.job_id, NEW.parent_id, parent_ordinal, NEW.ordinal - 1\n        USING ERRCODE = 'check_violation';\n    END IF;\n    IF NEW.chunk_version_id IS NULL THEN\n      RAISE EXCEPTION 'coherence state % of job %: a chunk state names the version it was derived from',\n        NEW.ordinal, NEW.job_id USING ERRCODE = 'check_violation';\n    END IF;\n  ELSIF NEW.kind = 'handoff' AND NEW.unit_id IS NULL THEN\n    RAISE EXCEPTION 'handoff state % of job %: it names the unit it was made for', NEW.ordinal, NEW.job_id\n      USING ERRCODE = 'check_violation';\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER coherence_states_chain BEFORE INSERT OR UPDATE ON coherence_states\n  FOR EACH ROW EXECUTE FUNCTION quire_state_chain();\n",
    'chunks_chain': "\nCREATE OR REPLACE FUNCTION quire_chunk_chain() RETURNS trigger AS $$\nDECLARE b record; expected bigint; pred_unit bigint; after_parent bigint; after_chunk bigint;\nBEGIN\n  IF TG_OP = 'UPDATE' AND OLD.status = 'done' THEN\n    IF NEW.state_before_id IS DISTINCT FROM OLD.state_before_id\n       OR NEW.state_after_id IS DISTINCT FROM OLD.state_after_id THEN\n      RAISE EXCEPTION 'chunk % of job % is done: its coherence states cannot change', NEW.ordinal, NEW.job_id\n        USING ERRCODE = 'check_violation';\n    END IF;\n    IF NEW.text IS DISTINCT FROM OLD.text THEN\n      RAISE EXCEPTION 'chunk % of job % is done: its text cannot change (a change is a new version)',\n        NEW.ordinal, NEW.job_id USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  IF NEW.state_before_id IS NULL THEN\n    RETURN NEW;\n  END IF;\n  SELECT kind, ordinal, unit_id INTO b FROM coherence_states WHERE id = NEW.state_before_id;\n  IF NEW.ordinal = 0 THEN\n    IF b.kind IS DISTINCT FROM 'root' THEN\n      RAISE EXCEPTION 'chunk 0 of job %: state_before % is not the state left by its predecessor (the plan''s root)',\n        NEW.job_id, NEW.state_before_id USING ERRCODE = 'check_violation';\n    END IF;\n  ELSIF b.kind = 'handoff' THEN\n    -- Only a unit's first chunk may start from a handoff, one made for it, at its place.\n    SELECT unit_id INTO pred_unit FROM chunks WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1;\n    IF NEW.unit_id IS NULL OR b.unit_id IS DISTINCT FROM NEW.unit_id OR b.ordinal <> NEW.ordinal\n       OR pred_unit IS NOT DISTINCT FROM NEW.unit_id THEN\n      RAISE EXCEPTION 'chunk % of job %: handoff state % is not one made for the start of its unit',\n        NEW.ordinal, NEW.job_id, NEW.state_before_id USING ERRCODE = 'check_violation';\n    END IF;\n  ELSE\n    SELECT state_after_id INTO expected FROM chunks\n     WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1 AND status = 'done';\n    IF expected IS DISTINCT FROM NEW.state_before_id THEN\n      RAISE EXCEPTION 'chunk % of job %: state_before % is not the state left by its predecessor (%)',\n        NEW.ordinal, NEW.job_id, NEW.state_before_id, expected USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  IF NEW.state_after_id IS NOT NULL THEN\n    SELECT s.parent_id, v.chunk_id INTO after_parent, after_chunk\n      FROM coherence_states s LEFT JOIN chunk_versions v ON v.id = s.chunk_version_id\n     WHERE s.id = NEW.state_after_id;\n    IF after_parent IS DISTINCT FROM NEW.state_before_id OR after_chunk IS DISTINCT FROM NEW.id THEN\n      RAISE EXCEPTION 'chunk % of job %: state_after % does not follow state_before % from a version of this chunk',\n        NEW.ordinal, NEW.job_id, NEW.state_after_id, NEW.state_before_id USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER chunks_chain BEFORE INSERT OR UPDATE ON chunks\n  FOR EACH ROW EXECUTE FUNCTION quire_chunk_chain();\n",
    'plan_nodes_rules': "\nCREATE OR REPLACE FUNCTION quire_plan_node_rules() RETURNS trigger AS $$\nDECLARE children bigint; first record; pred_state bigint;\nBEGIN\n  IF NEW.status IS NOT DISTINCT FROM OLD.status THEN\n    RETURN NEW;\n  END IF;\n  IF NEW.status IN ('expanded', 'done') AND NEW.level <> 'section' THEN\n    SELECT sum(budget_words) INTO children FROM plan_nodes WHERE parent_id = NEW.id;\n    IF children < NEW.budget_words THEN\n      RAISE EXCEPTION '% % of job %: its children budget % words, less than its own %',\n        NEW.level, NEW.id, NEW.job_id, children, NEW.budget_words USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  IF NEW.status = 'done' THEN\n    SELECT id, ordinal, state_before_id INTO first FROM chunks WHERE unit_id = NEW.id ORDER BY ordinal LIMIT 1;\n    IF FOUND THEN  -- a unit: complete only with all its chunks and a validated seam\n      IF EXISTS (SELECT 1 FROM chunks WHERE unit_id = NEW.id AND status <> 'done') THEN\n        RAISE EXCEPTION 'unit % of job % cannot be complete: not all its chunks are done', NEW.id, NEW.job_id\n          USING ERRCODE = 'check_violation';\n      END IF;\n      IF first.ordinal > 0 THEN\n        SELECT state_after_id INTO pred_state FROM chunks\n         WHERE job_id = NEW.job_id AND ordinal = first.ordinal - 1 AND status = 'done';\n        IF NOT EXISTS (SELECT 1 FROM seam_checks s\n                        WHERE s.unit_id = NEW.id AND s.validated AND s.chunk_id = first.id\n                          AND s.predecessor_state_id = pred_state AND s.successor_state_id = first.state_before_id) THEN\n          RAISE EXCEPTION 'unit % of job % cannot be complete: its seam is not validated against %',\n            NEW.id, NEW.job_id, 'its predecessor''s real end state' USING ERRCODE = 'check_violation';\n        END IF;\n      END IF;\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER plan_nodes_rules BEFORE UPDATE ON plan_nodes\n  FOR EACH ROW EXECUTE FUNCTION quire_plan_node_rules();\n",
    'chunk_versions_immutable': "\nCREATE OR REPLACE FUNCTION quire_reject_update() RETURNS trigger AS $$\nBEGIN\n  RAISE EXCEPTION '% row % of job % is immutable: UPDATE rejected', TG_TABLE_NAME, OLD.id, OLD.job_id\n    USING ERRCODE = 'insufficient_privilege';\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER chunk_versions_immutable BEFORE UPDATE ON chunk_versions\n  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();\n",
    'seam_checks_immutable': '\nCREATE TRIGGER seam_checks_immutable BEFORE UPDATE ON seam_checks\n  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();\n',
}
NEW_TRIGGERS = ["plan_nodes_rules", "chunk_versions_immutable", "seam_checks_immutable"]
JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    # The chain triggers are replaced after the backfills below (the new ones reject UPDATEs).
    op.execute("DROP TRIGGER IF EXISTS coherence_states_chain ON coherence_states")
    op.execute("DROP TRIGGER IF EXISTS chunks_chain ON chunks")

    # sections -> plan_nodes (a new table: the rows keep their ids)
    op.create_table(
        "plan_nodes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("level", sa.Text(), server_default="section", nullable=False),
        sa.Column("depth", sa.Integer(), server_default="1", nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("heading_key", sa.Text(), nullable=True),
        sa.Column("purpose", sa.Text(), server_default="", nullable=False),
        sa.Column("key_points", JSONB, server_default="[]", nullable=False),
        sa.Column("introduces", JSONB, server_default="[]", nullable=False),
        sa.Column("relies_on", JSONB, server_default="[]", nullable=False),
        sa.Column("budget_words", sa.Integer(), nullable=False),
        sa.Column("is_continuation", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("budget_words >= 1", name=op.f("ck_plan_nodes_budget")),
        sa.CheckConstraint("level IN ('book', 'part', 'chapter', 'section')", name=op.f("ck_plan_nodes_level")),
        sa.CheckConstraint(
            "status IN ('pending', 'expanded', 'writing', 'written', 'done')", name=op.f("ck_plan_nodes_status")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_plan_nodes_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["parent_id", "job_id"],
            ["plan_nodes.id", "plan_nodes.job_id"],
            name=op.f("fk_plan_nodes_parent_id_job_id_plan_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_nodes")),
        sa.UniqueConstraint("id", "job_id", name=op.f("uq_plan_nodes_id_job_id")),
        sa.UniqueConstraint("job_id", "heading_key", name=op.f("uq_plan_nodes_job_id_heading_key")),
        sa.UniqueConstraint("job_id", "position", name=op.f("uq_plan_nodes_job_id_position")),
    )
    op.create_index("ix_plan_nodes_job_id", "plan_nodes", ["job_id"], unique=False)
    op.create_index("ix_plan_nodes_parent_id", "plan_nodes", ["parent_id"], unique=False)
    op.execute(
        "INSERT INTO plan_nodes (id, job_id, level, depth, ordinal, position, title, purpose, key_points, "
        "budget_words, is_continuation, status, created_at) OVERRIDING SYSTEM VALUE "
        "SELECT id, job_id, 'section', 1, ordinal, ordinal, title, summary, key_points, target_words, "
        "is_continuation, status, created_at FROM sections"
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('plan_nodes', 'id'), COALESCE((SELECT max(id) FROM plan_nodes), 0) + 1,"
        " false)"
    )
    for table in ("chunks", "stitch_results"):
        op.drop_constraint(f"fk_{table}_section_id_sections", table, type_="foreignkey")
        op.create_foreign_key(
            op.f(f"fk_{table}_section_id_plan_nodes"), table, "plan_nodes", ["section_id"], ["id"], ondelete="CASCADE"
        )
    op.drop_index("ix_sections_job_id", table_name="sections")
    op.drop_table("sections")

    # chunks: their unit; versions of their text
    op.add_column("chunks", sa.Column("unit_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_chunks_unit_id_plan_nodes"), "chunks", "plan_nodes", ["unit_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index(op.f("ix_chunks_unit_id"), "chunks", ["unit_id"], unique=False)
    op.create_table(
        "chunk_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("chunk_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("word_count", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("detail", JSONB, server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "reason IN ('written', 'trim', 'stitch', 'seam_repair')", name=op.f("ck_chunk_versions_reason")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_chunk_versions_version")),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.id"], name=op.f("fk_chunk_versions_chunk_id_chunks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_chunk_versions_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunk_versions")),
        sa.UniqueConstraint("chunk_id", "version", name=op.f("uq_chunk_versions_chunk_id_version")),
    )
    op.create_index(op.f("ix_chunk_versions_job_id"), "chunk_versions", ["job_id"], unique=False)
    op.execute(
        "INSERT INTO chunk_versions (job_id, chunk_id, version, reason, text, word_count, sha256, created_at) "
        "SELECT job_id, id, 1, 'written', COALESCE(text, ''), word_count, encode(sha256(convert_to("
        "COALESCE(text, ''), 'UTF8')), 'hex'), COALESCE(completed_at, created_at) FROM chunks WHERE status = 'done'"
    )

    # coherence states: kinds, the version or unit they come from
    op.add_column("coherence_states", sa.Column("kind", sa.Text(), server_default="chunk", nullable=False))
    op.add_column("coherence_states", sa.Column("chunk_version_id", sa.BigInteger(), nullable=True))
    op.add_column("coherence_states", sa.Column("unit_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE coherence_states SET kind = 'root' WHERE ordinal = 0")
    op.execute(
        "UPDATE coherence_states s SET chunk_version_id = v.id FROM chunks c JOIN chunk_versions v "
        "ON v.chunk_id = c.id AND v.version = 1 WHERE c.state_after_id = s.id"
    )
    op.execute("ALTER TABLE coherence_states DROP CONSTRAINT uq_coherence_states_job_id_ordinal")
    op.execute("ALTER TABLE coherence_states DROP CONSTRAINT ck_coherence_states_root_has_no_parent")
    op.create_unique_constraint(
        op.f("uq_coherence_states_job_id_kind_ordinal"), "coherence_states", ["job_id", "kind", "ordinal"]
    )
    op.create_check_constraint(
        op.f("ck_coherence_states_kind"), "coherence_states", "kind IN ('root', 'chunk', 'handoff')"
    )
    op.create_check_constraint(
        op.f("ck_coherence_states_only_chunk_states_have_parents"),
        "coherence_states",
        "(kind = 'chunk') = (parent_id IS NOT NULL)",
    )
    op.create_check_constraint(op.f("ck_coherence_states_root_is_first"), "coherence_states", "kind <> 'root' OR ordinal = 0")
    op.create_foreign_key(
        op.f("fk_coherence_states_chunk_version_id_chunk_versions"),
        "coherence_states",
        "chunk_versions",
        ["chunk_version_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        op.f("fk_coherence_states_unit_id_plan_nodes"),
        "coherence_states",
        "plan_nodes",
        ["unit_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        op.f("ix_coherence_states_chunk_version_id"), "coherence_states", ["chunk_version_id"], unique=False
    )
    op.create_index(op.f("ix_coherence_states_unit_id"), "coherence_states", ["unit_id"], unique=False)

    # seams
    op.create_table(
        "seam_checks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("unit_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk_id", sa.BigInteger(), nullable=False),
        sa.Column("predecessor_chunk_id", sa.BigInteger(), nullable=False),
        sa.Column("predecessor_state_id", sa.BigInteger(), nullable=False),
        sa.Column("successor_state_id", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("differences", JSONB, server_default="{}", nullable=False),
        sa.Column("conflicts", JSONB, server_default="[]", nullable=False),
        sa.Column("repaired", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("repair_version_id", sa.BigInteger(), nullable=True),
        sa.Column("validated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("mode IN ('strict','handoff')", name=op.f("ck_seam_checks_mode")),
        sa.CheckConstraint(
            "(mode = 'strict') = (predecessor_state_id = successor_state_id)",
            name=op.f("ck_seam_checks_strict_means_same"),
        ),
        sa.CheckConstraint(
            "repaired = (repair_version_id IS NOT NULL)", name=op.f("ck_seam_checks_repair_has_version")
        ),
        sa.ForeignKeyConstraint(["chunk_id"], ["chunks.id"], name=op.f("fk_seam_checks_chunk_id_chunks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_seam_checks_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["predecessor_chunk_id"],
            ["chunks.id"],
            name=op.f("fk_seam_checks_predecessor_chunk_id_chunks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["predecessor_state_id"],
            ["coherence_states.id"],
            name=op.f("fk_seam_checks_predecessor_state_id_coherence_states"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["repair_version_id"],
            ["chunk_versions.id"],
            name=op.f("fk_seam_checks_repair_version_id_chunk_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["successor_state_id"],
            ["coherence_states.id"],
            name=op.f("fk_seam_checks_successor_state_id_coherence_states"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["unit_id"], ["plan_nodes.id"], name=op.f("fk_seam_checks_unit_id_plan_nodes"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seam_checks")),
        sa.UniqueConstraint("unit_id", name=op.f("uq_seam_checks_unit_id")),
    )
    for col in ("chunk_id", "job_id", "predecessor_chunk_id", "predecessor_state_id", "successor_state_id"):
        op.create_index(op.f(f"ix_seam_checks_{col}"), "seam_checks", [col], unique=False)

    # model calls: committed as pending before the request is sent
    op.drop_constraint(op.f("ck_llm_calls_status"), "llm_calls", type_="check")
    op.create_check_constraint(op.f("ck_llm_calls_status"), "llm_calls", "status IN ('pending','ok','error')")
    op.create_check_constraint(
        op.f("ck_llm_calls_completed_unless_pending"), "llm_calls", "status = 'pending' OR completed_at IS NOT NULL"
    )
    op.alter_column("llm_calls", "latency_ms", nullable=True)
    op.alter_column("llm_calls", "completed_at", nullable=True)

    # jobs: units written and done
    op.add_column("jobs", sa.Column("units_total", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("units_done", sa.Integer(), server_default="0", nullable=False))

    for ddl in DDL.values():
        op.execute(ddl)


def downgrade() -> None:
    for name in NEW_TRIGGERS:
        table = "plan_nodes" if name.startswith("plan_nodes") else name.rsplit("_", 1)[0]
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS quire_plan_node_rules()")
    op.execute("DROP FUNCTION IF EXISTS quire_reject_update()")
    op.execute("DROP TRIGGER IF EXISTS coherence_states_chain ON coherence_states")
    op.execute("DROP TRIGGER IF EXISTS chunks_chain ON chunks")
    op.execute("UPDATE llm_calls SET status = 'error', error = 'interrupted', completed_at = started_at, "
               "latency_ms = 0 WHERE status = 'pending'")
    op.drop_constraint(op.f("ck_llm_calls_completed_unless_pending"), "llm_calls", type_="check")
    op.drop_constraint(op.f("ck_llm_calls_status"), "llm_calls", type_="check")
    op.create_check_constraint(op.f("ck_llm_calls_status"), "llm_calls", "status IN ('ok','error')")
    op.alter_column("llm_calls", "latency_ms", nullable=False)
    op.alter_column("llm_calls", "completed_at", nullable=False)
    op.drop_column("jobs", "units_done")
    op.drop_column("jobs", "units_total")
    op.drop_table("seam_checks")
    # Handoff states and the versions after the first have no place in revision 0001.
    op.execute("DELETE FROM coherence_states WHERE kind = 'handoff'")
    op.drop_constraint(op.f("fk_coherence_states_chunk_version_id_chunk_versions"), "coherence_states")
    op.drop_constraint(op.f("fk_coherence_states_unit_id_plan_nodes"), "coherence_states")
    op.drop_constraint(op.f("uq_coherence_states_job_id_kind_ordinal"), "coherence_states")
    for ck in ("kind", "only_chunk_states_have_parents", "root_is_first"):
        op.drop_constraint(op.f(f"ck_coherence_states_{ck}"), "coherence_states")
    op.drop_column("coherence_states", "unit_id")
    op.drop_column("coherence_states", "chunk_version_id")
    op.drop_column("coherence_states", "kind")
    op.create_unique_constraint(op.f("uq_coherence_states_job_id_ordinal"), "coherence_states", ["job_id", "ordinal"])
    op.create_check_constraint(
        op.f("ck_coherence_states_root_has_no_parent"), "coherence_states", "(ordinal = 0) = (parent_id IS NULL)"
    )
    op.drop_table("chunk_versions")
    op.drop_index(op.f("ix_chunks_unit_id"), table_name="chunks")
    op.drop_constraint(op.f("fk_chunks_unit_id_plan_nodes"), "chunks")
    op.drop_column("chunks", "unit_id")
    op.create_table(
        "sections",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), server_default="", nullable=False),
        sa.Column("key_points", JSONB, server_default="[]", nullable=False),
        sa.Column("target_words", sa.Integer(), nullable=False),
        sa.Column("is_continuation", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_sections_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sections")),
        sa.UniqueConstraint("job_id", "ordinal", name=op.f("uq_sections_job_id_ordinal")),
    )
    op.create_index("ix_sections_job_id", "sections", ["job_id"], unique=False)
    # The sections, numbered in document order (the levels above them have no place in 0001).
    op.execute(
        "INSERT INTO sections (id, job_id, ordinal, title, summary, key_points, target_words, is_continuation, "
        "status, created_at) OVERRIDING SYSTEM VALUE SELECT id, job_id, "
        "row_number() OVER (PARTITION BY job_id ORDER BY position) - 1, COALESCE(title, ''), purpose, key_points, "
        "budget_words, is_continuation, CASE WHEN status IN ('pending', 'done') THEN status ELSE 'writing' END, "
        "created_at FROM plan_nodes WHERE level = 'section'"
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('sections', 'id'), COALESCE((SELECT max(id) FROM sections), 0) + 1, false)"
    )
    for table in ("chunks", "stitch_results"):
        op.drop_constraint(f"fk_{table}_section_id_plan_nodes", table, type_="foreignkey")
        op.create_foreign_key(
            op.f(f"fk_{table}_section_id_sections"), table, "sections", ["section_id"], ["id"], ondelete="CASCADE"
        )
    op.drop_table("plan_nodes")
    # Revision 0001's chain triggers, as they were.
    from importlib import import_module

    initial = import_module("db.migrations.versions.0001_initial_schema")
    for ddl in initial.DDL:
        if "quire_state_chain" in ddl or "quire_chunk_chain" in ddl:
            op.execute(ddl)
