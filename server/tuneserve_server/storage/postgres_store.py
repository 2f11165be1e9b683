"""The job store on PostgreSQL, for several API replicas and trainer workers on several
machines: the shared SqlStore with the PostgreSQL dialect hooks.

* Every timestamp comes from the database clock (now()), so leases granted and checked by
  workers on different machines compare against one clock.
* The schema is owned by the alembic migrations, applied on start under an advisory lock so
  replicas starting together do not race (migrations/env.py).
* Every registry change also sends `NOTIFY tuneserve_registry, '<schema>:<seq>'` (delivered
  at commit); `registry_listener()` lets a replica wake its poller early. Polling
  (adapter_changes) stays the mechanism that guarantees delivery.
* Connections come from a small pool; one idle for longer than _CHECK_IDLE_S is pinged
  before it is handed out, so one broken by a database restart or failover is replaced
  instead of failing a call. A busy worker's connections are not pinged: the ping is a round
  trip, and claim throughput is round-trip bound (bench/job_queue.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.dialects import postgresql

from tuneserve_server.storage.schema import Timestamp
from tuneserve_server.storage.sql_store import MIGRATIONS_DIR, UPLOAD_TTL_S, SqlStore, migrate

__all__ = ["MIGRATIONS_DIR", "PostgresStore", "RegistryListener"]

REGISTRY_CHANNEL = "tuneserve_registry"
_CHECK_IDLE_S = 2.0


class PostgresDialect:
    name = "postgresql"
    # The database clock (the transaction's start time): one clock for every machine.
    now = sa.func.now(type_=Timestamp())

    def later(self, seconds_param: str) -> sa.ColumnElement[Any]:
        secs = sa.bindparam(seconds_param, type_=sa.Float())
        return sa.func.now(type_=Timestamp()) + sa.func.make_interval(0, 0, 0, 0, 0, 0, secs)

    def clock_params(self) -> dict[str, Any]:
        return {}

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    _notify = sa.select(
        sa.func.pg_notify(
            REGISTRY_CHANNEL,
            sa.func.current_schema(type_=sa.Text()) + sa.bindparam("notice", type_=sa.Text()),
        )
    )
    prebuilt = (_notify,)

    def after_registry_change(self, seq: int) -> tuple[sa.Executable, dict[str, Any]]:
        # Delivered when (and only if) the transaction commits.
        return self._notify, {"notice": f":{seq}"}

    @contextmanager
    def write_transaction(self, raw: psycopg.Connection[Any]) -> Iterator[None]:
        with raw.transaction():  # commits at the end, rolls back on an exception
            yield

    @contextmanager
    def autocommit(self, raw: psycopg.Connection[Any]) -> Iterator[None]:
        # One round trip a statement, no BEGIN/COMMIT around it.
        raw.autocommit = True
        try:
            yield
        finally:
            raw.autocommit = False

    @staticmethod
    def engine(dsn: str, *, pool_size: int, connect_timeout: float) -> sa.Engine:
        kwargs = _timeout_kwargs(dsn, connect_timeout)
        engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(dsn, **kwargs),
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=connect_timeout + 30,
        )

        @sa.event.listens_for(engine, "connect")
        def _connected(_dbapi_conn: Any, record: Any) -> None:
            record.info["returned"] = time.monotonic()

        @sa.event.listens_for(engine, "checkin")
        def _returned(_dbapi_conn: Any, record: Any) -> None:
            if record is not None:
                record.info["returned"] = time.monotonic()

        @sa.event.listens_for(engine, "checkout")
        def _check_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            if time.monotonic() - record.info.get("returned", 0.0) <= _CHECK_IDLE_S:
                return
            try:
                dbapi_conn.execute("SELECT 1")
                dbapi_conn.rollback()
            except psycopg.Error:
                raise sa.exc.DisconnectionError() from None  # the pool replaces it

        return engine


def _timeout_kwargs(dsn: str, connect_timeout: float) -> dict[str, Any]:
    """connect_timeout unless the DSN sets its own."""
    if "connect_timeout" in conninfo_to_dict(dsn):
        return {}
    return {"connect_timeout": max(1, round(connect_timeout))}


class RegistryListener:
    """A dedicated LISTEN connection on the registry channel (not from the pool: it stays
    subscribed). `wait(timeout)` returns the seqs notified (empty on timeout)."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        # Channels are per database: deployments in other schemas of it notify here too.
        self._schema = self._conn.execute("SELECT current_schema()").fetchone()[0]
        self._conn.execute(f"LISTEN {REGISTRY_CHANNEL}")

    def wait(self, timeout: float) -> list[int]:
        """Block up to `timeout` seconds for this schema's next notification(s)."""
        seqs: list[int] = []
        deadline = time.monotonic() + timeout
        while not seqs:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for note in self._conn.notifies(timeout=left, stop_after=1):
                schema, _, seq = note.payload.rpartition(":")
                if schema == self._schema and seq.isdigit():
                    seqs.append(int(seq))
        return seqs

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RegistryListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PostgresStore(SqlStore):
    """JobStore on PostgreSQL. Safe across threads (a connection pool) and processes or
    machines (row locks, SKIP LOCKED claims, database-clock leases)."""

    def __init__(
        self,
        dsn: str,
        *,
        max_attempts: int = 3,
        upload_ttl_s: float = UPLOAD_TTL_S,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        run_migrations: bool = True,
    ) -> None:
        self.dsn = dsn
        # Connect once here, so an unreachable database raises psycopg's own error (libpq's
        # message) at start, not an error wrapped by the pool on the first call.
        psycopg.connect(dsn, **_timeout_kwargs(dsn, connect_timeout)).close()
        engine = PostgresDialect.engine(dsn, pool_size=pool_size, connect_timeout=connect_timeout)
        super().__init__(
            engine,
            PostgresDialect(),
            max_attempts=max_attempts,
            upload_ttl_s=upload_ttl_s,
            run_migrations=run_migrations,
        )

    def registry_listener(self) -> RegistryListener:
        return RegistryListener(self.dsn)


__all__ += ["migrate"]
