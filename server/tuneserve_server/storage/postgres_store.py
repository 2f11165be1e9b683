"""PostgreSQL implementation of JobStore, for several API replicas and trainer workers.

Same semantics and exceptions as SqliteStore (the reference); what differs is how they are
made safe when many processes on many machines share the database:

* The schema is owned by alembic migrations (storage/migrations/), applied on start under
  an advisory lock so replicas starting together do not race.
* Every timestamp comes from the database clock (now()), so leases granted and checked by
  workers on different machines compare against one clock.
* Claims take the oldest QUEUED job with `SELECT ... FOR UPDATE SKIP LOCKED`: competing
  workers skip a row another one is taking instead of queueing behind it. Lease reaping is
  one UPDATE over `... FOR UPDATE SKIP LOCKED` rows whose lease has expired; a heartbeat or
  another reaper that got there first changes the row, and PostgreSQL re-checks the WHERE
  clause on the new row version before locking it, so a renewed lease is never reaped and no
  expired job is requeued twice.
* The registry's change counter (`seq`, what replicas poll with adapter_changes) is NOT a
  sequence. nextval() hands numbers out at call time but transactions commit in any order:
  T1 takes 5, T2 takes 6 and commits first, a replica polls, sees 6 and moves its cursor
  past 5, then T1 commits 5, which that replica never sees. (Rolled-back nextval()s also
  leave gaps.) Instead every registry write bumps the single row of `registry_clock` with
  `UPDATE ... RETURNING`, whose row lock is held until the writing transaction commits. The
  next writer waits on that lock, so seqs are handed out in commit order: whoever can see
  seq N can see every seq below it, and readers need nothing special. Registry writes (one
  per finished training job or delete) are rare and short, so serialising them costs
  little (claim+complete in bench/job_queue.py); claims and heartbeats never touch it. Lock
  order is always jobs row -> registry_clock -> adapter_versions rows, so writers cannot
  deadlock.
* Every registry change also sends `NOTIFY tuneserve_registry, '<schema>:<seq>'`
  (delivered at commit); `registry_listener()` lets a replica wake its poller early. Polling
  (adapter_changes) stays the mechanism that guarantees delivery.

Connections come from a small psycopg_pool pool (autocommit; multi-statement operations run
in explicit transactions), so one store is safe to share between threads."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from tuneserve_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    LeaseLost,
    NotFound,
)
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState
from tuneserve_server.storage.rows import (
    PROGRESS_EXTRAS,
    adapter_from_row,
    dataset_from_row,
    event_body_json,
    event_from_row,
    job_from_row,
)

# The paging rules are the reference implementation's, shared so both stores accept and
# refuse exactly the same page sizes and tokens.
from tuneserve_server.storage.sqlite_store import UPLOAD_TTL_S, _page_after, _page_size
from tuneserve_server.domain.jobs import EventType, Job, JobEvent, JobProgress, JobSpec, JobState

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
REGISTRY_CHANNEL = "tuneserve_registry"

_RUNNING = JobState.RUNNING.value
_QUEUED = JobState.QUEUED.value


def _ts(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; SQLite can. Error messages lose them rather than fail."""
    return value.replace("\x00", "")


def _nul(*values: str | None) -> bool:
    """True when a lookup key holds NUL: no stored row can match it (PostgreSQL text cannot
    hold NUL), so the caller answers "not found" instead of sending it and failing."""
    return any(v is not None and "\x00" in v for v in values)


# alembic's `context` and `op` are module-level proxies: two upgrades in one process must
# not overlap. Across processes and machines the advisory lock in env.py serialises them.
_MIGRATE_LOCK = threading.Lock()


def migrate(dsn: str, *, connect_timeout: float = 10.0) -> None:
    """Bring the database at `dsn` to the newest schema (alembic upgrade head). Safe to run
    from several processes at once: env.py serialises upgrades with an advisory lock."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Connect here, so an unreachable database raises psycopg's own error (libpq's message).
    raw = psycopg.connect(dsn, **_timeout_kwargs(dsn, connect_timeout))
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: raw, poolclass=sa.pool.NullPool)
    try:
        with _MIGRATE_LOCK, engine.connect() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
        raw.close()


def _timeout_kwargs(dsn: str, connect_timeout: float) -> dict[str, Any]:
    """connect_timeout unless the DSN sets its own."""
    if "connect_timeout" in conninfo_to_dict(dsn):
        return {}
    return {"connect_timeout": max(1, round(connect_timeout))}


# A connection idle in the pool for longer than this is pinged before it is handed out, so
# one broken by a database restart or failover is replaced instead of failing a call. A busy
# worker's connections are skipped: the ping is a round trip, and claim throughput is
# round-trip bound (bench/job_queue.py).
_CHECK_IDLE_S = 2.0


def _stamp_returned(conn: psycopg.Connection[Any]) -> None:
    conn._tuneserve_returned = time.monotonic()  # type: ignore[attr-defined]


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    if time.monotonic() - getattr(conn, "_tuneserve_returned", 0.0) > _CHECK_IDLE_S:
        ConnectionPool.check_connection(conn)


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


class PostgresStore:
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
        self.max_attempts = max_attempts
        self.upload_ttl_s = upload_ttl_s
        if run_migrations:
            migrate(dsn, connect_timeout=connect_timeout)
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                **_timeout_kwargs(dsn, connect_timeout),
            },
            check=_check_if_idle,
            reset=_stamp_returned,
            open=False,
            name="tuneserve-jobs",
        )
        self._pool.open(wait=True, timeout=connect_timeout)

    def close(self) -> None:
        self._pool.close()

    def registry_listener(self) -> RegistryListener:
        return RegistryListener(self.dsn)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._pool.connection() as conn:
            yield conn

    # ------------------------------------------------------------------ jobs, caller side
    def create_job(self, spec: JobSpec, report: dict | None = None) -> tuple[Job, bool]:
        if _nul(spec.request_id):
            raise InvalidRequest.field("request_id", "must not contain NUL characters")
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        fingerprint = hashlib.sha256(spec_json.encode()).hexdigest()
        info_json = json.dumps({
            "dataset_id": spec.dataset_id,
            "validation_dataset_id": spec.validation_dataset_id,
            "data_report": report or {},
        })
        job_id = "job-" + uuid.uuid4().hex[:20]
        with self._tx() as db:
            # ON CONFLICT DO NOTHING waits for a concurrent insert of the same key to commit
            # or roll back, so two racing submits of one request_id make one job.
            row = db.execute(
                """INSERT INTO jobs (id, namespace, request_id, fingerprint, adapter_name, task,
                   state, spec_json, hyperparameters_json, train_examples, validation_examples,
                   created_at, updated_at, info_json)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, now(), now(), %s)
                   ON CONFLICT (namespace, request_id) DO NOTHING RETURNING *""",
                (
                    job_id,
                    spec.namespace,
                    spec.request_id,
                    fingerprint,
                    spec.adapter_name,
                    spec.task.value,
                    _QUEUED,
                    spec_json,
                    json.dumps(spec.hyperparameters.to_dict()),
                    len(spec.train),
                    len(spec.validation),
                    _text(info_json),
                ),
            ).fetchone()
            if row is not None:
                self._state_event(db, job_id, JobState.QUEUED, "queued")
                return self._job(row), True
            row = db.execute(
                "SELECT * FROM jobs WHERE namespace = %s AND request_id = %s",
                (spec.namespace, spec.request_id),
            ).fetchone()
        if row["fingerprint"] != fingerprint:
            raise AlreadyExists(
                f"request_id {spec.request_id!r} was already used for a different "
                f"Train request (job {row['id']})"
            )
        return self._job(row), False

    def get_job(self, namespace: str, job_id: str) -> Job:
        if _nul(namespace, job_id):
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        with self._conn() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE id = %s AND namespace = %s", (job_id, namespace)
            ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        return self._job(row)

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
        sql = "SELECT * FROM jobs WHERE namespace = %s"
        args: list[object] = [namespace]
        if states:
            sql += " AND state = ANY(%s)"
            args.append([s.value for s in states])
        if adapter_name:
            sql += " AND adapter_name = %s"
            args.append(adapter_name)
        if after is not None:
            sql += " AND seq < %s"
            args.append(after)
        sql += " ORDER BY seq DESC LIMIT %s"
        args.append(size + 1)
        with self._conn() as db:
            rows = db.execute(sql, args).fetchall()
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [self._job(r) for r in rows[:size]], token

    def count_jobs_by_state(self) -> dict[JobState, int]:
        with self._conn() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    def cancel_job(self, namespace: str, job_id: str) -> Job:
        if _nul(namespace, job_id):
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM jobs WHERE id = %s AND namespace = %s FOR UPDATE",
                (job_id, namespace),
            ).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
            state = JobState(row["state"])
            if state.terminal:
                raise FailedPrecondition(f"job {job_id} already finished ({state.value})")
            if state is JobState.QUEUED:
                row = db.execute(
                    """UPDATE jobs SET state = %s, finished_at = now(), updated_at = now(),
                       error = 'cancelled by request' WHERE id = %s RETURNING *""",
                    (JobState.CANCELLED.value, job_id),
                ).fetchone()
                self._state_event(db, job_id, JobState.CANCELLED, "cancelled by request")
            else:
                row = db.execute(
                    """UPDATE jobs SET cancel_requested = TRUE, updated_at = now()
                       WHERE id = %s RETURNING *""",
                    (job_id,),
                ).fetchone()
        return self._job(row)

    # ------------------------------------------------------------------ jobs, worker side
    def claim_job(self, worker_id: str, lease_seconds: float) -> tuple[Job, JobSpec] | None:
        with self._tx() as db:
            self._reap_expired(db)
            row = db.execute(
                """UPDATE jobs SET state = %s, lease_owner = %s,
                   lease_expires = now() + make_interval(secs => %s),
                   attempts = attempts + 1, started_at = COALESCE(started_at, now()),
                   updated_at = now()
                   WHERE seq = (SELECT seq FROM jobs WHERE state = %s ORDER BY seq LIMIT 1
                                FOR UPDATE SKIP LOCKED)
                     AND state = %s
                   RETURNING *""",
                (_RUNNING, worker_id, lease_seconds, _QUEUED, _QUEUED),
            ).fetchone()
            if row is not None:
                self._state_event(
                    db, row["id"], JobState.RUNNING,
                    f"started by worker {worker_id} (attempt {row['attempts']})",
                )
        if row is None:
            return None
        return self._job(row), JobSpec.from_dict(json.loads(row["spec_json"]))

    def _reap_expired(self, db: psycopg.Connection[dict[str, Any]]) -> None:
        """Expired leases: back to QUEUED, or CANCELLED when cancel was requested, or FAILED
        once max_attempts workers have lost the job. Rows another transaction holds (a
        heartbeat renewing, another reaper) are skipped, and a row whose lease was renewed
        after this statement began fails the re-checked WHERE clause and is left alone."""
        reaped = db.execute(
            """UPDATE jobs SET
                 state = CASE WHEN cancel_requested THEN %(cancelled)s
                              WHEN attempts >= %(max)s THEN %(failed)s
                              ELSE %(queued)s END,
                 error = CASE WHEN cancel_requested THEN 'cancelled by request'
                              WHEN attempts >= %(max)s THEN
                                'worker lost the job ' || attempts || ' times (retry budget spent)'
                              ELSE error END,
                 finished_at = CASE WHEN cancel_requested OR attempts >= %(max)s THEN now()
                                    ELSE finished_at END,
                 updated_at = now(), lease_owner = NULL, lease_expires = NULL
               WHERE seq IN (SELECT seq FROM jobs WHERE state = %(running)s AND lease_expires < now()
                             FOR UPDATE SKIP LOCKED)
                 AND state = %(running)s AND lease_expires < now()
               RETURNING id, state, error""",
            {
                "cancelled": JobState.CANCELLED.value,
                "failed": JobState.FAILED.value,
                "queued": _QUEUED,
                "running": _RUNNING,
                "max": self.max_attempts,
            },
        ).fetchall()
        for row in reaped:  # the UPDATE holds these rows' locks: event seqs stay in order
            state = JobState(row["state"])
            message = row["error"] if state.terminal else (
                "the worker's lease expired; queued again to resume from its last checkpoint"
            )
            self._state_event(db, row["id"], state, message)

    @staticmethod
    def _lock_owned(db: psycopg.Connection[dict[str, Any]], job_id: str, worker_id: str) -> None:
        row = db.execute(
            "SELECT 1 FROM jobs WHERE id = %s AND state = %s AND lease_owner = %s FOR UPDATE",
            (job_id, _RUNNING, worker_id),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")

    def heartbeat(
        self, job_id: str, worker_id: str, lease_seconds: float, progress: JobProgress
    ) -> bool:
        with self._conn() as db:
            row = db.execute(
                """UPDATE jobs SET lease_expires = now() + make_interval(secs => %s), step = %s,
                   total_steps = %s, epoch = %s, train_loss = %s, updated_at = now(),
                   progress_json = (progress_json::jsonb || %s::jsonb)::text
                   WHERE id = %s AND state = %s AND lease_owner = %s
                   RETURNING cancel_requested""",
                (
                    lease_seconds,
                    progress.step,
                    progress.total_steps,
                    progress.epoch,
                    progress.train_loss,
                    json.dumps({k: getattr(progress, k) for k in PROGRESS_EXTRAS}),
                    job_id,
                    _RUNNING,
                    worker_id,
                ),
            ).fetchone()
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
        return bool(row["cancel_requested"])

    def complete_job(
        self,
        job_id: str,
        worker_id: str,
        metrics: dict[str, float],
        adapter: AdapterVersionRecord,
        outputs: dict | None = None,
    ) -> Job:
        with self._tx() as db:
            self._lock_owned(db, job_id, worker_id)  # lock order: jobs row, then the clock
            seq = self._tick(db)
            db.execute(
                """INSERT INTO adapter_versions (namespace, name, version, job_id, task,
                   base_model, labels_json, metrics_json, lora_rank, size_bytes, created_at, seq)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, now(), %s)""",
                (
                    adapter.namespace,
                    adapter.name,
                    adapter.version,
                    job_id,
                    adapter.task.value,
                    adapter.base_model,
                    json.dumps(list(adapter.labels)),
                    json.dumps(adapter.metrics),
                    adapter.lora_rank,
                    adapter.size_bytes,
                    seq,
                ),
            )
            row = db.execute(
                """UPDATE jobs SET state = %s, metrics_json = %s, adapter_version = %s,
                   finished_at = now(), updated_at = now(), lease_owner = NULL,
                   lease_expires = NULL, outputs_json = %s WHERE id = %s RETURNING *""",
                (
                    JobState.SUCCEEDED.value, json.dumps(metrics), adapter.version,
                    _text(json.dumps(outputs or {})), job_id,
                ),
            ).fetchone()
            self._state_event(
                db, job_id, JobState.SUCCEEDED,
                f"published adapter {adapter.name}@{adapter.version}", metrics,
            )
            self._notify(db, seq)
        return self._job(row)

    def finish_job(self, job_id: str, worker_id: str, state: JobState, error: str = "") -> Job:
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"finish_job takes FAILED or CANCELLED, not {state}")
        with self._tx() as db:
            row = db.execute(
                """UPDATE jobs SET state = %s, error = %s, finished_at = now(), updated_at = now(),
                   lease_owner = NULL, lease_expires = NULL
                   WHERE id = %s AND state = %s AND lease_owner = %s RETURNING *""",
                (state.value, _text(error), job_id, _RUNNING, worker_id),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            if state is JobState.FAILED:
                self._event(db, JobEvent(job_id, EventType.ERROR, message=error))
            self._state_event(db, job_id, state, error)
        return self._job(row)

    def release_job(self, job_id: str, worker_id: str) -> Job:
        with self._tx() as db:
            row = db.execute(
                """UPDATE jobs SET state = %s, attempts = GREATEST(attempts - 1, 0),
                   lease_owner = NULL, lease_expires = NULL, updated_at = now()
                   WHERE id = %s AND state = %s AND lease_owner = %s RETURNING *""",
                (_QUEUED, job_id, _RUNNING, worker_id),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            self._state_event(
                db, job_id, JobState.QUEUED,
                "released by a stopping worker after a checkpoint; it resumes from there",
            )
        return self._job(row)

    def record_resume(self, job_id: str, worker_id: str, step: int) -> None:
        with self._tx() as db:
            row = db.execute(
                """UPDATE jobs SET updated_at = now(),
                   progress_json = (progress_json::jsonb || %s::jsonb)::text
                   WHERE id = %s AND state = %s AND lease_owner = %s
                   RETURNING total_steps, epoch""",
                (json.dumps({"resumed_from_step": step}), job_id, _RUNNING, worker_id),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            self._event(db, JobEvent(
                job_id, EventType.CHECKPOINT, message=f"resumed from the checkpoint at step {step}",
                progress=JobProgress(step=step, total_steps=row["total_steps"], epoch=row["epoch"]),
            ))

    # ------------------------------------------------------------------ job events
    def append_events(
        self, job_id: str, events: Sequence[JobEvent], worker_id: str | None = None
    ) -> list[int]:
        with self._tx() as db:
            # The job row's lock orders this append against every other one for the job.
            if worker_id is not None:
                self._lock_owned(db, job_id, worker_id)
            elif db.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone() is None:
                raise NotFound(f"job {job_id!r} not found")
            return [self._event(db, e) for e in events]

    def list_events(
        self, namespace: str, job_id: str, after_seq: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        if _nul(namespace, job_id):
            raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
        with self._conn() as db:
            if db.execute(
                "SELECT 1 FROM jobs WHERE id = %s AND namespace = %s", (job_id, namespace)
            ).fetchone() is None:
                raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
            rows = db.execute(
                "SELECT * FROM job_events WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            ).fetchall()
        return [event_from_row(r, _ts) for r in rows]

    @staticmethod
    def _event(db: psycopg.Connection[dict[str, Any]], event: JobEvent) -> int:
        """Append under the job row's lock, which the caller's transaction holds."""
        row = db.execute(
            """INSERT INTO job_events (job_id, seq, time, type, body_json)
               SELECT %s, COALESCE(MAX(seq), 0) + 1, now(), %s, %s FROM job_events
               WHERE job_id = %s RETURNING seq""",
            (event.job_id, event.type.value, _text(event_body_json(event)), event.job_id),
        ).fetchone()
        return int(row["seq"])

    def _state_event(
        self,
        db: psycopg.Connection[dict[str, Any]],
        job_id: str,
        state: JobState,
        message: str,
        metrics: dict[str, float] | None = None,
    ) -> None:
        self._event(db, JobEvent(job_id, EventType.STATE, state=state, message=message,
                                 metrics=metrics or {}))

    # ------------------------------------------------------------------ datasets
    _DATASET_COLUMNS = """seq, id, namespace, upload_id, display_name, task, format, size_bytes,
        sha256, rows, usable_rows, report_json, text_field, label_field, created_at"""

    def begin_upload(
        self, namespace: str, upload_id: str, header: dict
    ) -> UploadState | DatasetRecord:
        if _nul(namespace, upload_id):
            raise InvalidRequest.field("header.upload_id", "must not contain NUL characters")
        header_json = _text(json.dumps(header, sort_keys=True))
        with self._tx() as db:
            # Uploads with no chunk for longer than upload_ttl_s are forgotten, chunks first.
            db.execute(
                """DELETE FROM dataset_upload_chunks c USING dataset_uploads u
                   WHERE c.namespace = u.namespace AND c.upload_id = u.upload_id
                     AND u.touched_at < now() - make_interval(secs => %s)""",
                (self.upload_ttl_s,),
            )
            db.execute(
                "DELETE FROM dataset_uploads WHERE touched_at < now() - make_interval(secs => %s)",
                (self.upload_ttl_s,),
            )
            done = db.execute(
                f"SELECT {self._DATASET_COLUMNS} FROM datasets WHERE namespace = %s AND upload_id = %s",
                (namespace, upload_id),
            ).fetchone()
            if done is not None:
                if (done["sha256"], done["size_bytes"]) != (header["sha256"], header["size_bytes"]):
                    raise AlreadyExists(
                        f"upload_id {upload_id!r} already uploaded a different file "
                        f"(dataset {done['id']})"
                    )
                return dataset_from_row(done, _ts)
            db.execute(
                """INSERT INTO dataset_uploads (namespace, upload_id, header_json, touched_at)
                   VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING""",
                (namespace, upload_id, header_json),
            )
            row = db.execute(
                """SELECT header_json, received FROM dataset_uploads
                   WHERE namespace = %s AND upload_id = %s""",
                (namespace, upload_id),
            ).fetchone()
        if json.loads(row["header_json"]) != json.loads(header_json):
            raise AlreadyExists(
                f"upload_id {upload_id!r} is in use by an upload of a different file; "
                "use a new upload_id"
            )
        return UploadState(namespace, upload_id, header, int(row["received"]))

    def add_upload_chunk(self, namespace: str, upload_id: str, offset: int, data: bytes) -> int:
        with self._tx() as db:
            row = db.execute(
                """SELECT received FROM dataset_uploads WHERE namespace = %s AND upload_id = %s
                   FOR UPDATE""",
                (namespace, upload_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"upload {upload_id!r} not found in namespace {namespace!r}")
            if offset != row["received"]:
                raise FailedPrecondition(
                    f"chunk at offset {offset} does not continue the upload, which has "
                    f"{row['received']} bytes; send from offset {row['received']}"
                )
            db.execute(
                """INSERT INTO dataset_upload_chunks (namespace, upload_id, start_byte, data)
                   VALUES (%s, %s, %s, %s)""",
                (namespace, upload_id, offset, data),
            )
            received = offset + len(data)
            db.execute(
                """UPDATE dataset_uploads SET received = %s, touched_at = now()
                   WHERE namespace = %s AND upload_id = %s""",
                (received, namespace, upload_id),
            )
        return received

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        with self._conn() as db:
            rows = db.execute(
                """SELECT data FROM dataset_upload_chunks WHERE namespace = %s AND upload_id = %s
                   ORDER BY start_byte""",
                (namespace, upload_id),
            ).fetchall()
        return b"".join(bytes(r["data"]) for r in rows)

    def discard_upload(self, namespace: str, upload_id: str) -> None:
        with self._tx() as db:
            self._drop_upload(db, namespace, upload_id)

    @staticmethod
    def _drop_upload(db: psycopg.Connection[dict[str, Any]], namespace: str, upload_id: str) -> None:
        for table in ("dataset_upload_chunks", "dataset_uploads"):
            db.execute(
                f"DELETE FROM {table} WHERE namespace = %s AND upload_id = %s", (namespace, upload_id)
            )

    def finish_upload(self, record: DatasetRecord, content: bytes) -> tuple[DatasetRecord, bool]:
        with self._tx() as db:
            row = db.execute(
                f"""INSERT INTO datasets (id, namespace, upload_id, display_name, task, format,
                   size_bytes, sha256, rows, usable_rows, report_json, text_field, label_field,
                   created_at, content)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, now(), %s)
                   ON CONFLICT (namespace, upload_id) DO NOTHING
                   RETURNING {self._DATASET_COLUMNS}""",
                (
                    record.id, record.namespace, record.upload_id, _text(record.display_name),
                    record.task.value, record.format, record.size_bytes, record.sha256,
                    record.rows, record.usable_rows, _text(json.dumps(record.report)),
                    record.text_field, record.label_field, content,
                ),
            ).fetchone()
            created = row is not None
            if not created:
                row = db.execute(
                    f"""SELECT {self._DATASET_COLUMNS} FROM datasets
                        WHERE namespace = %s AND upload_id = %s""",
                    (record.namespace, record.upload_id),
                ).fetchone()
            self._drop_upload(db, record.namespace, record.upload_id)
        return dataset_from_row(row, _ts), created

    def get_dataset(self, namespace: str, dataset_id: str) -> DatasetRecord:
        row = None
        if not _nul(namespace, dataset_id):
            with self._conn() as db:
                row = db.execute(
                    f"SELECT {self._DATASET_COLUMNS} FROM datasets WHERE id = %s AND namespace = %s",
                    (dataset_id, namespace),
                ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")
        return dataset_from_row(row, _ts)

    def dataset_content(self, namespace: str, dataset_id: str) -> bytes:
        row = None
        if not _nul(namespace, dataset_id):
            with self._conn() as db:
                row = db.execute(
                    "SELECT content FROM datasets WHERE id = %s AND namespace = %s",
                    (dataset_id, namespace),
                ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")
        return bytes(row["content"])

    def list_datasets(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        size = _page_size(page_size)
        after = _page_after(page_token)
        if _nul(namespace):
            return [], ""
        sql = f"SELECT {self._DATASET_COLUMNS} FROM datasets WHERE namespace = %s"
        args: list[object] = [namespace]
        if after is not None:
            sql += " AND seq < %s"
            args.append(after)
        with self._conn() as db:
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT %s", [*args, size + 1]).fetchall()
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [dataset_from_row(r, _ts) for r in rows[:size]], token

    def delete_dataset(self, namespace: str, dataset_id: str) -> None:
        gone = 0
        if not _nul(namespace, dataset_id):
            with self._conn() as db:
                gone = db.execute(
                    "DELETE FROM datasets WHERE id = %s AND namespace = %s", (dataset_id, namespace)
                ).rowcount
        if not gone:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")

    # ------------------------------------------------------------------ adapter registry
    def reserve_adapter_version(self, namespace: str, name: str) -> int:
        with self._conn() as db:
            row = db.execute(
                """INSERT INTO adapter_counters (namespace, name, next_version) VALUES (%s, %s, 1)
                   ON CONFLICT (namespace, name)
                   DO UPDATE SET next_version = adapter_counters.next_version + 1
                   RETURNING next_version""",
                (namespace, name),
            ).fetchone()
        return int(row["next_version"])

    def adapter_versions(
        self, namespace: str, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRecord]:
        if _nul(namespace, name):
            return []
        sql = "SELECT * FROM adapter_versions WHERE namespace = %s"
        args: list[object] = [namespace]
        if name is not None:
            sql += " AND name = %s"
            args.append(name)
        if not include_deleted:
            sql += " AND NOT deleted"
        with self._conn() as db:
            rows = db.execute(sql + " ORDER BY name, version", args).fetchall()
        return [self._adapter(r) for r in rows]

    def adapter_names(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[str], str]:
        size = _page_size(page_size)
        if _nul(page_token):
            raise InvalidRequest.field("page_token", "is not a token this server returned")
        if _nul(namespace):
            return [], ""
        with self._conn() as db:
            rows = db.execute(
                """SELECT DISTINCT name FROM adapter_versions
                   WHERE namespace = %s AND NOT deleted AND name > %s ORDER BY name LIMIT %s""",
                (namespace, page_token, size + 1),
            ).fetchall()
        names = [r["name"] for r in rows]
        return names[:size], (names[size - 1] if len(names) > size else "")

    def delete_adapter_versions(
        self, namespace: str, name: str, version: int | None = None
    ) -> list[AdapterVersionRecord]:
        if _nul(namespace, name):
            what = name if version is None else f"{name}@{version}"
            raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
        sql = """SELECT * FROM adapter_versions
                 WHERE namespace = %s AND name = %s AND NOT deleted"""
        args: list[object] = [namespace, name]
        if version is not None:
            sql += " AND version = %s"
            args.append(version)
        with self._tx() as db:
            # The clock first, then the rows: the lock order complete_job uses.
            db.execute("SELECT seq FROM registry_clock WHERE id = 1 FOR UPDATE")
            rows = db.execute(sql + " ORDER BY version FOR UPDATE", args).fetchall()
            if not rows:
                what = name if version is None else f"{name}@{version}"
                raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
            deleted = []
            for row in rows:
                seq = self._tick(db)
                db.execute(
                    """UPDATE adapter_versions SET deleted = TRUE, seq = %s
                       WHERE namespace = %s AND name = %s AND version = %s""",
                    (seq, namespace, name, row["version"]),
                )
                deleted.append(self._adapter(row))
            self._notify(db, seq)
        return deleted

    def adapter_changes(self, after_seq: int, limit: int = 1000) -> list[AdapterVersionRecord]:
        # No in-flight filter needed: seqs are handed out in commit order (module docstring).
        with self._conn() as db:
            rows = db.execute(
                "SELECT * FROM adapter_versions WHERE seq > %s ORDER BY seq LIMIT %s",
                (after_seq, limit),
            ).fetchall()
        return [self._adapter(r) for r in rows]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _tick(db: psycopg.Connection[dict[str, Any]]) -> int:
        """The next registry seq. The row lock taken here is held until the caller's
        transaction ends, which is what makes seq order commit order."""
        row = db.execute(
            "UPDATE registry_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq"
        ).fetchone()
        return int(row["seq"])

    @staticmethod
    def _notify(db: psycopg.Connection[dict[str, Any]], seq: int) -> None:
        # Delivered when (and only if) the transaction commits.
        db.execute("SELECT pg_notify(%s, current_schema() || ':' || %s)", (REGISTRY_CHANNEL, str(seq)))

    @staticmethod
    def _job(row: dict[str, Any]) -> Job:
        return job_from_row(row, _ts)

    @staticmethod
    def _adapter(row: dict[str, Any]) -> AdapterVersionRecord:
        return adapter_from_row(row, _ts)
