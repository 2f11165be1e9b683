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

Everything else is the same SQL on both. Locks: a claim takes the fairest QUEUED job (the oldest
of the namespace with the fewest RUNNING jobs: sql_statements.py) with
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
polling) are built once per store with bind parameters (`sql_statements.Statements`): building and
cache-keying a Core statement per call cost more than the database work (bench/job_queue.py)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from tuneserve_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    LeaseLost,
    NotFound,
)
from tuneserve_server.domain.evaluations import KIND_EVALUATION, KIND_TRAIN, EvaluationSpec
from tuneserve_server.domain.jobs import EventType, Job, JobEvent, JobProgress, JobSpec, JobState
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import PROGRESS_EXTRAS, event_body_json, event_from_row, job_from_row
from tuneserve_server.storage.sql import (
    MIGRATIONS_DIR,
    Compiled,
    Dialect,
    Tx,
    has_nul,
    migrate,
    page_after,
    strip_nul,
    valid_page_size,
)
from tuneserve_server.storage.sql_datasets import DatasetsMixin
from tuneserve_server.storage.sql_evaluations import EvaluationsMixin
from tuneserve_server.storage.sql_feedback import FeedbackMixin
from tuneserve_server.storage.sql_keys import KeysMixin
from tuneserve_server.storage.sql_registry import RegistryMixin
from tuneserve_server.storage.sql_statements import Statements

__all__ = ["MIGRATIONS_DIR", "UPLOAD_TTL_S", "Dialect", "SqlStore", "migrate"]

# An upload nobody finished is forgotten (bytes and all) this long after its last chunk.
UPLOAD_TTL_S = 7 * 24 * 3600.0

J = schema.jobs
E = schema.job_events

_RUNNING = JobState.RUNNING.value
_QUEUED = JobState.QUEUED.value


class SqlStore(DatasetsMixin, RegistryMixin, KeysMixin, FeedbackMixin, EvaluationsMixin):
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
        self._q = Statements(dialect, max_attempts)
        # Compiled once; these statements live as long as the store, so their ids stay theirs.
        self._compiled = {
            id(stmt): Compiled(stmt, engine.dialect) for stmt in (*self._q.all, *dialect.prebuilt)
        }
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

    def _tx(self, raw: Any) -> Tx:
        return Tx(raw, self._engine.dialect, self._compiled, self._d.clock_params())

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._raw() as raw, self._d.write_transaction(raw):
            yield self._tx(raw)

    @contextmanager
    def _autocommit(self) -> Iterator[Tx]:
        with self._raw() as raw, self._d.autocommit(raw):
            yield self._tx(raw)

    # ------------------------------------------------------------------ jobs, caller side
    def create_job(self, spec: JobSpec, report: dict | None = None) -> tuple[Job, bool]:
        if has_nul(spec.request_id):
            raise InvalidRequest.field("request_id", "must not contain NUL characters")
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        # What the caller sent, not what it resolved to: a retry after the init_from alias
        # moved is the same request (it gets the job the first call queued).
        asked = {k: v for k, v in spec.to_dict().items() if k != "init_from"}
        fingerprint = hashlib.sha256(
            json.dumps(asked, separators=(",", ":"), sort_keys=True).encode()
        ).hexdigest()
        info = {
            "dataset_id": spec.dataset_id,
            "validation_dataset_id": spec.validation_dataset_id,
            "data_report": report or {},
            "promotion": spec.promotion.to_dict(),
            "init_from": spec.init_from,
            "init_from_requested": spec.init_from_requested,
        }
        job_id = "job-" + uuid.uuid4().hex[:20]
        with self._write() as tx:
            # ON CONFLICT DO NOTHING: on PostgreSQL it waits for a concurrent insert of the
            # same key to commit or roll back, so two racing submits make one job.
            row = tx.row(
                self._q.insert_job,
                id=job_id,
                namespace=spec.namespace,
                request_id=spec.request_id,
                fingerprint=fingerprint,
                adapter_name=spec.adapter_name,
                task=spec.task.value,
                spec_json=spec_json,
                hyperparameters_json=json.dumps(spec.hyperparameters.to_dict()),
                train_examples=len(spec.train),
                validation_examples=len(spec.validation),
                info_json=strip_nul(json.dumps(info)),
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

    def job_spec(self, namespace: str, job_id: str) -> JobSpec:
        """The spec a job was queued with (its examples included)."""
        if has_nul(namespace, job_id):
            raise self._job_not_found(namespace, job_id)
        with self._autocommit() as tx:
            row = tx.row(sa.select(J.c.spec_json).where(J.c.id == job_id, J.c.namespace == namespace))
        if row is None:
            raise self._job_not_found(namespace, job_id)
        return JobSpec.from_dict(json.loads(row["spec_json"]))

    @staticmethod
    def _job_not_found(namespace: str, job_id: str) -> NotFound:
        return NotFound(f"job {job_id!r} not found in namespace {namespace!r}")

    def get_job(self, namespace: str, job_id: str) -> Job:
        row = None
        if not has_nul(namespace, job_id):
            with self._autocommit() as tx:
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
        rows, token = self._list_rows(namespace, KIND_TRAIN, states, adapter_name, page_size, page_token)
        return [job_from_row(r) for r in rows], token

    def _list_rows(
        self,
        namespace: str,
        kind: str,
        states: Sequence[JobState],
        adapter_name: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of a namespace's job rows of `kind` (training job or evaluation), newest
        first, filtered by state (any of `states`; none: all) and adapter name (none: all),
        and the next page's token ("" on the last page). ListJobs and ListEvaluations."""
        size = valid_page_size(page_size)
        after = page_after(page_token)
        if has_nul(namespace, adapter_name):
            return [], ""
        query = sa.select(J).where(J.c.namespace == namespace, J.c.kind == kind)
        if states:
            query = query.where(sa.or_(*(J.c.state == s.value for s in states)))
        if adapter_name:
            query = query.where(J.c.adapter_name == adapter_name)
        if after is not None:
            query = query.where(J.c.seq < after)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(J.c.seq.desc()).limit(size + 1))
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return rows[:size], token

    def count_jobs_by_state(self) -> dict[JobState, int]:
        with self._autocommit() as tx:
            rows = tx.rows(
                sa.select(J.c.state, sa.func.count().label("n"))
                .where(J.c.kind == KIND_TRAIN)
                .group_by(J.c.state)
            )
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    def cancel_job(self, namespace: str, job_id: str) -> Job:
        return job_from_row(self._cancel(namespace, job_id, KIND_TRAIN, self._job_not_found))

    def _cancel(self, namespace: str, job_id: str, kind: str, not_found) -> dict[str, Any]:
        """Cancel a job row of `kind` (training job or evaluation): QUEUED -> CANCELLED at once,
        RUNNING -> cancel requested; terminal -> FailedPrecondition. Returns the row."""
        if has_nul(namespace, job_id):
            raise not_found(namespace, job_id)
        with self._write() as tx:
            row = tx.row(
                sa.select(J.c.state)
                .where(J.c.id == job_id, J.c.namespace == namespace, J.c.kind == kind)
                .with_for_update()
            )
            if row is None:
                raise not_found(namespace, job_id)
            state = JobState(row["state"])
            if state.terminal:
                raise FailedPrecondition(f"job {job_id} already finished ({state.value})")
            now = self._d.now
            if state is JobState.QUEUED:
                values: dict[str, Any] = {
                    "state": JobState.CANCELLED.value,
                    "finished_at": now,
                    "updated_at": now,
                    "error": "cancelled by request",
                }
            else:
                values = {"cancel_requested": True, "updated_at": now}
            row = tx.row(sa.update(J).where(J.c.id == job_id).values(**values).returning(*J.c))
            if state is JobState.QUEUED:
                self._state_event(tx, job_id, JobState.CANCELLED, "cancelled by request")
        return row

    def namespace_usage(self, namespace: str) -> dict[str, int]:
        if has_nul(namespace):
            return dict.fromkeys(
                ("active_jobs", "active_evaluations", "dataset_bytes", "upload_bytes", "adapter_versions"), 0
            )
        with self._autocommit() as tx:
            row = tx.row(self._q.usage, namespace=namespace, ttl_s=-float(self.upload_ttl_s))
        assert row is not None
        return {k: int(v) for k, v in row.items()}

    # ------------------------------------------------------------------ jobs, worker side
    def claim_job(self, worker_id: str, lease_seconds: float) -> tuple[Job, JobSpec | EvaluationSpec] | None:
        with self._write() as tx:
            self._reap_expired(tx)
            row = tx.row(self._q.claim, worker_id=worker_id, lease_s=float(lease_seconds))
            if row is None:
                return None
            self._state_event(
                tx,
                row["id"],
                JobState.RUNNING,
                f"started by worker {worker_id} (attempt {row['attempts']})",
            )
        spec = json.loads(row["spec_json"])
        if row["kind"] == KIND_EVALUATION:  # an evaluation: the worker runs it, publishes nothing
            return job_from_row(row), EvaluationSpec.from_dict(spec)
        return job_from_row(row), JobSpec.from_dict(spec)

    def _reap_expired(self, tx: Tx) -> None:
        """Expired leases: back to QUEUED, or CANCELLED when cancel was requested, or FAILED
        once max_attempts workers have lost the job. Rows another transaction holds (a
        heartbeat renewing, another reaper) are skipped, and a row whose lease was renewed
        after this statement began fails the re-checked WHERE clause and is left alone."""
        if tx.row(self._q.any_expired) is None:
            return
        for row in tx.rows(self._q.reap):  # the UPDATE holds these rows: event seqs stay in order
            state = JobState(row["state"])
            message = (
                row["error"]
                if state.terminal
                else ("the worker's lease expired; queued again to resume from its last checkpoint")
            )
            self._state_event(tx, row["id"], state, message)

    def _lock_owned(self, tx: Tx, job_id: str, worker_id: str) -> None:
        if tx.row(self._q.lock_owned, job_id=job_id, worker_id=worker_id) is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")

    def _update_owned(
        self, tx: Tx, stmt: sa.Executable, job_id: str, worker_id: str, **params: Any
    ) -> sa.RowMapping:
        row = tx.row(stmt, job_id=job_id, worker_id=worker_id, **params)
        if row is None:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
        return row

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float, progress: JobProgress) -> bool:
        with self._autocommit() as tx:  # one statement: its own transaction
            row = self._update_owned(
                tx,
                self._q.heartbeat,
                job_id,
                worker_id,
                lease_s=float(lease_seconds),
                step=progress.step,
                total_steps=progress.total_steps,
                epoch=progress.epoch,
                train_loss=progress.train_loss,
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
        *,
        promote: bool = True,
        promote_reason: str = "promotion policy always",
    ) -> Job:
        outputs = dict(outputs or {})
        with self._write() as tx:
            self._lock_owned(tx, job_id, worker_id)  # lock order: jobs row, then the clock
            seq = self._publish_version(tx, replace(adapter, job_id=job_id))
            move = self._promote_in(
                tx,
                adapter.namespace,
                adapter.name,
                adapter.version,
                promote=promote,
                actor=f"job:{job_id}",
                reason=promote_reason,
            )
            promotion = dict(outputs.get("promotion") or {})
            promotion["promoted"] = move is not None
            if move is not None:
                promotion["reason"] = move.reason
                promotion["from_version"] = move.from_version
            outputs["promotion"] = promotion
            row = self._update_owned(
                tx,
                self._q.succeed,
                job_id,
                worker_id,
                metrics_json=json.dumps(metrics),
                adapter_version=adapter.version,
                outputs_json=strip_nul(json.dumps(outputs)),
            )
            where = (
                f"; default -> {adapter.version} ({move.reason})"
                if move is not None
                else f"; default not moved ({promotion.get('reason') or promote_reason})"
            )
            self._state_event(
                tx,
                job_id,
                JobState.SUCCEEDED,
                f"published adapter {adapter.name}@{adapter.version}{where}",
                metrics,
            )
            self._notify(tx, move.sequence if move is not None else seq)
        return job_from_row(row)

    def finish_job(self, job_id: str, worker_id: str, state: JobState, error: str = "") -> Job:
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"finish_job takes FAILED or CANCELLED, not {state}")
        with self._write() as tx:
            row = self._update_owned(
                tx, self._q.finish, job_id, worker_id, state=state.value, error=strip_nul(error)
            )
            if state is JobState.FAILED:
                self._event(tx, JobEvent(job_id, EventType.ERROR, message=error))
            self._state_event(tx, job_id, state, error)
        return job_from_row(row)

    def release_job(self, job_id: str, worker_id: str) -> Job:
        with self._write() as tx:
            row = self._update_owned(tx, self._q.release, job_id, worker_id)
            self._state_event(
                tx,
                job_id,
                JobState.QUEUED,
                "released by a stopping worker after a checkpoint; it resumes from there",
            )
        return job_from_row(row)

    def record_resume(self, job_id: str, worker_id: str, step: int) -> None:
        with self._write() as tx:
            row = tx.row(
                sa.select(J.c.info_json, J.c.total_steps, J.c.epoch).where(self._q.owned).with_for_update(),
                job_id=job_id,
                worker_id=worker_id,
            )
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {worker_id}")
            info = json.loads(row["info_json"] or "{}")
            info["resumed_from_step"] = step
            tx.execute(
                sa.update(J)
                .where(J.c.id == job_id)
                .values(info_json=strip_nul(json.dumps(info)), updated_at=self._d.now)
            )
            self._event(
                tx,
                JobEvent(
                    job_id,
                    EventType.CHECKPOINT,
                    message=f"resumed from the checkpoint at step {step}",
                    progress=JobProgress(step=step, total_steps=row["total_steps"], epoch=row["epoch"]),
                ),
            )

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
        if has_nul(namespace, job_id):
            raise self._job_not_found(namespace, job_id)
        with self._autocommit() as tx:
            if tx.row(sa.select(J.c.id).where(J.c.id == job_id, J.c.namespace == namespace)) is None:
                raise self._job_not_found(namespace, job_id)
            rows = tx.rows(
                sa.select(E).where(E.c.job_id == job_id, E.c.seq > after_seq).order_by(E.c.seq).limit(limit)
            )
        return [event_from_row(r) for r in rows]

    def _event(self, tx: Tx, event: JobEvent) -> int:
        """Append under the job row's lock, which the caller's transaction holds."""
        return int(
            tx.scalar(
                self._q.event,
                job_id=event.job_id,
                type=event.type.value,
                body_json=strip_nul(event_body_json(event)),
            )
        )

    def _state_event(
        self, tx: Tx, job_id: str, state: JobState, message: str, metrics: dict[str, float] | None = None
    ) -> None:
        self._event(
            tx, JobEvent(job_id, EventType.STATE, state=state, message=message, metrics=metrics or {})
        )
