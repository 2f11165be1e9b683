"""Alembic environment for the job store, SQLite and PostgreSQL alike.

The store runs `alembic upgrade head` on start (storage/sql_store.migrate) with a connection
of its own engine, passed in `config.attributes["connection"]`. The whole upgrade runs in
one transaction that first takes a lock, so processes that start together take turns: the
first applies the migrations, the others wait, then find the schema at head and do nothing.
On PostgreSQL the lock is a transaction-scoped advisory lock; on SQLite the transaction is
BEGIN IMMEDIATE (the engine's write transactions), which holds the file's write lock. DDL is
transactional on both, so a failed migration leaves nothing behind.

A SQLite file made before the migrations owned its schema (the store's old `SCHEMA` script:
the tables and columns of 0002, no alembic_version) is adopted: stamped at 0002 (or 0001
when it predates the event and dataset tables) inside the same transaction, then upgraded.

Run by hand (`alembic -x dsn=postgresql://... upgrade head` with script_location pointing
here) it builds its own engine from the `dsn` argument or `sqlalchemy.url`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

# Any 64-bit number unique to tuneserve; every upgrade, from any process, takes it.
MIGRATION_LOCK_KEY = 0x7475_6E65_7365_7276  # "tuneserv"


def _adopt_unversioned_sqlite(connection: sa.Connection) -> None:
    tables = set(sa.inspect(connection).get_table_names())
    if "alembic_version" in tables or "jobs" not in tables:
        return
    revision = "0002" if "job_events" in tables else "0001"
    connection.execute(
        sa.text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": revision})


def _run(connection: sa.Connection) -> None:
    # Autobegins the transaction the migrations then run in; released at its commit.
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    else:  # the store's engine begins this one with BEGIN IMMEDIATE: the file's write lock
        connection.execute(sa.text("SELECT 1"))
        _adopt_unversioned_sqlite(connection)
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():  # joins the transaction begun above
        context.run_migrations()
    connection.commit()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("dsn") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: pass -x dsn=postgresql://... or set sqlalchemy.url")
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
