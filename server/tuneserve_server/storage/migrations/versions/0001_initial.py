"""Initial schema: jobs (with leases), the adapter registry, its version counters and clock.

The schema of both job stores (SQLite and PostgreSQL). On PostgreSQL timestamps are
timestamptz set from the database clock, so leases on workers of several machines compare
against one clock; adapter names use the "C" collation so ordering and the adapter_names
page tokens compare bytes, as SQLite's default collation does.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# PostgreSQL: timestamptz from the database clock and bytewise ("C") text. SQLite (the
# embedded store): epoch seconds and its default BINARY collation, which also compares bytes.
TS = sa.TIMESTAMP(timezone=True).with_variant(sa.Float(), "sqlite")
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", SEQ, sa.Identity(always=True), primary_key=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("adapter_name", BYTEWISE, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        # JSON kept as text (not jsonb): the exact bytes round-trip, and jsonb refuses \u0000.
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("hyperparameters_json", sa.Text, nullable=False),
        sa.Column("train_examples", sa.Integer, nullable=False),
        sa.Column("validation_examples", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_steps", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("train_loss", sa.Float(precision=53)),
        sa.Column("metrics_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("adapter_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires", TS),
        sa.UniqueConstraint("namespace", "request_id", name="jobs_namespace_request_id_key"),
        sa.CheckConstraint(
            "state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')", name="jobs_state_check"
        ),
        sqlite_autoincrement=True,  # seqs are never reused (page tokens stay valid)
    )
    op.create_index("jobs_state", "jobs", ["state", "seq"])
    op.create_index("jobs_ns", "jobs", ["namespace", "seq"])
    # What every claim's lease reaping scans: only RUNNING rows, by expiry. PostgreSQL only:
    # SQLite's planner cannot use it for a bound state, and it costs every job write there.
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "jobs_running_lease",
            "jobs",
            ["lease_expires"],
            postgresql_where=sa.text("state = 'RUNNING'"),
        )

    op.create_table(
        "adapter_versions",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("name", BYTEWISE, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("labels_json", sa.Text, nullable=False),
        sa.Column("metrics_json", sa.Text, nullable=False),
        sa.Column("lora_rank", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", "version", name="adapter_versions_pkey"),
    )
    op.create_index("adapter_versions_seq", "adapter_versions", ["seq"])

    op.create_table(
        "adapter_counters",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("name", BYTEWISE, nullable=False),
        sa.Column("next_version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", name="adapter_counters_pkey"),
    )

    # The registry change clock: one row, bumped under its row lock (see postgres_store).
    op.create_table(
        "registry_clock",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="registry_clock_one_row"),
    )
    op.execute("INSERT INTO registry_clock (id, seq) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("registry_clock")
    op.drop_table("adapter_counters")
    op.drop_table("adapter_versions")
    op.drop_table("jobs")
