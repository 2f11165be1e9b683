"""Jobs gain a kind: "train" (every row so far) or "evaluation" (issue #13: an evaluation is a
job of the same queue, claimed, leased, heartbeaten, cancelled and logged like a training job;
its results live in outputs_json).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"  # after aliases (0004); both branches started from 0003
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("kind", sa.Text, nullable=False, server_default="train"))
    # Listing a namespace's evaluations (or its training jobs) newest first.
    op.create_index("jobs_ns_kind", "jobs", ["namespace", "kind", "seq"])


def downgrade() -> None:
    op.drop_index("jobs_ns_kind", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
