"""job status rules: a trigger on the allowed status transitions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

queued -> running | failed | cancelled; running -> succeeded | failed | cancelled; failed or
cancelled -> running only as a resume (a new run, so a new workflow id); a succeeded job never
changes again, and a job's workflow id changes only with a resume. Rows are not touched.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# A frozen copy of db/ddl.py's JOBS_STATUS_RULES at this revision: later edits there need a new migration.
JOBS_STATUS_RULES = "\nCREATE OR REPLACE FUNCTION quire_job_status_rules() RETURNS trigger AS $$\nBEGIN\n  IF NEW.workflow_id IS DISTINCT FROM OLD.workflow_id\n     AND NOT (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running') THEN\n    RAISE EXCEPTION 'job %: its workflow changes only when a failed or cancelled job is resumed (% -> %)',\n      OLD.id, OLD.status, NEW.status USING ERRCODE = 'check_violation';\n  END IF;\n  IF NEW.status IS NOT DISTINCT FROM OLD.status\n     OR (OLD.status = 'queued' AND NEW.status IN ('running', 'failed', 'cancelled'))\n     OR (OLD.status = 'running' AND NEW.status IN ('succeeded', 'failed', 'cancelled'))\n     OR (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running'\n         AND NEW.workflow_id IS DISTINCT FROM OLD.workflow_id) THEN\n    RETURN NEW;\n  END IF;\n  RAISE EXCEPTION 'job %: % -> % is not an allowed status change%', OLD.id, OLD.status, NEW.status,\n    CASE WHEN NEW.status = 'running' AND OLD.status IN ('failed', 'cancelled') THEN ' (only a resume, a new run)'\n         ELSE '' END\n    USING ERRCODE = 'check_violation';\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER jobs_status_rules BEFORE UPDATE OF status, workflow_id ON jobs\n  FOR EACH ROW EXECUTE FUNCTION quire_job_status_rules();\n"


def upgrade() -> None:
    op.execute(JOBS_STATUS_RULES)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_status_rules ON jobs")
    op.execute("DROP FUNCTION IF EXISTS quire_job_status_rules()")
