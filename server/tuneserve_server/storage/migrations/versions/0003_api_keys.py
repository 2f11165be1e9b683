"""API keys: one row per key, holding only a salted hash of its secret.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# As in 0002: timestamptz and bytewise text on PostgreSQL; epoch seconds and BINARY on SQLite.
TS = sa.TIMESTAMP(timezone=True).with_variant(sa.Float(), "sqlite")
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("tenant", BYTEWISE, nullable=False),
        sa.Column("roles_json", sa.Text, nullable=False),
        sa.Column("salt", sa.LargeBinary, nullable=False),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_index("api_keys_tenant", "api_keys", ["tenant", "key_id"])


def downgrade() -> None:
    op.drop_table("api_keys")
