"""Alembic environment for the PostgreSQL job store.

PostgresStore runs `alembic upgrade head` on start with a connection it opened itself and
passes it in `config.attributes["connection"]`. The whole upgrade runs in one transaction
that first takes a transaction-scoped advisory lock, so replicas that start together take
turns: the first applies the migrations, the others wait, then find the schema at head and
do nothing. PostgreSQL's DDL is transactional, so a failed migration leaves nothing behind.

Run by hand (`alembic -x dsn=postgresql://... upgrade head` with script_location pointing
here) it builds its own engine from the `dsn` argument or `sqlalchemy.url`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

# Any 64-bit number unique to tuneserve; every upgrade, from any process, takes it.
MIGRATION_LOCK_KEY = 0x7475_6E65_7365_7276  # "tuneserv"


def _run(connection: sa.Connection) -> None:
    # Autobegins the transaction the migrations then run in; released at its commit.
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
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
