"""Adapter aliases (named pointers at versions, `default` being what the bare name means),
their history, and a lineage column on adapter versions (what a version was trained from).

Every adapter that has versions gets `default` -> its newest version, which is what the bare
name meant before this revision, with one history entry saying so.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# As in 0002: timestamptz and bytewise text on PostgreSQL; epoch seconds and BINARY on SQLite.
TS = sa.TIMESTAMP(timezone=True).with_variant(sa.Float(), "sqlite")
BYTEWISE = sa.Text(collation="C").with_variant(sa.Text(), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias


def upgrade() -> None:
    op.add_column("adapter_versions", sa.Column("lineage_json", sa.Text, nullable=False, server_default="{}"))
    op.create_table(
        "adapter_aliases",
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("name", BYTEWISE, nullable=False),
        sa.Column("alias", BYTEWISE, nullable=False),
        # 0: removed (the row stays so that replicas polling the feed see the removal).
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        # The registry_clock seq of the last change: replicas poll seq > n, as for versions.
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", "alias", name="adapter_aliases_pkey"),
    )
    op.create_index("adapter_aliases_seq", "adapter_aliases", ["seq"])
    op.create_table(
        "alias_history",
        sa.Column("id", SEQ, sa.Identity(always=True), primary_key=True),
        sa.Column("namespace", BYTEWISE, nullable=False),
        sa.Column("name", BYTEWISE, nullable=False),
        sa.Column("alias", BYTEWISE, nullable=False),
        sa.Column("from_version", sa.Integer, nullable=False),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("alias_history_adapter", "alias_history", ["namespace", "name", "id"])

    # Backfill: default -> the newest live version of every adapter, at one new registry seq.
    bind = op.get_bind()
    newest = bind.execute(
        sa.text(
            "SELECT namespace, name, MAX(version) AS version FROM adapter_versions "
            "WHERE NOT deleted GROUP BY namespace, name"
        )
    ).fetchall()
    if not newest:
        return
    seq = bind.execute(sa.text("UPDATE registry_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq")).scalar()
    now: object = time.time() if bind.dialect.name == "sqlite" else datetime.now(UTC)
    aliases = sa.table(
        "adapter_aliases",
        sa.column("namespace"),
        sa.column("name"),
        sa.column("alias"),
        sa.column("version"),
        sa.column("updated_at"),
        sa.column("seq"),
    )
    history = sa.table(
        "alias_history",
        sa.column("namespace"),
        sa.column("name"),
        sa.column("alias"),
        sa.column("from_version"),
        sa.column("to_version"),
        sa.column("actor"),
        sa.column("tenant"),
        sa.column("reason"),
        sa.column("time"),
        sa.column("seq"),
    )
    rows = [{"namespace": r.namespace, "name": r.name, "version": r.version} for r in newest]
    op.bulk_insert(aliases, [{**r, "alias": "default", "updated_at": now, "seq": seq} for r in rows])
    op.bulk_insert(
        history,
        [
            {
                "namespace": r["namespace"],
                "name": r["name"],
                "alias": "default",
                "from_version": 0,
                "to_version": r["version"],
                "actor": "migration-0004",
                "tenant": r["namespace"],
                "reason": "aliases introduced: default = the newest version (what the bare name served)",
                "time": now,
                "seq": seq,
            }
            for r in rows
        ],
    )


def downgrade() -> None:
    op.drop_table("alias_history")
    op.drop_table("adapter_aliases")
    op.drop_column("adapter_versions", "lineage_json")
