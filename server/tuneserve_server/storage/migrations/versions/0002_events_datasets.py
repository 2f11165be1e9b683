"""Job events, datasets and uploads; jobs gain info/progress/outputs JSON columns.

Events are numbered per job (1, 2, 3, ...)
under the job row's lock, so readers polling `seq > n` never see a gap fill in later.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# PostgreSQL: timestamptz from the database clock and bytewise ("C") text. SQLite (the
# embedded store): epoch seconds and its default BINARY collation, which also compares bytes.
TS = sa.TIMESTAMP(timezone=True).with_variant(sa.Float(), "sqlite")
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias


def upgrade() -> None:
    for column in ("info_json", "progress_json", "outputs_json"):
        op.add_column("jobs", sa.Column(column, sa.Text, nullable=False, server_default="{}"))

    op.create_table(
        "job_events",
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("body_json", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq", name="job_events_pkey"),
    )

    op.create_table(
        "datasets",
        sa.Column("seq", SEQ, sa.Identity(always=True), primary_key=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("upload_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("usable_rows", sa.Integer, nullable=False),
        sa.Column("report_json", sa.Text, nullable=False),
        sa.Column("text_field", sa.Text, nullable=False),
        sa.Column("label_field", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("namespace", "upload_id", name="datasets_namespace_upload_id_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("datasets_ns", "datasets", ["namespace", "seq"])

    op.create_table(
        "dataset_uploads",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("upload_id", sa.Text, nullable=False),
        sa.Column("header_json", sa.Text, nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False, server_default="0"),
        # The last chunk's time: an upload quiet for upload_ttl_s is forgotten.
        sa.Column("touched_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "upload_id", name="dataset_uploads_pkey"),
    )
    op.create_table(
        "dataset_upload_chunks",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("upload_id", sa.Text, nullable=False),
        sa.Column("start_byte", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "upload_id", "start_byte", name="dataset_upload_chunks_pkey"),
    )


def downgrade() -> None:
    op.drop_table("dataset_upload_chunks")
    op.drop_table("dataset_uploads")
    op.drop_table("datasets")
    op.drop_table("job_events")
    for column in ("outputs_json", "progress_json", "info_json"):
        op.drop_column("jobs", column)
