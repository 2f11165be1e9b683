"""Feedback in the SQL job store: served predictions (written in batches by the API
process's prediction log, bounded by a TTL and a per-tenant cap), feedback rows (one per
prediction, replaced on resubmission), per-version feedback statistics, and each adapter's
store_inputs setting. Every query is scoped by namespace: another tenant's prediction or
feedback is never found."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from tuneserve_server.domain.errors import NotFound, QuotaExceeded
from tuneserve_server.domain.feedback import (
    FeedbackRecord,
    FeedbackSettings,
    FeedbackStats,
    ServedPrediction,
)
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import _ts
from tuneserve_server.storage.sql import (
    Compiled,
    Dialect,
    Tx,
    has_nul,
    page_after,
    strip_nul,
    valid_page_size,
)

P = schema.predictions
F = schema.feedback
S = schema.adapter_feedback_settings
J = schema.jobs


def _prediction_from_row(row: dict[str, Any]) -> ServedPrediction:
    return ServedPrediction(
        id=row["id"],
        namespace=row["namespace"],
        adapter_name=row["adapter_name"],
        adapter_version=int(row["adapter_version"]),
        task=TaskType(row["task"]),
        label=row["label"],
        score=float(row["score"]),
        input_text=row["input_text"],
        output_text=row["output_text"],
        created_at=_ts(row["created_at"]),
    )


def _feedback_from_row(row: dict[str, Any]) -> FeedbackRecord:
    return FeedbackRecord(
        id=row["id"],
        namespace=row["namespace"],
        prediction_id=row["prediction_id"],
        adapter_name=row["adapter_name"],
        adapter_version=int(row["adapter_version"]),
        task=TaskType(row["task"]),
        served_label=row["served_label"],
        served_score=float(row["served_score"]),
        label=row["label"],
        rating=None if row["rating"] is None else int(row["rating"]),
        corrected_text=row["corrected_text"],
        input_text=row["input_text"],
        served_text=row["served_text"],
        comment=row["comment"],
        key_id=row["key_id"],
        predicted_at=_ts(row["predicted_at"]),
        created_at=_ts(row["created_at"]),
    )


def _prediction_not_found(prediction_id: str) -> NotFound:
    return NotFound(f"prediction {prediction_id!r} not found (unknown, expired, or another namespace's)")


# One batch insert of served rows; created_at is the database clock at the flush.
_INSERT_PREDICTION = sa.insert(P).values(
    id=sa.bindparam("id"),
    namespace=sa.bindparam("namespace"),
    adapter_name=sa.bindparam("adapter_name"),
    adapter_version=sa.bindparam("adapter_version"),
    task=sa.bindparam("task"),
    label=sa.bindparam("label"),
    score=sa.bindparam("score"),
    input_text=sa.bindparam("input_text"),
    output_text=sa.bindparam("output_text"),
)


class FeedbackMixin:
    """The feedback half of SqlStore (it supplies the transactions and the dialect)."""

    _d: Dialect
    _engine: sa.Engine

    def _write(self) -> AbstractContextManager[Tx]: ...  # provided by SqlStore

    def _autocommit(self) -> AbstractContextManager[Tx]: ...

    # ------------------------------------------------------------------ predictions
    def insert_predictions(self, rows: Sequence[ServedPrediction]) -> int:
        """Store served rows in one transaction (one executemany); returns how many."""
        if not rows:
            return 0
        stmt = _INSERT_PREDICTION.values(created_at=self._d.now)
        with self._write() as tx:
            compiled = tx.cache.get(id(stmt)) or Compiled(stmt, tx.dialect)
            params = [
                compiled.args(
                    {
                        **tx.clock,
                        "id": r.id,
                        "namespace": r.namespace,
                        "adapter_name": r.adapter_name,
                        "adapter_version": r.adapter_version,
                        "task": r.task.value,
                        "label": strip_nul(r.label),
                        "score": float(r.score),
                        "input_text": None if r.input_text is None else strip_nul(r.input_text),
                        "output_text": None if r.output_text is None else strip_nul(r.output_text),
                    }
                )
                for r in rows
            ]
            if hasattr(tx.raw, "executemany"):  # sqlite3
                tx.raw.executemany(compiled.text, params)
            else:  # psycopg: executemany lives on the cursor (pipelined)
                with tx.raw.cursor() as cursor:
                    cursor.executemany(compiled.text, params)
        return len(rows)

    def get_prediction(self, namespace: str, prediction_id: str) -> ServedPrediction:
        """A served row of `namespace` (another namespace's is NOT_FOUND, as an unknown id)."""
        if has_nul(namespace, prediction_id):
            raise _prediction_not_found(prediction_id)
        with self._autocommit() as tx:
            row = tx.row(sa.select(P).where(P.c.id == prediction_id, P.c.namespace == namespace))
        if row is None:
            raise _prediction_not_found(prediction_id)
        return _prediction_from_row(row)

    def sweep_predictions(self, retention_s: float, max_per_namespace: int) -> int:
        """Forget predictions older than `retention_s`, then the oldest of any namespace
        holding more than `max_per_namespace`; returns how many rows went."""
        gone = 0
        with self._write() as tx:
            gone += int(
                tx.execute(
                    sa.delete(P).where(P.c.created_at < self._d.later("ttl_s")), ttl_s=-retention_s
                ).rowcount
                or 0
            )
            over = tx.rows(
                sa.select(P.c.namespace, sa.func.count().label("n"))
                .group_by(P.c.namespace)
                .having(sa.func.count() > max_per_namespace)
            )
            for row in over:
                excess = int(row["n"]) - max_per_namespace
                oldest = (
                    sa.select(P.c.id)
                    .where(P.c.namespace == row["namespace"])
                    .order_by(P.c.created_at, P.c.id)
                    .limit(excess)
                )
                gone += int(tx.execute(sa.delete(P).where(P.c.id.in_(oldest))).rowcount or 0)
        return gone

    def count_predictions(self, namespace: str) -> int:
        with self._autocommit() as tx:
            return int(tx.scalar(sa.select(sa.func.count()).select_from(P).where(P.c.namespace == namespace)))

    # ------------------------------------------------------------------ settings
    def feedback_settings(self, namespace: str, name: str) -> FeedbackSettings:
        if has_nul(namespace, name):
            return FeedbackSettings(namespace, name)
        with self._autocommit() as tx:
            row = tx.row(sa.select(S).where(S.c.namespace == namespace, S.c.name == name))
        if row is None:
            return FeedbackSettings(namespace, name)
        return FeedbackSettings(namespace, name, bool(row["store_inputs"]), _ts(row["updated_at"]))

    def store_inputs_of(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """store_inputs for each (namespace, adapter name); unset ones are False."""
        if not keys:
            return {}
        with self._autocommit() as tx:
            rows = tx.rows(
                sa.select(S.c.namespace, S.c.name, S.c.store_inputs).where(
                    sa.or_(*(sa.and_(S.c.namespace == ns, S.c.name == name) for ns, name in keys))
                )
            )
        found = {(r["namespace"], r["name"]): bool(r["store_inputs"]) for r in rows}
        return {k: found.get(k, False) for k in keys}

    def set_feedback_settings(self, namespace: str, name: str, store_inputs: bool) -> FeedbackSettings:
        with self._write() as tx:
            tx.execute(
                self._d.insert(S)
                .values(namespace=namespace, name=name, store_inputs=store_inputs, updated_at=self._d.now)
                .on_conflict_do_update(
                    index_elements=[S.c.namespace, S.c.name],
                    set_={"store_inputs": store_inputs, "updated_at": self._d.now},
                )
            )
        return self.feedback_settings(namespace, name)

    # ------------------------------------------------------------------ feedback
    def upsert_feedback(
        self, record: FeedbackRecord, *, max_per_namespace: int
    ) -> tuple[FeedbackRecord, bool]:
        """Store feedback on a prediction, replacing earlier feedback on the same one;
        (stored, created). A namespace holding max_per_namespace rows gets no new one
        (QuotaExceeded "feedback"); replacing is always allowed."""
        values = {
            "adapter_name": record.adapter_name,
            "adapter_version": record.adapter_version,
            "task": record.task.value,
            "served_label": strip_nul(record.served_label),
            "served_score": float(record.served_score),
            "label": strip_nul(record.label),
            "rating": record.rating,
            "corrected_text": strip_nul(record.corrected_text),
            "input_text": strip_nul(record.input_text),
            "served_text": strip_nul(record.served_text),
            "comment": strip_nul(record.comment),
            "key_id": record.key_id,
            "predicted_at": self._bind_time(record.predicted_at),
        }
        this = sa.and_(F.c.namespace == record.namespace, F.c.prediction_id == record.prediction_id)
        with self._write() as tx:
            existing = tx.row(sa.select(F.c.id).where(this).with_for_update())
            if existing is not None:
                tx.execute(sa.update(F).where(this).values(**values, created_at=self._d.now))
                created = False
            else:
                used = int(
                    tx.scalar(
                        sa.select(sa.func.count()).select_from(F).where(F.c.namespace == record.namespace)
                    )
                )
                if used >= max_per_namespace:
                    raise QuotaExceeded(
                        "feedback",
                        max_per_namespace,
                        used,
                        f"namespace {record.namespace!r} holds {used} feedback rows, the server's "
                        f"max_feedback_per_tenant; export and delete adapters' feedback first",
                    )
                tx.execute(
                    sa.insert(F).values(
                        id=record.id or "fb-" + uuid.uuid4().hex[:20],
                        namespace=record.namespace,
                        prediction_id=record.prediction_id,
                        created_at=self._d.now,
                        **values,
                    )
                )
                created = True
            row = tx.row(sa.select(F).where(this))
        assert row is not None
        return _feedback_from_row(row), created

    def list_feedback(
        self,
        namespace: str,
        *,
        adapter_name: str = "",
        version: int | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[FeedbackRecord], str]:
        """Newest first; `adapter_name` / `version` filter."""
        size = valid_page_size(page_size)
        after = page_after(page_token)
        if has_nul(namespace, adapter_name):
            return [], ""
        query = sa.select(F).where(F.c.namespace == namespace)
        if adapter_name:
            query = query.where(F.c.adapter_name == adapter_name)
            if version is not None:
                query = query.where(F.c.adapter_version == version)
        if after is not None:
            query = query.where(F.c.seq < after)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(F.c.seq.desc()).limit(size + 1))
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [_feedback_from_row(r) for r in rows[:size]], token

    def feedback_of(
        self, namespace: str, adapter_name: str, version: int | None = None
    ) -> list[FeedbackRecord]:
        """Every feedback row of an adapter (or one version), oldest first (bounded by the
        per-namespace feedback cap)."""
        if has_nul(namespace, adapter_name):
            return []
        query = sa.select(F).where(F.c.namespace == namespace, F.c.adapter_name == adapter_name)
        if version is not None:
            query = query.where(F.c.adapter_version == version)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(F.c.seq))
        return [_feedback_from_row(r) for r in rows]

    def feedback_stats(self, namespace: str, adapter_name: str) -> dict[int, FeedbackStats]:
        """Per version of the adapter: answered / correct / rated / corrected counts."""
        if has_nul(namespace, adapter_name):
            return {}
        answered = F.c.label != ""
        query = (
            sa.select(
                F.c.adapter_version,
                sa.func.sum(sa.case((answered, 1), else_=0)).label("answered"),
                sa.func.sum(sa.case((sa.and_(answered, F.c.label == F.c.served_label), 1), else_=0)).label(
                    "correct"
                ),
                sa.func.count(F.c.rating).label("rated"),
                sa.func.coalesce(sa.func.sum(F.c.rating), 0).label("rating_sum"),
                sa.func.sum(sa.case((F.c.corrected_text != "", 1), else_=0)).label("corrected"),
            )
            .where(F.c.namespace == namespace, F.c.adapter_name == adapter_name)
            .group_by(F.c.adapter_version)
        )
        with self._autocommit() as tx:
            rows = tx.rows(query)
        return {
            int(r["adapter_version"]): FeedbackStats(
                answered=int(r["answered"] or 0),
                correct=int(r["correct"] or 0),
                rated=int(r["rated"] or 0),
                rating_sum=int(r["rating_sum"] or 0),
                corrected=int(r["corrected"] or 0),
            )
            for r in rows
        }

    def job_training_rows(self, namespace: str, job_id: str) -> list[tuple[str, str]]:
        """The (text, label) rows a classification job trained and validated on (its spec);
        [] for another namespace's job, an unknown one, or a causal-LM job."""
        if has_nul(namespace, job_id):
            return []
        with self._autocommit() as tx:
            row = tx.row(sa.select(J.c.spec_json).where(J.c.id == job_id, J.c.namespace == namespace))
        if row is None:
            return []
        spec = json.loads(row["spec_json"])
        out = []
        for item in (*spec.get("train", ()), *spec.get("validation", ())):
            # a classification example is stored as [text, label] (domain/jobs.py)
            if isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
                out.append((item[0], item[1]))
        return out

    def _bind_time(self, value: Any) -> Any:
        """A timestamp as the column stores it (epoch seconds on SQLite): the store's
        statements run on the driver connection, without SQLAlchemy's type processing."""
        if value is None or self._d.name != "sqlite":
            return value
        return value.timestamp()
