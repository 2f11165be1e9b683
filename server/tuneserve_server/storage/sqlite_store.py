"""SQLite implementation of JobStore: one file shared by the API and worker processes.

WAL mode lets readers run beside one writer; every write is a short BEGIN IMMEDIATE
transaction, so a claim is atomic across processes."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tuneserve_server.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.storage.job_store import LeaseLost
from tuneserve_server.storage.records import AdapterVersionRecord
from tuneserve_server.storage.rows import adapter_from_row, job_from_row
from tuneserve_server.training.jobs import Job, JobProgress, JobSpec, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    adapter_name TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    hyperparameters_json TEXT NOT NULL,
    train_examples INTEGER NOT NULL,
    validation_examples INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    train_loss REAL,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    adapter_version INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    UNIQUE (namespace, request_id)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_ns ON jobs (namespace, seq);
CREATE TABLE IF NOT EXISTS adapter_versions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    task TEXT NOT NULL,
    base_model TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    lora_rank INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version)
);
CREATE INDEX IF NOT EXISTS adapter_versions_seq ON adapter_versions (seq);
CREATE TABLE IF NOT EXISTS adapter_counters (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    next_version INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS registry_clock (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_clock (id, seq) VALUES (1, 0);
"""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


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
    # for an SQLite INTEGER: anything else is a caller error, not an internal one.
    if not (token.isascii() and token.isdigit()) or len(token) > 18:
        raise InvalidRequest.field("page_token", "is not a token this server returned")
    return int(token)


class SqliteStore:
    """JobStore on a SQLite file. Safe across threads (one connection, one lock) and
    processes (SQLite file locks)."""

    def __init__(self, path: str | Path, *, max_attempts: int = 3) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    # ------------------------------------------------------------------ jobs, caller side
    def create_job(self, spec: JobSpec) -> tuple[Job, bool]:
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        fingerprint = hashlib.sha256(spec_json.encode()).hexdigest()
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE namespace = ? AND request_id = ?",
                (spec.namespace, spec.request_id),
            ).fetchone()
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise AlreadyExists(
                        f"request_id {spec.request_id!r} was already used for a different "
                        f"Train request (job {row['id']})"
                    )
                return self._job(row), False
            job_id = "job-" + uuid.uuid4().hex[:20]
            db.execute(
                """INSERT INTO jobs (id, namespace, request_id, fingerprint, adapter_name, task,
                   state, spec_json, hyperparameters_json, train_examples, validation_examples,
                   created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    job_id,
                    spec.namespace,
                    spec.request_id,
                    fingerprint,
                    spec.adapter_name,
                    spec.task.value,
                    JobState.QUEUED.value,
                    spec_json,
                    json.dumps(spec.hyperparameters.to_dict()),
                    len(spec.train),
                    len(spec.validation),
                    now,
                    now,
                ),
            )
            return self._job(self._row(db, job_id)), True

    def get_job(self, namespace: str, job_id: str) -> Job:
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE id = ? AND namespace = ?", (job_id, namespace)
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
        sql = "SELECT * FROM jobs WHERE namespace = ?"
        args: list[object] = [namespace]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.value for s in states]
        if adapter_name:
            sql += " AND adapter_name = ?"
            args.append(adapter_name)
        after = _page_after(page_token)
        if after is not None:
            sql += " AND seq < ?"
            args.append(after)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(size + 1)
        with self._read() as db:
            rows = db.execute(sql, args).fetchall()
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [self._job(r) for r in rows[:size]], token

    def count_jobs_by_state(self) -> dict[JobState, int]:
        with self._read() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    def cancel_job(self, namespace: str, job_id: str) -> Job:
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE id = ? AND namespace = ?", (job_id, namespace)
            ).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
            state = JobState(row["state"])
            if state.terminal:
                raise FailedPrecondition(f"job {job_id} already finished ({state.value})")
            if state is JobState.QUEUED:
                db.execute(
                    """UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?,
                       error = 'cancelled by request' WHERE id = ?""",
                    (JobState.CANCELLED.value, now, now, job_id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
            return self._job(self._row(db, job_id))

    # ------------------------------------------------------------------ jobs, worker side
    def claim_job(self, worker_id: str, lease_seconds: float) -> tuple[Job, JobSpec] | None:
        now = time.time()
        with self._write() as db:
            self._reap_expired(db, now)
            row = db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (JobState.QUEUED.value,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                """UPDATE jobs SET state = ?, lease_owner = ?, lease_expires = ?,
                   attempts = attempts + 1, started_at = COALESCE(started_at, ?), updated_at = ?
                   WHERE id = ?""",
                (JobState.RUNNING.value, worker_id, now + lease_seconds, now, now, row["id"]),
            )
            claimed = self._row(db, row["id"])
        return self._job(claimed), JobSpec.from_dict(json.loads(claimed["spec_json"]))

    def _reap_expired(self, db: sqlite3.Connection, now: float) -> None:
        expired = db.execute(
            "SELECT id, attempts, cancel_requested FROM jobs WHERE state = ? AND lease_expires < ?",
            (JobState.RUNNING.value, now),
        ).fetchall()
        for row in expired:
            if row["cancel_requested"]:
                state, error = JobState.CANCELLED, "cancelled by request"
            elif row["attempts"] >= self.max_attempts:
                state = JobState.FAILED
                error = f"worker lost the job {row['attempts']} times (retry budget spent)"
            else:
                db.execute(
                    """UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL,
                       updated_at = ? WHERE id = ?""",
                    (JobState.QUEUED.value, now, row["id"]),
                )
                continue
            db.execute(
                """UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ?,
                   lease_owner = NULL, lease_expires = NULL WHERE id = ?""",
                (state.value, error, now, now, row["id"]),
            )

    def _owned(self, db: sqlite3.Connection, job_id: str, worker_id: str) -> sqlite3.Row:
        row = db.execute(
            "SELECT * FROM jobs WHERE id = ? AND state = ? AND lease_owner = ?",
            (job_id, JobState.RUNNING.value, worker_id),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
        return row

    def heartbeat(
        self, job_id: str, worker_id: str, lease_seconds: float, progress: JobProgress
    ) -> bool:
        now = time.time()
        with self._write() as db:
            row = self._owned(db, job_id, worker_id)
            db.execute(
                """UPDATE jobs SET lease_expires = ?, step = ?, total_steps = ?, epoch = ?,
                   train_loss = ?, updated_at = ? WHERE id = ?""",
                (
                    now + lease_seconds,
                    progress.step,
                    progress.total_steps,
                    progress.epoch,
                    progress.train_loss,
                    now,
                    job_id,
                ),
            )
            return bool(row["cancel_requested"])

    def complete_job(
        self, job_id: str, worker_id: str, metrics: dict[str, float], adapter: AdapterVersionRecord
    ) -> Job:
        now = time.time()
        with self._write() as db:
            self._owned(db, job_id, worker_id)
            seq = self._tick(db)
            db.execute(
                """INSERT INTO adapter_versions (namespace, name, version, job_id, task,
                   base_model, labels_json, metrics_json, lora_rank, size_bytes, created_at, seq)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?)""",
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
                    now,
                    seq,
                ),
            )
            db.execute(
                """UPDATE jobs SET state = ?, metrics_json = ?, adapter_version = ?,
                   finished_at = ?, updated_at = ?, lease_owner = NULL, lease_expires = NULL
                   WHERE id = ?""",
                (JobState.SUCCEEDED.value, json.dumps(metrics), adapter.version, now, now, job_id),
            )
            return self._job(self._row(db, job_id))

    def finish_job(self, job_id: str, worker_id: str, state: JobState, error: str = "") -> Job:
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"finish_job takes FAILED or CANCELLED, not {state}")
        now = time.time()
        with self._write() as db:
            self._owned(db, job_id, worker_id)
            db.execute(
                """UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ?,
                   lease_owner = NULL, lease_expires = NULL WHERE id = ?""",
                (state.value, error, now, now, job_id),
            )
            return self._job(self._row(db, job_id))

    def release_job(self, job_id: str, worker_id: str) -> Job:
        now = time.time()
        with self._write() as db:
            self._owned(db, job_id, worker_id)
            db.execute(
                """UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), lease_owner = NULL,
                   lease_expires = NULL, updated_at = ? WHERE id = ?""",
                (JobState.QUEUED.value, now, job_id),
            )
            return self._job(self._row(db, job_id))

    # ------------------------------------------------------------------ adapter registry
    def reserve_adapter_version(self, namespace: str, name: str) -> int:
        with self._write() as db:
            db.execute(
                """INSERT INTO adapter_counters (namespace, name, next_version) VALUES (?, ?, 1)
                   ON CONFLICT (namespace, name) DO UPDATE SET next_version = next_version + 1""",
                (namespace, name),
            )
            row = db.execute(
                "SELECT next_version FROM adapter_counters WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            return int(row["next_version"])

    def adapter_versions(
        self, namespace: str, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRecord]:
        sql = "SELECT * FROM adapter_versions WHERE namespace = ?"
        args: list[object] = [namespace]
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        if not include_deleted:
            sql += " AND deleted = 0"
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY name, version", args).fetchall()
        return [self._adapter(r) for r in rows]

    def adapter_names(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[str], str]:
        size = _page_size(page_size)
        with self._read() as db:
            rows = db.execute(
                """SELECT DISTINCT name FROM adapter_versions
                   WHERE namespace = ? AND deleted = 0 AND name > ? ORDER BY name LIMIT ?""",
                (namespace, page_token, size + 1),
            ).fetchall()
        names = [r["name"] for r in rows]
        return names[:size], (names[size - 1] if len(names) > size else "")

    def delete_adapter_versions(
        self, namespace: str, name: str, version: int | None = None
    ) -> list[AdapterVersionRecord]:
        sql = "SELECT * FROM adapter_versions WHERE namespace = ? AND name = ? AND deleted = 0"
        args: list[object] = [namespace, name]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        with self._write() as db:
            rows = db.execute(sql, args).fetchall()
            if not rows:
                what = name if version is None else f"{name}@{version}"
                raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
            deleted = []
            for row in rows:
                seq = self._tick(db)
                db.execute(
                    """UPDATE adapter_versions SET deleted = 1, seq = ?
                       WHERE namespace = ? AND name = ? AND version = ?""",
                    (seq, namespace, name, row["version"]),
                )
                deleted.append(self._adapter(row))
            return deleted

    def adapter_changes(self, after_seq: int, limit: int = 1000) -> list[AdapterVersionRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM adapter_versions WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [self._adapter(r) for r in rows]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _tick(db: sqlite3.Connection) -> int:
        db.execute("UPDATE registry_clock SET seq = seq + 1 WHERE id = 1")
        return int(db.execute("SELECT seq FROM registry_clock WHERE id = 1").fetchone()[0])

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return job_from_row(row, _ts)

    @staticmethod
    def _adapter(row: sqlite3.Row) -> AdapterVersionRecord:
        return adapter_from_row(row, _ts)
