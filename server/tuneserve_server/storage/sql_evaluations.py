"""Evaluations in the SQL job store: rows of the jobs table with kind "evaluation" (migration
0005). Creating, reading, listing and cancelling them are here; a worker claims them with
claim_job (which hands back an EvaluationSpec for such a row), keeps them alive with
heartbeat, logs with append_events, fails or cancels them with finish_job and completes them
with complete_evaluation, which stores the results as JSON in outputs_json."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from tuneserve_server.domain.errors import AlreadyExists, InvalidRequest, NotFound
from tuneserve_server.domain.evaluations import KIND_EVALUATION, Evaluation, EvaluationSpec
from tuneserve_server.domain.jobs import JobState
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import job_from_row
from tuneserve_server.storage.sql import has_nul, strip_nul

J = schema.jobs


def evaluation_from_row(row: dict[str, Any]) -> Evaluation:
    job = job_from_row(row)
    spec = json.loads(row["spec_json"])
    outputs = json.loads(row["outputs_json"] or "{}")
    return Evaluation(
        id=job.id,
        namespace=job.namespace,
        task=job.task,
        state=job.state,
        request_id=job.request_id,
        targets=tuple(spec["targets"]),
        requested=tuple(spec.get("requested", spec["targets"])),
        rows=job.train_examples,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=job.progress,
        dataset_id=spec.get("dataset_id", ""),
        error=job.error,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        resamples=int(spec.get("resamples", 1000)),
        seed=int(spec.get("seed", 0)),
        results=outputs.get("results", {}),
    )


def _not_found(namespace: str, evaluation_id: str) -> NotFound:
    return NotFound(f"evaluation {evaluation_id!r} not found in namespace {namespace!r}")


class EvaluationsMixin:
    """The evaluation half of SqlStore (it supplies the transactions, the dialect, the
    jobs' own state machine and the listing query, `_list_rows`, it shares with ListJobs)."""

    def create_evaluation(self, spec: EvaluationSpec) -> tuple[Evaluation, bool]:
        """Insert a QUEUED evaluation; idempotent on (namespace, request_id), which it shares
        with training jobs (a request id names one thing)."""
        if has_nul(spec.request_id):
            raise InvalidRequest.field("request_id", "must not contain NUL characters")
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        fingerprint = hashlib.sha256(spec_json.encode()).hexdigest()
        evaluation_id = "eval-" + uuid.uuid4().hex[:20]
        now = self._d.now
        insert = (
            self._d.insert(J)
            .values(
                id=evaluation_id,
                namespace=spec.namespace,
                request_id=spec.request_id,
                fingerprint=fingerprint,
                adapter_name=spec.adapter_name,
                task=spec.task.value,
                state=JobState.QUEUED.value,
                spec_json=spec_json,
                hyperparameters_json="{}",
                train_examples=len(spec.rows),
                validation_examples=0,
                created_at=now,
                updated_at=now,
                info_json=strip_nul(json.dumps({"dataset_id": spec.dataset_id})),
                kind=KIND_EVALUATION,
            )
            .on_conflict_do_nothing(index_elements=[J.c.namespace, J.c.request_id])
            .returning(*J.c)
        )
        with self._write() as tx:
            row = tx.row(insert)
            if row is not None:
                self._state_event(tx, evaluation_id, JobState.QUEUED, "queued")
                return evaluation_from_row(row), True
            row = tx.row(self._q.by_request, namespace=spec.namespace, request_id=spec.request_id)
        if row["fingerprint"] != fingerprint or row["kind"] != KIND_EVALUATION:
            raise AlreadyExists(
                f"request_id {spec.request_id!r} was already used for a different request ({row['id']})"
            )
        return evaluation_from_row(row), False

    def get_evaluation(self, namespace: str, evaluation_id: str) -> Evaluation:
        row = None
        if not has_nul(namespace, evaluation_id):
            with self._autocommit() as tx:
                row = tx.row(
                    sa.select(J).where(
                        J.c.id == evaluation_id, J.c.namespace == namespace, J.c.kind == KIND_EVALUATION
                    )
                )
        if row is None:
            raise _not_found(namespace, evaluation_id)
        return evaluation_from_row(row)

    def list_evaluations(
        self,
        namespace: str,
        *,
        states: Sequence[JobState] = (),
        adapter_name: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[Evaluation], str]:
        """Newest first; `adapter_name`: evaluations whose first adapter target is that name."""
        rows, token = self._list_rows(namespace, KIND_EVALUATION, states, adapter_name, page_size, page_token)
        return [evaluation_from_row(r) for r in rows], token

    def cancel_evaluation(self, namespace: str, evaluation_id: str) -> Evaluation:
        return evaluation_from_row(self._cancel(namespace, evaluation_id, KIND_EVALUATION, _not_found))

    def complete_evaluation(
        self, evaluation_id: str, worker_id: str, summary: dict[str, float], results: dict[str, Any]
    ) -> Evaluation:
        """Mark SUCCEEDED with the results (while this worker holds the lease: else LeaseLost)."""
        with self._write() as tx:
            row = self._update_owned(
                tx,
                self._q.succeed,
                evaluation_id,
                worker_id,
                metrics_json=json.dumps(summary),
                adapter_version=0,
                outputs_json=strip_nul(json.dumps({"results": results})),
            )
            self._state_event(tx, evaluation_id, JobState.SUCCEEDED, "evaluation finished", summary)
        return evaluation_from_row(row)
