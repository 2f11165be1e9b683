"""Feedback (issue #13 item 4): served predictions (bounded: TTL + per-tenant cap), the
feedback on them, and the per-adapter setting that says whether served inputs are stored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As in 0002: timestamptz and bytewise text on PostgreSQL; epoch seconds and BINARY on SQLite.
TS = sa.TIMESTAMP(timezone=True).with_variant(sa.Float(), "sqlite")
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("adapter_name", BYTEWISE, nullable=False),
        sa.Column("adapter_version", sa.Integer, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("score", sa.Float(precision=53), nullable=False, server_default="0"),
        sa.Column("input_text", sa.Text),
        sa.Column("output_text", sa.Text),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("predictions_ns_time", "predictions", ["namespace", "created_at"])
    op.create_index("predictions_time", "predictions", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("seq", SEQ, sa.Identity(always=True), primary_key=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("prediction_id", sa.Text, nullable=False),
        sa.Column("adapter_name", BYTEWISE, nullable=False),
        sa.Column("adapter_version", sa.Integer, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("served_label", sa.Text, nullable=False, server_default=""),
        sa.Column("served_score", sa.Float(precision=53), nullable=False, server_default="0"),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("rating", sa.Integer),
        sa.Column("corrected_text", sa.Text, nullable=False, server_default=""),
        sa.Column("input_text", sa.Text, nullable=False, server_default=""),
        sa.Column("served_text", sa.Text, nullable=False, server_default=""),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.Column("key_id", sa.Text, nullable=False, server_default=""),
        sa.Column("predicted_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("namespace", "prediction_id", name="feedback_namespace_prediction_id_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("feedback_adapter", "feedback", ["namespace", "adapter_name", "adapter_version", "seq"])
    op.create_table(
        "adapter_feedback_settings",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("name", BYTEWISE, nullable=False),
        sa.Column("store_inputs", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", name="adapter_feedback_settings_pkey"),
    )


def downgrade() -> None:
    op.drop_table("adapter_feedback_settings")
    op.drop_table("feedback")
    op.drop_table("predictions")
