"""What the SQL job store is built on: the dialect hook protocol, statements compiled once
and run on the driver connection, a transaction's handle, the NUL and paging rules both
databases answer alike, and the migrations (alembic: the only schema)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from tuneserve_server.domain.errors import InvalidRequest

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Dialect(Protocol):
    """What the store asks of a database backend. `raw` is the driver's own connection."""

    name: str
    now: sa.ColumnElement[datetime]  # the transaction's time, as SQL

    def later(self, seconds_param: str) -> sa.ColumnElement[datetime]:
        """`now` plus the seconds bound to `seconds_param` (negative: earlier)."""

    def clock_params(self) -> dict[str, Any]:
        """Bind parameters `now` and `later` need, read once per transaction."""

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT construct (it has on_conflict_do_nothing/do_update)."""

    prebuilt: tuple[sa.Executable, ...]  # the dialect's own statements, compiled with the store's

    def after_registry_change(self, seq: int) -> tuple[sa.Executable, dict[str, Any]] | None:
        """A statement (one of `prebuilt`) and its parameters, to run inside the transaction
        that made registry change `seq`."""

    @contextmanager
    def write_transaction(self, raw: Any) -> Iterator[None]:
        """A transaction that commits on success and rolls back on any exception."""

    @contextmanager
    def autocommit(self, raw: Any) -> Iterator[None]:
        """Each statement its own transaction: reads, and writes of a single statement."""


class Compiled:
    """A statement compiled once for the engine's dialect, run on the driver connection.

    SQLAlchemy builds and compiles the SQL (and owns the pool and the migrations); the
    store's calls skip its per-execution machinery, which cost several times the database
    work of a claim (bench/job_queue.py)."""

    __slots__ = ("fixed", "names", "positional", "text")

    def __init__(self, stmt: sa.Executable, dialect: sa.engine.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.text = compiled.string
        # Values fixed when the statement was built (literals); the rest come per call.
        self.fixed = {name: bind.value for bind, name in compiled.bind_names.items() if not bind.required}
        self.positional = dialect.positional
        self.names = (
            list(compiled.positiontup or ())
            if self.positional
            else list(dict.fromkeys(compiled.bind_names.values()))
        )

    def args(self, params: dict[str, Any]) -> Any:
        try:
            values = [params[n] if n in params else self.fixed[n] for n in self.names]
        except KeyError as missing:
            raise TypeError(f"no value for bind parameter {missing}") from None
        return values if self.positional else dict(zip(self.names, values, strict=True))


@dataclass
class Tx:
    raw: Any  # the driver's connection (sqlite3 / psycopg)
    dialect: sa.engine.Dialect
    cache: dict[int, Compiled]  # the store's prebuilt statements, compiled on first use
    clock: dict[str, Any]  # the dialect's clock parameters, fixed for the transaction

    def execute(self, stmt: sa.Executable, **params: Any) -> Any:
        compiled = self.cache.get(id(stmt)) or Compiled(stmt, self.dialect)
        return self.raw.execute(compiled.text, compiled.args({**self.clock, **params}))

    def row(self, stmt: sa.Executable, **params: Any) -> dict[str, Any] | None:
        cursor = self.execute(stmt, **params)
        values = cursor.fetchone()
        return None if values is None else dict(zip([d[0] for d in cursor.description], values, strict=True))

    def rows(self, stmt: sa.Executable, **params: Any) -> list[dict[str, Any]]:
        cursor = self.execute(stmt, **params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def scalars(self, stmt: sa.Executable, **params: Any) -> list[Any]:
        return [values[0] for values in self.execute(stmt, **params).fetchall()]

    def scalar(self, stmt: sa.Executable, **params: Any) -> Any:
        (value,) = self.execute(stmt, **params).fetchone()
        return value


def param(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def strip_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL: stored text (error messages, reports) loses them."""
    return value.replace("\x00", "")


def has_nul(*values: str | None) -> bool:
    """True when a lookup key holds NUL: no stored row can match it, so the caller answers
    "not found" instead of sending it."""
    return any(v is not None and "\x00" in v for v in values)


def valid_page_size(value: int) -> int:
    if value == 0:
        return 50
    if not 1 <= value <= 1000:
        raise InvalidRequest.field("page_size", "must be between 1 and 1000")
    return value


def page_after(token: str) -> int | None:
    if not token:
        return None
    # ASCII digits only (str.isdigit also accepts '²', which int() refuses) and short enough
    # for a 64-bit integer: anything else is a caller error, not an internal one.
    if not (token.isascii() and token.isdigit()) or len(token) > 18:
        raise InvalidRequest.field("page_token", "is not a token this server returned")
    return int(token)


# alembic's `context` and `op` are module-level proxies: two upgrades in one process must not
# overlap. Across processes the lock taken in migrations/env.py serialises them.
_MIGRATE_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the database to the newest schema (alembic upgrade head); a database already at
    head costs one query. Safe from several processes at once (migrations/env.py)."""
    with engine.connect() as conn:
        if sa.inspect(conn).has_table("alembic_version"):
            current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            if current == [head_revision()]:
                return
    from alembic import command

    cfg = _alembic_config()
    with _MIGRATE_LOCK, engine.connect() as conn:
        cfg.attributes["connection"] = conn.execution_options(write=True)
        command.upgrade(cfg, "head")
