"""nothing stuck: a plan version sent for review names the workflow it is sent to

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

A proposed plan version is an Update on its way to a job's run: the row names that run
(``workflow_id``), so that the reconciler can deliver it again, or reject it once that run has
ended. Versions proposed before this revision name their job's current run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("plan_versions", sa.Column("workflow_id", sa.Text(), nullable=True))
    op.execute(
        "UPDATE plan_versions p SET workflow_id = j.workflow_id FROM jobs j "
        "WHERE p.job_id = j.id AND p.status = 'proposed'"
    )
    op.create_check_constraint(
        op.f("ck_plan_versions_proposed_names_workflow"),
        "plan_versions",
        "status <> 'proposed' OR workflow_id IS NOT NULL",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_plan_versions_proposed_names_workflow"), "plan_versions", type_="check")
    op.drop_column("plan_versions", "workflow_id")
