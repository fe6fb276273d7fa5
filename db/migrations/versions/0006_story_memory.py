"""story memory: the ledger (entities, attributes, events, threads, facts), summaries of chapters
and parts, continuity findings, and seams that are validated only by a check that passed

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

New tables are immutable (triggers); chunks gain the version whose memory is current, attempts
what the memory put in their prompt, states who made them (plan, model, fallback, derived), seams
a status (validated, repaired, flagged) and the checks that ran. A unit completes with a flagged
seam only while its open findings are recorded. Existing rows keep their meaning: old states are
"derived", old seams "validated".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# A frozen copy of db/ddl.py's quire_plan_node_rules at this revision (later edits: a new migration).
PLAN_NODE_RULES = "\nCREATE OR REPLACE FUNCTION quire_plan_node_rules() RETURNS trigger AS $$\nDECLARE children bigint; first record; pred_state bigint;\nBEGIN\n  IF NEW.status IS NOT DISTINCT FROM OLD.status THEN\n    RETURN NEW;\n  END IF;\n  IF NEW.status IN (\'expanded\', \'done\') AND NEW.level <> \'section\' THEN\n    SELECT sum(budget_words) INTO children FROM plan_nodes WHERE parent_id = NEW.id;\n    IF children < NEW.budget_words THEN\n      RAISE EXCEPTION \'% % of job %: its children budget % words, less than its own %\',\n        NEW.level, NEW.id, NEW.job_id, children, NEW.budget_words USING ERRCODE = \'check_violation\';\n    END IF;\n  END IF;\n  IF NEW.status = \'done\' THEN\n    SELECT id, ordinal, state_before_id INTO first FROM chunks WHERE unit_id = NEW.id ORDER BY ordinal LIMIT 1;\n    IF FOUND THEN  -- a unit: complete only with all its chunks and a validated seam\n      IF EXISTS (SELECT 1 FROM chunks WHERE unit_id = NEW.id AND status <> \'done\') THEN\n        RAISE EXCEPTION \'unit % of job % cannot be complete: not all its chunks are done\', NEW.id, NEW.job_id\n          USING ERRCODE = \'check_violation\';\n      END IF;\n      IF first.ordinal > 0 THEN\n        SELECT state_after_id INTO pred_state FROM chunks\n         WHERE job_id = NEW.job_id AND ordinal = first.ordinal - 1 AND status = \'done\';\n        -- Its seam was checked against the predecessor\'s real end state and passed (or its repair\n        -- did), or what the check found could not be repaired and is reported as open findings.\n        IF NOT EXISTS (SELECT 1 FROM seam_checks s\n                        WHERE s.unit_id = NEW.id AND s.chunk_id = first.id\n                          AND s.predecessor_state_id = pred_state AND s.successor_state_id = first.state_before_id\n                          AND (s.validated OR (s.status = \'flagged\' AND EXISTS (\n                                 SELECT 1 FROM continuity_findings f\n                                  WHERE f.status = \'open\' AND f.severity = \'major\'\n                                    AND (f.seam_check_id = s.id OR (s.mode = \'strict\' AND f.chunk_id = s.chunk_id\n                                                                    AND f.seam_check_id IS NULL)))))) THEN\n          RAISE EXCEPTION \'unit % of job % cannot be complete: its seam is not validated against %\',\n            NEW.id, NEW.job_id, \'its predecessor\'\'s real end state\' USING ERRCODE = \'check_violation\';\n        END IF;\n      END IF;\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\n"
IMMUTABLE = ("ledger_entries", "node_summaries", "continuity_findings")
ERROR_CODES = ('E_LENGTH_NOT_MET', 'E_BUDGET_EXHAUSTED', 'E_LLM_UNAVAILABLE', 'E_INPUT_INVALID', 'E_CANCELLED', 'E_INTERNAL', 'E_QUOTA_EXCEEDED', 'E_CONTINUITY')


def _error_codes(codes: tuple[str, ...]) -> str:
    return "error_code IS NULL OR error_code IN (" + ", ".join(repr(c) for c in codes) + ")"


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("chunk_id", sa.BigInteger(), nullable=True),
        sa.Column("chunk_version_id", sa.BigInteger(), nullable=True),
        sa.Column("state_id", sa.BigInteger(), nullable=True),
        sa.Column("doc_order", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("attribute", sa.Text(), nullable=True),
        sa.Column("value", sa.Text(), server_default="", nullable=False),
        sa.Column("quote", sa.Text(), server_default="", nullable=False),
        sa.Column("etype", sa.Text(), nullable=True),
        sa.Column("when", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(chunk_id IS NULL) = (source = 'plan')", name=op.f("ck_ledger_entries_plan_entries_have_no_chunk")
        ),
        sa.CheckConstraint(
            "kind IN ('entity', 'attribute', 'event', 'thread', 'resolved', 'fact')",
            name=op.f("ck_ledger_entries_kind"),
        ),
        sa.CheckConstraint("source IN ('plan', 'model', 'fallback')", name=op.f("ck_ledger_entries_source")),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.id"], name=op.f("fk_ledger_entries_chunk_id_chunks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["chunk_version_id"],
            ["chunk_versions.id"],
            name=op.f("fk_ledger_entries_chunk_version_id_chunk_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ledger_entries_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["state_id"],
            ["coherence_states.id"],
            name=op.f("fk_ledger_entries_state_id_coherence_states"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index(op.f("ix_ledger_entries_chunk_id"), "ledger_entries", ["chunk_id"], unique=False)
    op.create_index("ix_ledger_entries_job_key", "ledger_entries", ["job_id", "key"], unique=False)
    op.create_index("ix_ledger_entries_job_order", "ledger_entries", ["job_id", "doc_order"], unique=False)
    op.create_index(op.f("ix_ledger_entries_state_id"), "ledger_entries", ["state_id"], unique=False)
    op.create_index("ix_ledger_entries_version", "ledger_entries", ["chunk_version_id"], unique=False)
    op.create_table(
        "node_summaries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("node_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("llm_call_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("source IN ('model', 'fallback')", name=op.f("ck_node_summaries_source")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_node_summaries_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["llm_call_id"], ["llm_calls.id"], name=op.f("fk_node_summaries_llm_call_id_llm_calls"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["plan_nodes.id"], name=op.f("fk_node_summaries_node_id_plan_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_summaries")),
        sa.UniqueConstraint("node_id", "version", name=op.f("uq_node_summaries_node_id_version")),
    )
    op.create_index("ix_node_summaries_job_id", "node_summaries", ["job_id"], unique=False)
    op.create_table(
        "continuity_findings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("chunk_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk_version_id", sa.BigInteger(), nullable=True),
        sa.Column("seam_check_id", sa.BigInteger(), nullable=True),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("subtype", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("detector", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("quote", sa.Text(), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("quote_there", sa.Text(), server_default="", nullable=False),
        sa.Column("doc_order_there", sa.Integer(), nullable=True),
        sa.Column("llm_call_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("repair_version_id", sa.BigInteger(), nullable=True),
        sa.Column("repair_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(status = 'repaired') = (repair_version_id IS NOT NULL)",
            name=op.f("ck_continuity_findings_repair_has_version"),
        ),
        sa.CheckConstraint(
            "category IN ('characters', 'facts', 'timeline', 'plot', 'style')",
            name=op.f("ck_continuity_findings_category"),
        ),
        sa.CheckConstraint("severity IN ('minor', 'major')", name=op.f("ck_continuity_findings_severity")),
        sa.CheckConstraint("status IN ('open', 'repaired')", name=op.f("ck_continuity_findings_status")),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.id"], name=op.f("fk_continuity_findings_chunk_id_chunks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["chunk_version_id"],
            ["chunk_versions.id"],
            name=op.f("fk_continuity_findings_chunk_version_id_chunk_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["ledger_entries.id"],
            name=op.f("fk_continuity_findings_entry_id_ledger_entries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_continuity_findings_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["llm_call_id"],
            ["llm_calls.id"],
            name=op.f("fk_continuity_findings_llm_call_id_llm_calls"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["repair_version_id"],
            ["chunk_versions.id"],
            name=op.f("fk_continuity_findings_repair_version_id_chunk_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["seam_check_id"],
            ["seam_checks.id"],
            name=op.f("fk_continuity_findings_seam_check_id_seam_checks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_continuity_findings")),
    )
    op.create_index(op.f("ix_continuity_findings_chunk_id"), "continuity_findings", ["chunk_id"], unique=False)
    op.create_index("ix_continuity_findings_job_id", "continuity_findings", ["job_id"], unique=False)
    op.create_index("ix_continuity_findings_seam", "continuity_findings", ["seam_check_id"], unique=False)
    op.add_column(
        "chunk_attempts",
        sa.Column("memory", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
    )
    op.add_column("chunks", sa.Column("memory_version_id", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_chunks_memory_version_id"), "chunks", ["memory_version_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_chunks_memory_version_id_chunk_versions"),
        "chunks",
        "chunk_versions",
        ["memory_version_id"],
        ["id"],
        ondelete="SET NULL",
        use_alter=True,
    )
    op.add_column("coherence_states", sa.Column("source", sa.Text(), server_default="derived", nullable=False))
    op.add_column("seam_checks", sa.Column("status", sa.Text(), server_default="validated", nullable=False))
    op.add_column(
        "seam_checks", sa.Column("checks", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_coherence_states_source"), "coherence_states", "source IN ('plan', 'model', 'fallback', 'derived')"
    )
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(
        op.f("ck_chunk_versions_reason"),
        "chunk_versions",
        "reason IN ('written', 'trim', 'stitch', 'seam_repair', 'continuity_repair')",
    )
    op.create_check_constraint(
        op.f("ck_seam_checks_status"), "seam_checks", "status IN ('validated', 'repaired', 'flagged')"
    )
    op.create_check_constraint(
        op.f("ck_seam_checks_validated_means_passed"),
        "seam_checks",
        "validated = (status IN ('validated', 'repaired'))",
    )
    op.create_check_constraint(
        op.f("ck_seam_checks_repaired_status_has_repair"), "seam_checks", "status <> 'repaired' OR repaired"
    )
    op.drop_constraint(op.f("ck_jobs_error_code"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_error_code"), "jobs", _error_codes(ERROR_CODES))
    op.execute(PLAN_NODE_RULES)
    for table in IMMUTABLE:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION quire_reject_update()"
        )


def downgrade() -> None:
    import importlib

    old = importlib.import_module("db.migrations.versions.0003_book_scale")
    for table in IMMUTABLE:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}")
    op.execute(old.DDL["plan_nodes_rules"].split("CREATE TRIGGER")[0])
    for name in ("status", "validated_means_passed", "repaired_status_has_repair"):
        op.drop_constraint(op.f(f"ck_seam_checks_{name}"), "seam_checks", type_="check")
    op.execute("DELETE FROM chunk_versions WHERE reason = 'continuity_repair'")
    op.drop_constraint(op.f("ck_chunk_versions_reason"), "chunk_versions", type_="check")
    op.create_check_constraint(
        op.f("ck_chunk_versions_reason"), "chunk_versions", "reason IN ('written', 'trim', 'stitch', 'seam_repair')"
    )
    op.drop_constraint(op.f("ck_coherence_states_source"), "coherence_states", type_="check")
    op.execute("UPDATE jobs SET error_code = 'E_INTERNAL' WHERE error_code = 'E_CONTINUITY'")
    op.drop_constraint(op.f("ck_jobs_error_code"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_error_code"), "jobs", _error_codes(ERROR_CODES[:-1]))
    op.drop_column("seam_checks", "checks")
    op.drop_column("seam_checks", "status")
    op.drop_column("coherence_states", "source")
    op.drop_constraint(op.f("fk_chunks_memory_version_id_chunk_versions"), "chunks", type_="foreignkey")
    op.drop_index(op.f("ix_chunks_memory_version_id"), table_name="chunks")
    op.drop_column("chunks", "memory_version_id")
    op.drop_column("chunk_attempts", "memory")
    op.drop_index("ix_continuity_findings_seam", table_name="continuity_findings")
    op.drop_index("ix_continuity_findings_job_id", table_name="continuity_findings")
    op.drop_index(op.f("ix_continuity_findings_chunk_id"), table_name="continuity_findings")
    op.drop_table("continuity_findings")
    op.drop_index("ix_node_summaries_job_id", table_name="node_summaries")
    op.drop_table("node_summaries")
    op.drop_index("ix_ledger_entries_version", table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_state_id"), table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_job_order", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_job_key", table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_chunk_id"), table_name="ledger_entries")
    op.drop_table("ledger_entries")
