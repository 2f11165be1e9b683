"""The tables the store queries (storage/schema.py) are the tables the migrations make, on
both databases: alembic's autogenerate comparison finds nothing to change."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tuneserve_server.storage import schema


def _diff(engine: sa.Engine) -> list[object]:
    def made_here(obj: object, _name: object, _type: object, _reflected: object, _compare_to: object) -> bool:
        # An object the migrations make on some databases only (info["dialects"]).
        return engine.dialect.name in getattr(obj, "info", {}).get("dialects", (engine.dialect.name,))

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": made_here})
        return compare_metadata(context, schema.metadata)


def test_sqlite_schema_matches(tmp_path):
    from tuneserve_server.storage.sqlite_store import SqliteStore

    store = SqliteStore(tmp_path / "jobs.db")
    try:
        assert _diff(store._engine) == []
    finally:
        store.close()


def test_postgres_schema_matches(postgres_dsn):
    pytest.importorskip("psycopg")
    from tuneserve_server.storage.postgres_store import PostgresStore

    store = PostgresStore(postgres_dsn)
    try:
        assert _diff(store._engine) == []
    finally:
        store.close()
