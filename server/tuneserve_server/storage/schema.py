"""The job store's tables as SQLAlchemy Core objects: what the store's queries are built from.

The schema itself is made only by the alembic migrations (storage/migrations/), on SQLite and
PostgreSQL alike; tests/unit/server/storage/test_schema_matches_migrations.py checks that these objects and the
migrated database agree, so the two cannot drift.

Dialect differences are in the column types: timestamps are `timestamptz` from the database
clock on PostgreSQL and epoch seconds (REAL) on SQLite (what every SQLite file has held since
the first release); names compare bytewise on both (PostgreSQL's "C" collation, SQLite's
default BINARY)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class Timestamp(TypeDecorator[datetime]):
    """An aware UTC datetime in Python; timestamptz on PostgreSQL, epoch seconds on SQLite."""

    impl = sa.TIMESTAMP(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Float())
        return dialect.type_descriptor(sa.TIMESTAMP(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return value.timestamp() if isinstance(value, datetime) else float(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromtimestamp(float(value), UTC)


# Column types shared with the migrations' DDL (which must not import this module: a
# migration is history and keeps its own copy of what it created).
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("seq", SEQ, sa.Identity(always=True), primary_key=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("adapter_name", BYTEWISE, nullable=False),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("hyperparameters_json", sa.Text, nullable=False),
    sa.Column("train_examples", sa.Integer, nullable=False),
    sa.Column("validation_examples", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
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
    sa.Column("lease_expires", Timestamp),
    sa.Column("info_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("progress_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("outputs_json", sa.Text, nullable=False, server_default="{}"),
    sa.UniqueConstraint("namespace", "request_id", name="jobs_namespace_request_id_key"),
    sqlite_autoincrement=True,
)

adapter_versions = sa.Table(
    "adapter_versions",
    metadata,
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
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    # Monotonic change counter across the registry (registry_clock): replicas poll seq > n.
    sa.Column("seq", sa.BigInteger, nullable=False),
    # What the version was trained from ({"init_from": "name@3", ...}): GetAdapter shows it.
    sa.Column("lineage_json", sa.Text, nullable=False, server_default="{}"),
    sa.PrimaryKeyConstraint("namespace", "name", "version", name="adapter_versions_pkey"),
)

# Named pointers at versions (0004); version 0: removed, kept so the change feed carries it.
adapter_aliases = sa.Table(
    "adapter_aliases",
    metadata,
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("name", BYTEWISE, nullable=False),
    sa.Column("alias", BYTEWISE, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "name", "alias", name="adapter_aliases_pkey"),
)

# Every alias move: who, when, from, to, why (bounded per adapter: sql_registry).
alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", SEQ, sa.Identity(always=True), primary_key=True),
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("name", BYTEWISE, nullable=False),
    sa.Column("alias", BYTEWISE, nullable=False),
    sa.Column("from_version", sa.Integer, nullable=False),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("time", Timestamp, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

adapter_counters = sa.Table(
    "adapter_counters",
    metadata,
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("name", BYTEWISE, nullable=False),
    sa.Column("next_version", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "name", name="adapter_counters_pkey"),
)

registry_clock = sa.Table(
    "registry_clock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("time", Timestamp, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("body_json", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("job_id", "seq", name="job_events_pkey"),
)

datasets = sa.Table(
    "datasets",
    metadata,
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
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("namespace", "upload_id", name="datasets_namespace_upload_id_key"),
    sqlite_autoincrement=True,
)

dataset_uploads = sa.Table(
    "dataset_uploads",
    metadata,
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("upload_id", sa.Text, nullable=False),
    sa.Column("header_json", sa.Text, nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False, server_default="0"),
    # The last chunk's time: an upload quiet for upload_ttl_s is forgotten.
    sa.Column("touched_at", Timestamp, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "upload_id", name="dataset_uploads_pkey"),
)

dataset_upload_chunks = sa.Table(
    "dataset_upload_chunks",
    metadata,
    sa.Column("namespace", BYTEWISE, nullable=False),
    sa.Column("upload_id", sa.Text, nullable=False),
    sa.Column("start_byte", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "upload_id", "start_byte", name="dataset_upload_chunks_pkey"),
)

# API keys (services/keys.py): only a salted scrypt hash of each secret is stored.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("tenant", BYTEWISE, nullable=False),
    sa.Column("roles_json", sa.Text, nullable=False),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("revoked_at", Timestamp),
)

sa.Index("jobs_state", jobs.c.state, jobs.c.seq)
sa.Index("jobs_ns", jobs.c.namespace, jobs.c.seq)
# What every claim's lease reaping scans: only RUNNING rows, by expiry. PostgreSQL only
# (the migrations make it there alone): see migrations/versions/0001_initial.py.
sa.Index(
    "jobs_running_lease",
    jobs.c.lease_expires,
    postgresql_where=jobs.c.state == "RUNNING",
    info={"dialects": ("postgresql",)},
)
sa.Index("adapter_versions_seq", adapter_versions.c.seq)
sa.Index("adapter_aliases_seq", adapter_aliases.c.seq)
sa.Index("alias_history_adapter", alias_history.c.namespace, alias_history.c.name, alias_history.c.id)
sa.Index("datasets_ns", datasets.c.namespace, datasets.c.seq)
sa.Index("api_keys_tenant", api_keys.c.tenant, api_keys.c.key_id)

# Listing datasets never reads their bytes.
DATASET_COLUMNS = tuple(c for c in datasets.c if c.name != "content")
