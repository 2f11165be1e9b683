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

from tuneserve_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    LeaseLost,
    NotFound,
)
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState
from tuneserve_server.storage.rows import (
    adapter_from_row,
    dataset_from_row,
    event_body_json,
    event_from_row,
    job_from_row,
    progress_extras_json,
)
from tuneserve_server.domain.jobs import EventType, Job, JobEvent, JobProgress, JobSpec, JobState

# An upload nobody finished is forgotten (bytes and all) this long after its last chunk.
UPLOAD_TTL_S = 7 * 24 * 3600.0

# Columns added after the first release: a database created by an older version gets them
# on open (ALTER TABLE ... ADD COLUMN keeps every row).
_ADDED_JOB_COLUMNS = {
    "info_json": "TEXT NOT NULL DEFAULT '{}'",
    "progress_json": "TEXT NOT NULL DEFAULT '{}'",
    "outputs_json": "TEXT NOT NULL DEFAULT '{}'",
}

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
    info_json TEXT NOT NULL DEFAULT '{}',
    progress_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '{}',
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
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    body_json TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    task TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    usable_rows INTEGER NOT NULL,
    report_json TEXT NOT NULL,
    text_field TEXT NOT NULL,
    label_field TEXT NOT NULL,
    created_at REAL NOT NULL,
    content BLOB NOT NULL,
    UNIQUE (namespace, upload_id)
);
CREATE INDEX IF NOT EXISTS datasets_ns ON datasets (namespace, seq);
CREATE TABLE IF NOT EXISTS dataset_uploads (
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    header_json TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    touched_at REAL NOT NULL,
    PRIMARY KEY (namespace, upload_id)
);
CREATE TABLE IF NOT EXISTS dataset_upload_chunks (
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    start_byte INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (namespace, upload_id, start_byte)
);
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

    def __init__(
        self, path: str | Path, *, max_attempts: int = 3, upload_ttl_s: float = UPLOAD_TTL_S
    ) -> None:
        self.path = Path(path)
        self.upload_ttl_s = upload_ttl_s
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
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
            if have:
                for column, decl in _ADDED_JOB_COLUMNS.items():
                    if column not in have:
                        self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
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
    def create_job(self, spec: JobSpec, report: dict | None = None) -> tuple[Job, bool]:
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        fingerprint = hashlib.sha256(spec_json.encode()).hexdigest()
        info_json = json.dumps({
            "dataset_id": spec.dataset_id,
            "validation_dataset_id": spec.validation_dataset_id,
            "data_report": report or {},
        })
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
                   created_at, updated_at, info_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
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
                    info_json,
                ),
            )
            self._state_event(db, job_id, JobState.QUEUED, "queued", now)
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
                self._state_event(db, job_id, JobState.CANCELLED, "cancelled by request", now)
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
            self._state_event(
                db, row["id"], JobState.RUNNING,
                f"started by worker {worker_id} (attempt {claimed['attempts']})", now,
            )
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
                self._state_event(
                    db, row["id"], JobState.QUEUED,
                    "the worker's lease expired; queued again to resume from its last checkpoint",
                    now,
                )
                continue
            db.execute(
                """UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ?,
                   lease_owner = NULL, lease_expires = NULL WHERE id = ?""",
                (state.value, error, now, now, row["id"]),
            )
            self._state_event(db, row["id"], state, error, now)

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
                   train_loss = ?, progress_json = ?, updated_at = ? WHERE id = ?""",
                (
                    now + lease_seconds,
                    progress.step,
                    progress.total_steps,
                    progress.epoch,
                    progress.train_loss,
                    progress_extras_json(
                        progress, json.loads(row["progress_json"]).get("resumed_from_step", 0)
                    ),
                    now,
                    job_id,
                ),
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
                   finished_at = ?, updated_at = ?, lease_owner = NULL, lease_expires = NULL,
                   outputs_json = ? WHERE id = ?""",
                (
                    JobState.SUCCEEDED.value, json.dumps(metrics), adapter.version, now, now,
                    json.dumps(outputs or {}), job_id,
                ),
            )
            self._state_event(
                db, job_id, JobState.SUCCEEDED,
                f"published adapter {adapter.name}@{adapter.version}", now, metrics,
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
            if state is JobState.FAILED:
                self._event(db, JobEvent(job_id, EventType.ERROR, message=error), now)
            self._state_event(db, job_id, state, error, now)
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
            self._state_event(
                db, job_id, JobState.QUEUED,
                "released by a stopping worker after a checkpoint; it resumes from there", now,
            )
            return self._job(self._row(db, job_id))

    def record_resume(self, job_id: str, worker_id: str, step: int) -> None:
        now = time.time()
        with self._write() as db:
            row = self._owned(db, job_id, worker_id)
            extras = json.loads(row["progress_json"])
            extras["resumed_from_step"] = step
            db.execute(
                "UPDATE jobs SET progress_json = ?, updated_at = ? WHERE id = ?",
                (json.dumps(extras), now, job_id),
            )
            self._event(db, JobEvent(
                job_id, EventType.CHECKPOINT, message=f"resumed from the checkpoint at step {step}",
                progress=JobProgress(step=step, total_steps=row["total_steps"], epoch=row["epoch"]),
            ), now)

    # ------------------------------------------------------------------ job events
    def append_events(
        self, job_id: str, events: Sequence[JobEvent], worker_id: str | None = None
    ) -> list[int]:
        now = time.time()
        with self._write() as db:
            if worker_id is not None:
                self._owned(db, job_id, worker_id)
            elif db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFound(f"job {job_id!r} not found")
            return [self._event(db, e, now) for e in events]

    def list_events(
        self, namespace: str, job_id: str, after_seq: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        with self._read() as db:
            if db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND namespace = ?", (job_id, namespace)
            ).fetchone() is None:
                raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
            rows = db.execute(
                "SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
        return [event_from_row(r, _ts) for r in rows]

    @staticmethod
    def _event(db: sqlite3.Connection, event: JobEvent, now: float) -> int:
        # Inside BEGIN IMMEDIATE: writers are serialised, so MAX + 1 is gap- and race-free.
        seq = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (event.job_id,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO job_events (job_id, seq, time, type, body_json) VALUES (?,?,?,?,?)",
            (event.job_id, seq, now, event.type.value, event_body_json(event)),
        )
        return int(seq)

    def _state_event(
        self,
        db: sqlite3.Connection,
        job_id: str,
        state: JobState,
        message: str,
        now: float,
        metrics: dict[str, float] | None = None,
    ) -> None:
        self._event(
            db, JobEvent(job_id, EventType.STATE, state=state, message=message,
                         metrics=metrics or {}), now,
        )

    # ------------------------------------------------------------------ datasets
    def begin_upload(
        self, namespace: str, upload_id: str, header: dict
    ) -> UploadState | DatasetRecord:
        """Start or resume an upload. A finished upload_id returns its dataset."""
        now = time.time()
        with self._write() as db:
            self._expire_uploads(db, now)
            done = db.execute(
                "SELECT * FROM datasets WHERE namespace = ? AND upload_id = ?",
                (namespace, upload_id),
            ).fetchone()
            if done is not None:
                if (done["sha256"], done["size_bytes"]) != (header["sha256"], header["size_bytes"]):
                    raise AlreadyExists(
                        f"upload_id {upload_id!r} already uploaded a different file "
                        f"(dataset {done['id']})"
                    )
                return dataset_from_row(done, _ts)
            row = db.execute(
                "SELECT * FROM dataset_uploads WHERE namespace = ? AND upload_id = ?",
                (namespace, upload_id),
            ).fetchone()
            if row is None:
                db.execute(
                    """INSERT INTO dataset_uploads (namespace, upload_id, header_json, touched_at)
                       VALUES (?,?,?,?)""",
                    (namespace, upload_id, json.dumps(header, sort_keys=True), now),
                )
                return UploadState(namespace, upload_id, header, 0)
            if json.loads(row["header_json"]) != header:
                raise AlreadyExists(
                    f"upload_id {upload_id!r} is in use by an upload of a different file; "
                    "use a new upload_id"
                )
            return UploadState(namespace, upload_id, header, int(row["received"]))

    def add_upload_chunk(self, namespace: str, upload_id: str, offset: int, data: bytes) -> int:
        with self._write() as db:
            row = db.execute(
                "SELECT received FROM dataset_uploads WHERE namespace = ? AND upload_id = ?",
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
                   VALUES (?,?,?,?)""",
                (namespace, upload_id, offset, data),
            )
            received = offset + len(data)
            db.execute(
                """UPDATE dataset_uploads SET received = ?, touched_at = ?
                   WHERE namespace = ? AND upload_id = ?""",
                (received, time.time(), namespace, upload_id),
            )
            return received

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        with self._read() as db:
            rows = db.execute(
                """SELECT data FROM dataset_upload_chunks WHERE namespace = ? AND upload_id = ?
                   ORDER BY start_byte""",
                (namespace, upload_id),
            ).fetchall()
        return b"".join(bytes(r["data"]) for r in rows)

    def discard_upload(self, namespace: str, upload_id: str) -> None:
        with self._write() as db:
            self._drop_upload(db, namespace, upload_id)

    def _expire_uploads(self, db: sqlite3.Connection, now: float) -> None:
        """Forget uploads with no chunk for longer than upload_ttl_s (their bytes too)."""
        stale = db.execute(
            "SELECT namespace, upload_id FROM dataset_uploads WHERE touched_at < ?",
            (now - self.upload_ttl_s,),
        ).fetchall()
        for row in stale:
            self._drop_upload(db, row["namespace"], row["upload_id"])

    @staticmethod
    def _drop_upload(db: sqlite3.Connection, namespace: str, upload_id: str) -> None:
        for table in ("dataset_upload_chunks", "dataset_uploads"):
            db.execute(
                f"DELETE FROM {table} WHERE namespace = ? AND upload_id = ?", (namespace, upload_id)
            )

    def finish_upload(self, record: DatasetRecord, content: bytes) -> tuple[DatasetRecord, bool]:
        now = time.time()
        with self._write() as db:
            done = db.execute(
                "SELECT * FROM datasets WHERE namespace = ? AND upload_id = ?",
                (record.namespace, record.upload_id),
            ).fetchone()
            if done is not None:
                return dataset_from_row(done, _ts), False
            db.execute(
                """INSERT INTO datasets (id, namespace, upload_id, display_name, task, format,
                   size_bytes, sha256, rows, usable_rows, report_json, text_field, label_field,
                   created_at, content) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    record.id, record.namespace, record.upload_id, record.display_name,
                    record.task.value, record.format, record.size_bytes, record.sha256,
                    record.rows, record.usable_rows, json.dumps(record.report),
                    record.text_field, record.label_field, now, content,
                ),
            )
            self._drop_upload(db, record.namespace, record.upload_id)
            row = db.execute("SELECT * FROM datasets WHERE id = ?", (record.id,)).fetchone()
            return dataset_from_row(row, _ts), True

    def get_dataset(self, namespace: str, dataset_id: str) -> DatasetRecord:
        with self._read() as db:
            row = db.execute(
                """SELECT id, namespace, upload_id, display_name, task, format, size_bytes, sha256,
                   rows, usable_rows, report_json, text_field, label_field, created_at
                   FROM datasets WHERE id = ? AND namespace = ?""",
                (dataset_id, namespace),
            ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")
        return dataset_from_row(row, _ts)

    def dataset_content(self, namespace: str, dataset_id: str) -> bytes:
        with self._read() as db:
            row = db.execute(
                "SELECT content FROM datasets WHERE id = ? AND namespace = ?", (dataset_id, namespace)
            ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")
        return bytes(row["content"])

    def list_datasets(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        size = _page_size(page_size)
        after = _page_after(page_token)
        sql = """SELECT seq, id, namespace, upload_id, display_name, task, format, size_bytes,
                  sha256, rows, usable_rows, report_json, text_field, label_field, created_at
                  FROM datasets WHERE namespace = ?"""
        args: list[object] = [namespace]
        if after is not None:
            sql += " AND seq < ?"
            args.append(after)
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, size + 1]).fetchall()
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [dataset_from_row(r, _ts) for r in rows[:size]], token

    def delete_dataset(self, namespace: str, dataset_id: str) -> None:
        with self._write() as db:
            gone = db.execute(
                "DELETE FROM datasets WHERE id = ? AND namespace = ?", (dataset_id, namespace)
            ).rowcount
        if not gone:
            raise NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")

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
