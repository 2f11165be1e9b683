"""The JobStore, written once over SQLAlchemy Core for SQLite and PostgreSQL.

What differs between the two databases sits behind a small `Dialect` hook object (one per
backend: sqlite_store.SqliteDialect, postgres_store.PostgresDialect):

* how a write transaction begins: BEGIN IMMEDIATE on SQLite, which takes the file's write
  lock up front, so every write transaction is serialised across threads and processes; a
  plain transaction with row locks on PostgreSQL;
* the clock: the database's now() on PostgreSQL (leases granted and checked by workers on
  different machines compare against one clock), the process clock on SQLite (one machine);
* upserts (the dialect-specific INSERT ... ON CONFLICT construct);
* what happens after a registry change commits: NOTIFY on PostgreSQL, nothing on SQLite.

Everything else is the same SQL on both. Locks: a claim takes the oldest QUEUED job with
`SELECT ... FOR UPDATE SKIP LOCKED` (SQLite compiles FOR UPDATE away; BEGIN IMMEDIATE already
made the transaction exclusive), so competing PostgreSQL workers skip a row another one is
taking. Lease reaping is one UPDATE over the expired rows; PostgreSQL re-checks its WHERE
clause on a row changed by a concurrent heartbeat, so a renewed lease is never reaped.

Job events are numbered MAX(seq) + 1 per job while the writer holds the job row (its lock on
PostgreSQL, the write lock on SQLite), so a reader polling `seq > n` never sees a gap fill in.

The registry's change counter (`seq`, what replicas poll with adapter_changes) is NOT a
sequence: nextval() hands numbers out at call time but transactions commit in any order (T1
takes 5, T2 takes 6 and commits first, a replica polls, sees 6 and moves past 5, then T1
commits 5, which that replica never sees). Every registry write bumps the one row of
`registry_clock` with UPDATE ... RETURNING instead; its row lock is held until the writing
transaction commits, so seqs are handed out in commit order and readers need nothing
special. Lock order is always jobs row -> registry_clock -> adapter_versions rows, so
writers cannot deadlock.

Values PostgreSQL text cannot hold (NUL) are refused or dropped the same way on both
databases, so a caller sees one behaviour whatever the deployment runs on.

The statements of the hot paths (claim, heartbeat, finish, complete, events, registry
polling) are built once per store with bind parameters (`_Statements`): building and
cache-keying a Core statement per call cost more than the database work (bench/job_queue.py)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from tuneserve_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    LeaseLost,
    NotFound,
)
from tuneserve_server.domain.jobs import EventType, Job, JobEvent, JobProgress, JobSpec, JobState
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import (
    PROGRESS_EXTRAS,
    adapter_from_row,
    dataset_from_row,
    event_body_json,
    event_from_row,
    job_from_row,
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# An upload nobody finished is forgotten (bytes and all) this long after its last chunk.
UPLOAD_TTL_S = 7 * 24 * 3600.0

J = schema.jobs
E = schema.job_events
AV = schema.adapter_versions
DS = schema.datasets
UP = schema.dataset_uploads
CH = schema.dataset_upload_chunks

_RUNNING = JobState.RUNNING.value
_QUEUED = JobState.QUEUED.value


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

    def after_registry_change(self, seq: int) -> sa.Executable | None:
        """A statement to run inside the transaction that made registry change `seq`."""

    @contextmanager
    def write_transaction(self, raw: Any) -> Iterator[None]:
        """A transaction that commits on success and rolls back on any exception."""

    @contextmanager
    def read_only(self, raw: Any) -> Iterator[None]:
        """Reads outside any write transaction."""


class _Compiled:
    """A statement compiled once for the engine's dialect, run on the driver connection.

    SQLAlchemy builds and compiles the SQL (and owns the pool and the migrations); the
    store's calls skip its per-execution machinery, which cost several times the database
    work of a claim (bench/job_queue.py)."""

    __slots__ = ("compiled", "names", "text")

    def __init__(self, stmt: sa.Executable, dialect: sa.engine.Dialect) -> None:
        self.compiled = stmt.compile(dialect=dialect)
        self.text = self.compiled.string
        self.names = self.compiled.positiontup if dialect.positional else None

    def args(self, params: dict[str, Any]) -> Any:
        values = self.compiled.construct_params(params)  # raises for a missing parameter
        return values if self.names is None else [values[n] for n in self.names]


@dataclass
class _Tx:
    raw: Any  # the driver's connection (sqlite3 / psycopg)
    dialect: sa.engine.Dialect
    cache: dict[int, _Compiled]  # the store's prebuilt statements, compiled on first use
    clock: dict[str, Any]  # the dialect's clock parameters, fixed for the transaction

    def execute(self, stmt: sa.Executable, **params: Any) -> Any:
        compiled = self.cache.get(id(stmt)) or _Compiled(stmt, self.dialect)
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


def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


class _Statements:
    """The hot paths' statements, built once for a dialect and a retry budget."""

    def __init__(self, d: Dialect, max_attempts: int) -> None:
        now = d.now
        self.all: list[sa.Executable] = []  # filled in at the end: every statement below
        owned = sa.and_(J.c.id == _p("job_id"), J.c.state == _RUNNING, J.c.lease_owner == _p("worker_id"))
        self.owned = owned
        self.lock_owned = sa.select(J.c.id).where(owned).with_for_update()
        self.job = sa.select(J).where(J.c.id == _p("job_id"), J.c.namespace == _p("namespace"))
        self.by_request = sa.select(J).where(J.c.namespace == _p("namespace"), J.c.request_id == _p("request_id"))
        self.insert_job = (
            d.insert(J)
            .values(
                id=_p("id"), namespace=_p("namespace"), request_id=_p("request_id"),
                fingerprint=_p("fingerprint"), adapter_name=_p("adapter_name"), task=_p("task"),
                state=_QUEUED, spec_json=_p("spec_json"), hyperparameters_json=_p("hyperparameters_json"),
                train_examples=_p("train_examples"), validation_examples=_p("validation_examples"),
                created_at=now, updated_at=now, info_json=_p("info_json"),
            )
            .on_conflict_do_nothing(index_elements=[J.c.namespace, J.c.request_id])
            .returning(*J.c)
        )
        oldest = (
            sa.select(J.c.seq).where(J.c.state == _QUEUED).order_by(J.c.seq).limit(1)
            .with_for_update(skip_locked=True).scalar_subquery()
        )
        self.claim = (
            sa.update(J)
            .where(J.c.seq == oldest, J.c.state == _QUEUED)
            .values(
                state=_RUNNING, lease_owner=_p("worker_id"), lease_expires=d.later("lease_s"),
                attempts=J.c.attempts + 1, started_at=sa.func.coalesce(J.c.started_at, now), updated_at=now,
            )
            .returning(*J.c)
        )
        expired = sa.and_(J.c.state == _RUNNING, J.c.lease_expires < now)
        # A read first: an UPDATE that matches nothing still costs a write on SQLite.
        self.any_expired = sa.select(J.c.seq).where(expired).limit(1)
        spent = J.c.attempts >= max_attempts
        self.reap = (
            sa.update(J)
            .where(J.c.seq.in_(sa.select(J.c.seq).where(expired).with_for_update(skip_locked=True)), expired)
            .values(
                state=sa.case(
                    (J.c.cancel_requested, JobState.CANCELLED.value), (spent, JobState.FAILED.value),
                    else_=_QUEUED,
                ),
                error=sa.case(
                    (J.c.cancel_requested, "cancelled by request"),
                    (spent, sa.literal("worker lost the job ") + sa.cast(J.c.attempts, sa.Text)
                     + " times (retry budget spent)"),
                    else_=J.c.error,
                ),
                finished_at=sa.case((sa.or_(J.c.cancel_requested, spent), now), else_=J.c.finished_at),
                updated_at=now, lease_owner=None, lease_expires=None,
            )
            .returning(J.c.id, J.c.state, J.c.error)
        )
        self.heartbeat = (
            sa.update(J).where(owned)
            .values(
                lease_expires=d.later("lease_s"), step=_p("step"), total_steps=_p("total_steps"),
                epoch=_p("epoch"), train_loss=_p("train_loss"), progress_json=_p("progress_json"),
                updated_at=now,
            )
            .returning(J.c.cancel_requested)
        )
        self.finish = (
            sa.update(J).where(owned)
            .values(state=_p("state"), error=_p("error"), finished_at=now, updated_at=now,
                    lease_owner=None, lease_expires=None)
            .returning(*J.c)
        )
        self.release = (
            sa.update(J).where(owned)
            .values(state=_QUEUED, attempts=sa.case((J.c.attempts > 0, J.c.attempts - 1), else_=0),
                    lease_owner=None, lease_expires=None, updated_at=now)
            .returning(*J.c)
        )
        self.succeed = (
            sa.update(J).where(owned)
            .values(state=JobState.SUCCEEDED.value, metrics_json=_p("metrics_json"),
                    adapter_version=_p("adapter_version"), finished_at=now, updated_at=now,
                    lease_owner=None, lease_expires=None, outputs_json=_p("outputs_json"))
            .returning(*J.c)
        )
        self.publish = (
            d.insert(AV)
            .values(
                namespace=_p("namespace"), name=_p("name"), version=_p("version"), job_id=_p("job_id"),
                task=_p("task"), base_model=_p("base_model"), labels_json=_p("labels_json"),
                metrics_json=_p("metrics_json"), lora_rank=_p("lora_rank"), size_bytes=_p("size_bytes"),
                created_at=now, seq=_p("seq"),
            )
            .on_conflict_do_nothing()
            .returning(AV.c.seq)
        )
        next_seq = sa.select(sa.func.coalesce(sa.func.max(E.c.seq), 0) + 1).where(E.c.job_id == _p("job_id"))
        self.event = (
            sa.insert(E)
            .values(job_id=_p("job_id"), seq=next_seq.scalar_subquery(), time=now, type=_p("type"),
                    body_json=_p("body_json"))
            .returning(E.c.seq)
        )
        clock = schema.registry_clock
        self.tick = (
            sa.update(clock).where(clock.c.id == 1).values(seq=clock.c.seq + 1).returning(clock.c.seq)
        )
        C = schema.adapter_counters
        self.reserve_version = (
            d.insert(C)
            .values(namespace=_p("namespace"), name=_p("name"), next_version=1)
            .on_conflict_do_update(index_elements=[C.c.namespace, C.c.name],
                                   set_={"next_version": C.c.next_version + 1})
            .returning(C.c.next_version)
        )
        self.changes = sa.select(AV).where(AV.c.seq > _p("after")).order_by(AV.c.seq).limit(_p("limit"))
        self.all = [v for v in vars(self).values() if isinstance(v, sa.Executable)]


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: stored text (error messages, reports) loses them."""
    return value.replace("\x00", "")


def _nul(*values: str | None) -> bool:
    """True when a lookup key holds NUL: no stored row can match it, so the caller answers
    "not found" instead of sending it."""
    return any(v is not None and "\x00" in v for v in values)


def _page_size(value: int) -> int:
    if value == 0:
        return 50
    if not 1 <= value <= 1000:
        raise InvalidRequest.field("page_size", "must be between 1 and 1000")
    return value


def _page_after(token: str) -> int | None:
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


class SqlStore:
    """JobStore over one SQLAlchemy engine. Safe across threads (a connection pool) and
    processes or machines (the locks described in the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        dialect: Dialect,
        *,
        max_attempts: int = 3,
        upload_ttl_s: float = UPLOAD_TTL_S,
        run_migrations: bool = True,
    ) -> None:
        self._engine = engine
        self._d = dialect
        self._q = _Statements(dialect, max_attempts)
        self._compiled = {id(stmt): _Compiled(stmt, engine.dialect) for stmt in self._q.all}
        self.max_attempts = max_attempts
        self.upload_ttl_s = upload_ttl_s
        self._closed = False
        if run_migrations:
            migrate(engine)

    def close(self) -> None:
        self._closed = True
        self._engine.dispose()

    @contextmanager
    def _raw(self) -> Iterator[Any]:
        """A pooled connection's driver connection; back to the pool (rolled back) after."""
        if self._closed:  # a disposed engine would quietly open new connections
            raise RuntimeError("the job store is closed")
        pooled = self._engine.raw_connection()
        try:
            yield pooled.driver_connection
        finally:
            pooled.close()

    def _tx(self, raw: Any) -> _Tx:
        return _Tx(raw, self._engine.dialect, self._compiled, self._d.clock_params())

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        with self._raw() as raw, self._d.write_transaction(raw):
            yield self._tx(raw)

    @contextmanager
    def _read(self) -> Iterator[_Tx]:
        with self._raw() as raw, self._d.read_only(raw):
            yield self._tx(raw)

    # ------------------------------------------------------------------ jobs, caller side
    def create_job(self, spec: JobSpec, report: dict | None = None) -> tuple[Job, bool]:
        if _nul(spec.request_id):
            raise InvalidRequest.field("request_id", "must not contain NUL characters")
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        fingerprint = hashlib.sha256(spec_json.encode()).hexdigest()
        info = {
            "dataset_id": spec.dataset_id,
            "validation_dataset_id": spec.validation_dataset_id,
            "data_report": report or {},
        }
        job_id = "job-" + uuid.uuid4().hex[:20]
        with self._write() as tx:
            # ON CONFLICT DO NOTHING: on PostgreSQL it waits for a concurrent insert of the
            # same key to commit or roll back, so two racing submits make one job.
            row = tx.row(
                self._q.insert_job, id=job_id, namespace=spec.namespace, request_id=spec.request_id,
                fingerprint=fingerprint, adapter_name=spec.adapter_name, task=spec.task.value,
                spec_json=spec_json, hyperparameters_json=json.dumps(spec.hyperparameters.to_dict()),
                train_examples=len(spec.train), validation_examples=len(spec.validation),
                info_json=_text(json.dumps(info)),
            )
            if row is not None:
                self._state_event(tx, job_id, JobState.QUEUED, "queued")
                return job_from_row(row), True
            row = tx.row(self._q.by_request, namespace=spec.namespace, request_id=spec.request_id)
        if row["fingerprint"] != fingerprint:
            raise AlreadyExists(
                f"request_id {spec.request_id!r} was already used for a different "
                f"Train request (job {row['id']})"
            )
        return job_from_row(row), False

    @staticmethod
    def _job_not_found(namespace: str, job_id: str) -> NotFound:
        return NotFound(f"job {job_id!r} not found in namespace {namespace!r}")

    def get_job(self, namespace: str, job_id: str) -> Job:
        row = None
        if not _nul(namespace, job_id):
            with self._read() as tx:
                row = tx.row(self._q.job, job_id=job_id, namespace=namespace)
        if row is None:
            raise self._job_not_found(namespace, job_id)
        return job_from_row(row)

    def list_jobs(
        self,
        namespace: str,
        *,
        states: Sequence[JobState] = (),
        adapter_name: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[Job], str]:
        size = _page_size(page_size)
        after = _page_after(page_token)
        if _nul(namespace, adapter_name):
            return [], ""
        query = sa.select(J).where(J.c.namespace == namespace)
        if states:
            query = query.where(sa.or_(*(J.c.state == s.value for s in states)))
        if adapter_name:
            query = query.where(J.c.adapter_name == adapter_name)
        if after is not None:
            query = query.where(J.c.seq < after)
        with self._read() as tx:
            rows = tx.rows(query.order_by(J.c.seq.desc()).limit(size + 1))
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [job_from_row(r) for r in rows[:size]], token

    def count_jobs_by_state(self) -> dict[JobState, int]:
        with self._read() as tx:
            rows = tx.rows(sa.select(J.c.state, sa.func.count().label("n")).group_by(J.c.state))
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    def cancel_job(self, namespace: str, job_id: str) -> Job:
        if _nul(namespace, job_id):
            raise self._job_not_found(namespace, job_id)
        with self._write() as tx:
            row = tx.row(
                sa.select(J.c.state).where(J.c.id == job_id, J.c.namespace == namespace).with_for_update()
            )
            if row is None:
                raise self._job_not_found(namespace, job_id)
            state = JobState(row["state"])
            if state.terminal:
                raise FailedPrecondition(f"job {job_id} already finished ({state.value})")
            now = self._d.now
            if state is JobState.QUEUED:
                values: dict[str, Any] = {
                    "state": JobState.CANCELLED.value, "finished_at": now, "updated_at": now,
                    "error": "cancelled by request",
                }
            else:
                values = {"cancel_requested": True, "updated_at": now}
            row = tx.row(sa.update(J).where(J.c.id == job_id).values(**values).returning(*J.c))
            if state is JobState.QUEUED:
                self._state_event(tx, job_id, JobState.CANCELLED, "cancelled by request")
        return job_from_row(row)

    # ------------------------------------------------------------------ jobs, worker side
    def claim_job(self, worker_id: str, lease_seconds: float) -> tuple[Job, JobSpec] | None:
        with self._write() as tx:
            self._reap_expired(tx)
            row = tx.row(self._q.claim, worker_id=worker_id, lease_s=float(lease_seconds))
            if row is None:
                return None
            self._state_event(
                tx, row["id"], JobState.RUNNING,
                f"started by worker {worker_id} (attempt {row['attempts']})",
            )
        return job_from_row(row), JobSpec.from_dict(json.loads(row["spec_json"]))

    def _reap_expired(self, tx: _Tx) -> None:
        """Expired leases: back to QUEUED, or CANCELLED when cancel was requested, or FAILED
        once max_attempts workers have lost the job. Rows another transaction holds (a
        heartbeat renewing, another reaper) are skipped, and a row whose lease was renewed
        after this statement began fails the re-checked WHERE clause and is left alone."""
        if tx.row(self._q.any_expired) is None:
            return
        for row in tx.rows(self._q.reap):  # the UPDATE holds these rows: event seqs stay in order
            state = JobState(row["state"])
            message = row["error"] if state.terminal else (
                "the worker's lease expired; queued again to resume from its last checkpoint"
            )
            self._state_event(tx, row["id"], state, message)

    def _lock_owned(self, tx: _Tx, job_id: str, worker_id: str) -> None:
        if tx.row(self._q.lock_owned, job_id=job_id, worker_id=worker_id) is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")

    def _update_owned(
        self, tx: _Tx, stmt: sa.Executable, job_id: str, worker_id: str, **params: Any
    ) -> sa.RowMapping:
        row = tx.row(stmt, job_id=job_id, worker_id=worker_id, **params)
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
        return row

    def heartbeat(
        self, job_id: str, worker_id: str, lease_seconds: float, progress: JobProgress
    ) -> bool:
        with self._write() as tx:
            row = self._update_owned(
                tx, self._q.heartbeat, job_id, worker_id,
                lease_s=float(lease_seconds), step=progress.step, total_steps=progress.total_steps,
                epoch=progress.epoch, train_loss=progress.train_loss,
                progress_json=json.dumps({k: getattr(progress, k) for k in PROGRESS_EXTRAS}),
            )
        return bool(row["cancel_requested"])

    def complete_job(
        self,
        job_id: str,
        worker_id: str,
        metrics: dict[str, float],
        adapter: AdapterVersionRecord,
        outputs: dict | None = None,
    ) -> Job:
        with self._write() as tx:
            self._lock_owned(tx, job_id, worker_id)  # lock order: jobs row, then the clock
            seq = self._tick(tx)
            published = tx.row(
                self._q.publish, namespace=adapter.namespace, name=adapter.name, version=adapter.version,
                job_id=job_id, task=adapter.task.value, base_model=adapter.base_model,
                labels_json=json.dumps(list(adapter.labels)), metrics_json=json.dumps(adapter.metrics),
                lora_rank=adapter.lora_rank, size_bytes=adapter.size_bytes, seq=seq,
            )
            if published is None:  # raising rolls the whole completion back
                raise AlreadyExists(f"adapter {adapter.name}@{adapter.version} is already published")
            row = self._update_owned(
                tx, self._q.succeed, job_id, worker_id, metrics_json=json.dumps(metrics),
                adapter_version=adapter.version, outputs_json=_text(json.dumps(outputs or {})),
            )
            self._state_event(
                tx, job_id, JobState.SUCCEEDED,
                f"published adapter {adapter.name}@{adapter.version}", metrics,
            )
            self._notify(tx, seq)
        return job_from_row(row)

    def finish_job(self, job_id: str, worker_id: str, state: JobState, error: str = "") -> Job:
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"finish_job takes FAILED or CANCELLED, not {state}")
        with self._write() as tx:
            row = self._update_owned(
                tx, self._q.finish, job_id, worker_id, state=state.value, error=_text(error)
            )
            if state is JobState.FAILED:
                self._event(tx, JobEvent(job_id, EventType.ERROR, message=error))
            self._state_event(tx, job_id, state, error)
        return job_from_row(row)

    def release_job(self, job_id: str, worker_id: str) -> Job:
        with self._write() as tx:
            row = self._update_owned(tx, self._q.release, job_id, worker_id)
            self._state_event(
                tx, job_id, JobState.QUEUED,
                "released by a stopping worker after a checkpoint; it resumes from there",
            )
        return job_from_row(row)

    def record_resume(self, job_id: str, worker_id: str, step: int) -> None:
        with self._write() as tx:
            row = tx.row(
                sa.select(J.c.info_json, J.c.total_steps, J.c.epoch).where(self._q.owned).with_for_update(),
                job_id=job_id, worker_id=worker_id,
            )
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            info = json.loads(row["info_json"] or "{}")
            info["resumed_from_step"] = step
            tx.execute(
                sa.update(J).where(J.c.id == job_id).values(info_json=_text(json.dumps(info)), updated_at=self._d.now)
            )
            self._event(tx, JobEvent(
                job_id, EventType.CHECKPOINT, message=f"resumed from the checkpoint at step {step}",
                progress=JobProgress(step=step, total_steps=row["total_steps"], epoch=row["epoch"]),
            ))

    # ------------------------------------------------------------------ job events
    def append_events(
        self, job_id: str, events: Sequence[JobEvent], worker_id: str | None = None
    ) -> list[int]:
        with self._write() as tx:
            # The job row's lock orders this append against every other one for the job.
            if worker_id is not None:
                self._lock_owned(tx, job_id, worker_id)
            elif tx.row(sa.select(J.c.id).where(J.c.id == job_id).with_for_update()) is None:
                raise NotFound(f"job {job_id!r} not found")
            return [self._event(tx, e) for e in events]

    def list_events(
        self, namespace: str, job_id: str, after_seq: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        if _nul(namespace, job_id):
            raise self._job_not_found(namespace, job_id)
        with self._read() as tx:
            if tx.row(sa.select(J.c.id).where(J.c.id == job_id, J.c.namespace == namespace)) is None:
                raise self._job_not_found(namespace, job_id)
            rows = tx.rows(
                sa.select(E).where(E.c.job_id == job_id, E.c.seq > after_seq).order_by(E.c.seq).limit(limit)
            )
        return [event_from_row(r) for r in rows]

    def _event(self, tx: _Tx, event: JobEvent) -> int:
        """Append under the job row's lock, which the caller's transaction holds."""
        return int(tx.scalar(
            self._q.event, job_id=event.job_id, type=event.type.value, body_json=_text(event_body_json(event))
        ))

    def _state_event(
        self, tx: _Tx, job_id: str, state: JobState, message: str, metrics: dict[str, float] | None = None
    ) -> None:
        self._event(tx, JobEvent(job_id, EventType.STATE, state=state, message=message, metrics=metrics or {}))

    # ------------------------------------------------------------------ datasets
    def begin_upload(
        self, namespace: str, upload_id: str, header: dict
    ) -> UploadState | DatasetRecord:
        """Start or resume an upload. A finished upload_id returns its dataset."""
        if _nul(namespace, upload_id):
            raise InvalidRequest.field("header.upload_id", "must not contain NUL characters")
        header_json = _text(json.dumps(header, sort_keys=True))
        with self._write() as tx:
            self._expire_uploads(tx)
            done = tx.row(
                sa.select(*schema.DATASET_COLUMNS).where(DS.c.namespace == namespace, DS.c.upload_id == upload_id)
            )
            if done is not None:
                if (done["sha256"], done["size_bytes"]) != (header["sha256"], header["size_bytes"]):
                    raise AlreadyExists(
                        f"upload_id {upload_id!r} already uploaded a different file "
                        f"(dataset {done['id']})"
                    )
                return dataset_from_row(done)
            tx.execute(
                self._d.insert(UP)
                .values(namespace=namespace, upload_id=upload_id, header_json=header_json,
                        touched_at=self._d.now)
                .on_conflict_do_nothing()
            )
            row = tx.row(
                sa.select(UP.c.header_json, UP.c.received)
                .where(UP.c.namespace == namespace, UP.c.upload_id == upload_id)
            )
        if json.loads(row["header_json"]) != json.loads(header_json):
            raise AlreadyExists(
                f"upload_id {upload_id!r} is in use by an upload of a different file; "
                "use a new upload_id"
            )
        return UploadState(namespace, upload_id, header, int(row["received"]))

    def _expire_uploads(self, tx: _Tx) -> None:
        """Forget uploads with no chunk for longer than upload_ttl_s, their bytes first."""
        stale = UP.c.touched_at < self._d.later("ttl_s")
        ttl = {"ttl_s": -self.upload_ttl_s}
        tx.execute(sa.delete(CH).where(
            sa.tuple_(CH.c.namespace, CH.c.upload_id).in_(sa.select(UP.c.namespace, UP.c.upload_id).where(stale))
        ), **ttl)
        tx.execute(sa.delete(UP).where(stale), **ttl)

    def add_upload_chunk(self, namespace: str, upload_id: str, offset: int, data: bytes) -> int:
        this_upload = sa.and_(UP.c.namespace == namespace, UP.c.upload_id == upload_id)
        with self._write() as tx:
            row = tx.row(sa.select(UP.c.received).where(this_upload).with_for_update())
            if row is None:
                raise NotFound(f"upload {upload_id!r} not found in namespace {namespace!r}")
            if offset != row["received"]:
                raise FailedPrecondition(
                    f"chunk at offset {offset} does not continue the upload, which has "
                    f"{row['received']} bytes; send from offset {row['received']}"
                )
            tx.execute(
                sa.insert(CH).values(namespace=namespace, upload_id=upload_id, start_byte=offset, data=data)
            )
            received = offset + len(data)
            tx.execute(sa.update(UP).where(this_upload).values(received=received, touched_at=self._d.now))
        return received

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        with self._read() as tx:
            chunks = tx.scalars(
                sa.select(CH.c.data)
                .where(CH.c.namespace == namespace, CH.c.upload_id == upload_id)
                .order_by(CH.c.start_byte)
            )
        return b"".join(bytes(c) for c in chunks)

    def discard_upload(self, namespace: str, upload_id: str) -> None:
        with self._write() as tx:
            self._drop_upload(tx, namespace, upload_id)

    @staticmethod
    def _drop_upload(tx: _Tx, namespace: str, upload_id: str) -> None:
        for table in (CH, UP):
            tx.execute(sa.delete(table).where(table.c.namespace == namespace, table.c.upload_id == upload_id))

    def finish_upload(self, record: DatasetRecord, content: bytes) -> tuple[DatasetRecord, bool]:
        with self._write() as tx:
            row = tx.row(
                self._d.insert(DS)
                .values(
                    id=record.id, namespace=record.namespace, upload_id=record.upload_id,
                    display_name=_text(record.display_name), task=record.task.value,
                    format=record.format, size_bytes=record.size_bytes, sha256=record.sha256,
                    rows=record.rows, usable_rows=record.usable_rows,
                    report_json=_text(json.dumps(record.report)), text_field=record.text_field,
                    label_field=record.label_field, created_at=self._d.now, content=content,
                )
                .on_conflict_do_nothing(index_elements=[DS.c.namespace, DS.c.upload_id])
                .returning(*schema.DATASET_COLUMNS)
            )
            created = row is not None
            if not created:
                row = tx.row(
                    sa.select(*schema.DATASET_COLUMNS)
                    .where(DS.c.namespace == record.namespace, DS.c.upload_id == record.upload_id)
                )
            self._drop_upload(tx, record.namespace, record.upload_id)
        return dataset_from_row(row), created

    @staticmethod
    def _dataset_not_found(namespace: str, dataset_id: str) -> NotFound:
        return NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")

    def _dataset_row(self, namespace: str, dataset_id: str, *columns: sa.Column) -> sa.RowMapping:
        row = None
        if not _nul(namespace, dataset_id):
            with self._read() as tx:
                row = tx.row(sa.select(*columns).where(DS.c.id == dataset_id, DS.c.namespace == namespace))
        if row is None:
            raise self._dataset_not_found(namespace, dataset_id)
        return row

    def get_dataset(self, namespace: str, dataset_id: str) -> DatasetRecord:
        return dataset_from_row(self._dataset_row(namespace, dataset_id, *schema.DATASET_COLUMNS))

    def dataset_content(self, namespace: str, dataset_id: str) -> bytes:
        return bytes(self._dataset_row(namespace, dataset_id, DS.c.content)["content"])

    def list_datasets(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        size = _page_size(page_size)
        after = _page_after(page_token)
        if _nul(namespace):
            return [], ""
        query = sa.select(*schema.DATASET_COLUMNS).where(DS.c.namespace == namespace)
        if after is not None:
            query = query.where(DS.c.seq < after)
        with self._read() as tx:
            rows = tx.rows(query.order_by(DS.c.seq.desc()).limit(size + 1))
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [dataset_from_row(r) for r in rows[:size]], token

    def delete_dataset(self, namespace: str, dataset_id: str) -> None:
        gone = 0
        if not _nul(namespace, dataset_id):
            with self._write() as tx:
                gone = tx.execute(
                    sa.delete(DS).where(DS.c.id == dataset_id, DS.c.namespace == namespace)
                ).rowcount
        if not gone:
            raise self._dataset_not_found(namespace, dataset_id)

    # ------------------------------------------------------------------ adapter registry
    def reserve_adapter_version(self, namespace: str, name: str) -> int:
        with self._write() as tx:
            return int(tx.scalar(self._q.reserve_version, namespace=namespace, name=name))

    def adapter_versions(
        self, namespace: str, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRecord]:
        if _nul(namespace, name):
            return []
        query = sa.select(AV).where(AV.c.namespace == namespace)
        if name is not None:
            query = query.where(AV.c.name == name)
        if not include_deleted:
            query = query.where(sa.not_(AV.c.deleted))
        with self._read() as tx:
            rows = tx.rows(query.order_by(AV.c.name, AV.c.version))
        return [adapter_from_row(r) for r in rows]

    def adapter_names(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[str], str]:
        size = _page_size(page_size)
        if _nul(page_token):
            raise InvalidRequest.field("page_token", "is not a token this server returned")
        if _nul(namespace):
            return [], ""
        with self._read() as tx:
            names = tx.scalars(
                sa.select(AV.c.name).distinct()
                .where(AV.c.namespace == namespace, sa.not_(AV.c.deleted), AV.c.name > page_token)
                .order_by(AV.c.name).limit(size + 1)
            )
        return list(names[:size]), (names[size - 1] if len(names) > size else "")

    def delete_adapter_versions(
        self, namespace: str, name: str, version: int | None = None
    ) -> list[AdapterVersionRecord]:
        what = name if version is None else f"{name}@{version}"
        if _nul(namespace, name):
            raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
        query = sa.select(AV).where(AV.c.namespace == namespace, AV.c.name == name, sa.not_(AV.c.deleted))
        if version is not None:
            query = query.where(AV.c.version == version)
        with self._write() as tx:
            # The clock first, then the rows: the lock order complete_job uses.
            clock = schema.registry_clock
            tx.execute(sa.select(clock.c.seq).where(clock.c.id == 1).with_for_update())
            rows = tx.rows(query.order_by(AV.c.version).with_for_update())
            if not rows:
                raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
            for row in rows:
                seq = self._tick(tx)
                tx.execute(
                    sa.update(AV)
                    .where(AV.c.namespace == namespace, AV.c.name == name, AV.c.version == row["version"])
                    .values(deleted=True, seq=seq)
                )
            self._notify(tx, seq)
        return [adapter_from_row(r) for r in rows]

    def adapter_changes(self, after_seq: int, limit: int = 1000) -> list[AdapterVersionRecord]:
        # No in-flight filter needed: seqs are handed out in commit order (module docstring).
        with self._read() as tx:
            rows = tx.rows(self._q.changes, after=after_seq, limit=limit)
        return [adapter_from_row(r) for r in rows]

    # ------------------------------------------------------------------ helpers
    def _notify(self, tx: _Tx, seq: int) -> None:
        stmt = self._d.after_registry_change(seq)
        if stmt is not None:
            tx.execute(stmt)

    def _tick(self, tx: _Tx) -> int:
        """The next registry seq. The row lock taken here is held until the caller's
        transaction ends, which is what makes seq order commit order."""
        return int(tx.scalar(self._q.tick))
