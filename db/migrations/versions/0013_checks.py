"""checks that never lie: a seam a check could not answer is ``unchecked`` (with why), and a
finding left open after repair attempts says what was tried

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-16

Seams gain the status ``unchecked`` and ``unchecked_reason`` (set exactly when unchecked); a unit
completes with an unchecked seam only while its reason is recorded. Findings gain ``tried``.
Existing rows keep their meaning.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Frozen copies of db/ddl.py's quire_plan_node_rules at this revision and at the one before.
PLAN_NODE_RULES = "\nCREATE OR REPLACE FUNCTION quire_plan_node_rules() RETURNS trigger AS $$\nDECLARE children bigint; first record; pred_state bigint;\nBEGIN\n  IF NEW.status IS NOT DISTINCT FROM OLD.status THEN\n    RETURN NEW;\n  END IF;\n  IF NEW.status IN ('expanded', 'done') AND NEW.level <> 'section' THEN\n    SELECT sum(budget_words) INTO children FROM plan_nodes WHERE parent_id = NEW.id;\n    IF children < NEW.budget_words THEN\n      RAISE EXCEPTION '% % of job %: its children budget % words, less than its own %',\n        NEW.level, NEW.id, NEW.job_id, children, NEW.budget_words USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  IF NEW.status = 'done' THEN\n    SELECT id, ordinal, state_before_id INTO first FROM chunks WHERE unit_id = NEW.id ORDER BY ordinal LIMIT 1;\n    IF FOUND THEN  -- a unit: complete only with all its chunks and a validated seam\n      IF EXISTS (SELECT 1 FROM chunks WHERE unit_id = NEW.id AND status <> 'done') THEN\n        RAISE EXCEPTION 'unit % of job % cannot be complete: not all its chunks are done', NEW.id, NEW.job_id\n          USING ERRCODE = 'check_violation';\n      END IF;\n      IF first.ordinal > 0 THEN\n        SELECT state_after_id INTO pred_state FROM chunks\n         WHERE job_id = NEW.job_id AND ordinal = first.ordinal - 1 AND status = 'done';\n        -- Its seam was checked against the predecessor's real end state and passed (or its repair\n        -- did), or what the check found could not be repaired and is reported as open findings,\n        -- or a check could not answer and the seam says so, with why.\n        IF NOT EXISTS (SELECT 1 FROM seam_checks s\n                        WHERE s.unit_id = NEW.id AND s.chunk_id = first.id\n                          AND s.predecessor_state_id = pred_state AND s.successor_state_id = first.state_before_id\n                          AND (s.validated OR (s.status = 'unchecked' AND s.unchecked_reason <> '')\n                               OR (s.status = 'flagged' AND EXISTS (\n                                 SELECT 1 FROM continuity_findings f\n                                  WHERE f.status = 'open' AND f.severity = 'major'\n                                    AND (f.seam_check_id = s.id OR (s.mode = 'strict' AND f.chunk_id = s.chunk_id\n                                                                    AND f.seam_check_id IS NULL)))))) THEN\n          RAISE EXCEPTION 'unit % of job % cannot be complete: its seam is not validated against %',\n            NEW.id, NEW.job_id, 'its predecessor''s real end state' USING ERRCODE = 'check_violation';\n        END IF;\n      END IF;\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\n"
OLD_PLAN_NODE_RULES = "\nCREATE OR REPLACE FUNCTION quire_plan_node_rules() RETURNS trigger AS $$\nDECLARE children bigint; first record; pred_state bigint;\nBEGIN\n  IF NEW.status IS NOT DISTINCT FROM OLD.status THEN\n    RETURN NEW;\n  END IF;\n  IF NEW.status IN ('expanded', 'done') AND NEW.level <> 'section' THEN\n    SELECT sum(budget_words) INTO children FROM plan_nodes WHERE parent_id = NEW.id;\n    IF children < NEW.budget_words THEN\n      RAISE EXCEPTION '% % of job %: its children budget % words, less than its own %',\n        NEW.level, NEW.id, NEW.job_id, children, NEW.budget_words USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  IF NEW.status = 'done' THEN\n    SELECT id, ordinal, state_before_id INTO first FROM chunks WHERE unit_id = NEW.id ORDER BY ordinal LIMIT 1;\n    IF FOUND THEN  -- a unit: complete only with all its chunks and a validated seam\n      IF EXISTS (SELECT 1 FROM chunks WHERE unit_id = NEW.id AND status <> 'done') THEN\n        RAISE EXCEPTION 'unit % of job % cannot be complete: not all its chunks are done', NEW.id, NEW.job_id\n          USING ERRCODE = 'check_violation';\n      END IF;\n      IF first.ordinal > 0 THEN\n        SELECT state_after_id INTO pred_state FROM chunks\n         WHERE job_id = NEW.job_id AND ordinal = first.ordinal - 1 AND status = 'done';\n        -- Its seam was checked against the predecessor's real end state and passed (or its repair\n        -- did), or what the check found could not be repaired and is reported as open findings.\n        IF NOT EXISTS (SELECT 1 FROM seam_checks s\n                        WHERE s.unit_id = NEW.id AND s.chunk_id = first.id\n                          AND s.predecessor_state_id = pred_state AND s.successor_state_id = first.state_before_id\n                          AND (s.validated OR (s.status = 'flagged' AND EXISTS (\n                                 SELECT 1 FROM continuity_findings f\n                                  WHERE f.status = 'open' AND f.severity = 'major'\n                                    AND (f.seam_check_id = s.id OR (s.mode = 'strict' AND f.chunk_id = s.chunk_id\n                                                                    AND f.seam_check_id IS NULL)))))) THEN\n          RAISE EXCEPTION 'unit % of job % cannot be complete: its seam is not validated against %',\n            NEW.id, NEW.job_id, 'its predecessor''s real end state' USING ERRCODE = 'check_violation';\n        END IF;\n      END IF;\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\n"

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("seam_checks", sa.Column("unchecked_reason", sa.Text(), nullable=True))
    op.drop_constraint(op.f("ck_seam_checks_status"), "seam_checks", type_="check")
    op.create_check_constraint(
        op.f("ck_seam_checks_status"), "seam_checks", "status IN ('validated', 'repaired', 'flagged', 'unchecked')"
    )
    op.create_check_constraint(
        op.f("ck_seam_checks_unchecked_has_reason"),
        "seam_checks",
        "(status = 'unchecked') = (unchecked_reason IS NOT NULL)",
    )
    op.add_column("continuity_findings", sa.Column("tried", sa.Text(), server_default="", nullable=False))
    op.execute(PLAN_NODE_RULES)


def downgrade() -> None:
    op.execute(OLD_PLAN_NODE_RULES)
    op.drop_column("continuity_findings", "tried")
    op.execute("DELETE FROM seam_checks WHERE status = 'unchecked'")
    op.drop_constraint(op.f("ck_seam_checks_unchecked_has_reason"), "seam_checks", type_="check")
    op.drop_constraint(op.f("ck_seam_checks_status"), "seam_checks", type_="check")
    op.create_check_constraint(
        op.f("ck_seam_checks_status"), "seam_checks", "status IN ('validated', 'repaired', 'flagged')"
    )
    op.drop_column("seam_checks", "unchecked_reason")
