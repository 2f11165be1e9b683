"""The job store on a SQLite file, shared by the API and worker processes of one machine.

WAL mode lets readers run beside one writer; every write transaction begins with BEGIN
IMMEDIATE, which takes the file's write lock up front, so a claim is atomic across threads
and processes and a busy writer is waited for (busy_timeout) instead of failing mid-way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from tuneserve_server.storage.sql_store import UPLOAD_TTL_S, SqlStore

_BUSY_TIMEOUT_S = 30.0


class SqliteDialect:
    name = "sqlite"
    # The process clock, read once per transaction (as now() is on PostgreSQL) and bound as
    # epoch seconds, the column type on SQLite.
    now = sa.bindparam("now", type_=sa.Float())

    def later(self, seconds_param: str) -> sa.ColumnElement[Any]:
        return self.now + sa.bindparam(seconds_param, type_=sa.Float())

    def clock_params(self) -> dict[str, Any]:
        return {"now": time.time()}

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    prebuilt: tuple[sa.Executable, ...] = ()

    def after_registry_change(self, seq: int) -> None:
        """Replicas on one machine poll adapter_changes; nothing to send."""

    @contextmanager
    def write_transaction(self, raw: Any) -> Iterator[None]:
        raw.execute("BEGIN IMMEDIATE")  # the file's write lock, waited for up to busy_timeout
        try:
            yield
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")

    @contextmanager
    def autocommit(self, raw: Any) -> Iterator[None]:
        yield  # the driver is in autocommit mode (WAL: reads never wait for the writer)

    @staticmethod
    def engine(path: Path) -> sa.Engine:
        engine = sa.create_engine(
            f"sqlite:///{path}",
            connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
        )

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # the driver's own BEGINs off: we issue them
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                f"busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}",
            ):
                dbapi_conn.execute(f"PRAGMA {pragma}")

        @sa.event.listens_for(engine, "begin")  # SQLAlchemy's own transactions: migrations
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine


class SqliteStore(SqlStore):
    """JobStore on a SQLite file (made, with its directory, on first use)."""

    def __init__(
        self, path: str | Path, *, max_attempts: int = 3, upload_ttl_s: float = UPLOAD_TTL_S
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            SqliteDialect.engine(self.path),
            SqliteDialect(),
            max_attempts=max_attempts,
            upload_ttl_s=upload_ttl_s,
        )
