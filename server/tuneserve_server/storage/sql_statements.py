"""The job store's hot-path statements, built once per store (for its dialect and retry
budget) with bind parameters: building and cache-keying a Core statement per call cost more
than the database work of a claim (bench/job_queue.py)."""

from __future__ import annotations

import sqlalchemy as sa

from tuneserve_server.domain.jobs import JobState
from tuneserve_server.storage import schema
from tuneserve_server.storage.sql import Dialect, param

J = schema.jobs
E = schema.job_events
AV = schema.adapter_versions

_RUNNING = JobState.RUNNING.value
_QUEUED = JobState.QUEUED.value


class Statements:
    """The hot paths' statements, built once for a dialect and a retry budget."""

    def __init__(self, d: Dialect, max_attempts: int) -> None:
        now = d.now
        self.all: list[sa.Executable] = []  # filled in at the end: every statement below
        owned = sa.and_(
            J.c.id == param("job_id"), J.c.state == _RUNNING, J.c.lease_owner == param("worker_id")
        )
        self.owned = owned
        self.lock_owned = sa.select(J.c.id).where(owned).with_for_update()
        self.job = sa.select(J).where(J.c.id == param("job_id"), J.c.namespace == param("namespace"))
        self.by_request = sa.select(J).where(
            J.c.namespace == param("namespace"), J.c.request_id == param("request_id")
        )
        self.insert_job = (
            d.insert(J)
            .values(
                id=param("id"),
                namespace=param("namespace"),
                request_id=param("request_id"),
                fingerprint=param("fingerprint"),
                adapter_name=param("adapter_name"),
                task=param("task"),
                state=_QUEUED,
                spec_json=param("spec_json"),
                hyperparameters_json=param("hyperparameters_json"),
                train_examples=param("train_examples"),
                validation_examples=param("validation_examples"),
                created_at=now,
                updated_at=now,
                info_json=param("info_json"),
            )
            .on_conflict_do_nothing(index_elements=[J.c.namespace, J.c.request_id])
            .returning(*J.c)
        )
        # Fair claiming: the oldest QUEUED job of the namespace with the fewest RUNNING jobs;
        # among namespaces with equally many, the one whose oldest queued job is oldest. One
        # ORDER BY says both: (running jobs of the row's namespace, seq). A namespace with 300
        # queued jobs and one running yields to a namespace with one queued and none running.
        # Only the candidate row is locked (FOR UPDATE OF q SKIP LOCKED on PostgreSQL; SQLite
        # drops the clause, BEGIN IMMEDIATE already serialises claims); the UPDATE re-checks
        # state = QUEUED, so a job is claimed exactly once.
        R = J.alias("r")
        running = (
            sa.select(R.c.namespace, sa.func.count().label("n"))
            .where(R.c.state == _RUNNING)
            .group_by(R.c.namespace)
            .subquery("running")
        )
        Q = J.alias("q")
        fairest = (
            sa.select(Q.c.seq)
            .select_from(Q.outerjoin(running, running.c.namespace == Q.c.namespace))
            .where(Q.c.state == _QUEUED)
            .order_by(sa.func.coalesce(running.c.n, 0), Q.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True, of=Q)
            .scalar_subquery()
        )
        self.claim = (
            sa.update(J)
            .where(J.c.seq == fairest, J.c.state == _QUEUED)
            .values(
                state=_RUNNING,
                lease_owner=param("worker_id"),
                lease_expires=d.later("lease_s"),
                attempts=J.c.attempts + 1,
                started_at=sa.func.coalesce(J.c.started_at, now),
                updated_at=now,
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
                    (J.c.cancel_requested, JobState.CANCELLED.value),
                    (spent, JobState.FAILED.value),
                    else_=_QUEUED,
                ),
                error=sa.case(
                    (J.c.cancel_requested, "cancelled by request"),
                    (
                        spent,
                        sa.literal("worker lost the job ")
                        + sa.cast(J.c.attempts, sa.Text)
                        + " times (retry budget spent)",
                    ),
                    else_=J.c.error,
                ),
                finished_at=sa.case((sa.or_(J.c.cancel_requested, spent), now), else_=J.c.finished_at),
                updated_at=now,
                lease_owner=None,
                lease_expires=None,
            )
            .returning(J.c.id, J.c.state, J.c.error)
        )
        self.heartbeat = (
            sa.update(J)
            .where(owned)
            .values(
                lease_expires=d.later("lease_s"),
                step=param("step"),
                total_steps=param("total_steps"),
                epoch=param("epoch"),
                train_loss=param("train_loss"),
                progress_json=param("progress_json"),
                updated_at=now,
            )
            .returning(J.c.cancel_requested)
        )
        self.finish = (
            sa.update(J)
            .where(owned)
            .values(
                state=param("state"),
                error=param("error"),
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires=None,
            )
            .returning(*J.c)
        )
        self.release = (
            sa.update(J)
            .where(owned)
            .values(
                state=_QUEUED,
                attempts=sa.case((J.c.attempts > 0, J.c.attempts - 1), else_=0),
                lease_owner=None,
                lease_expires=None,
                updated_at=now,
            )
            .returning(*J.c)
        )
        self.succeed = (
            sa.update(J)
            .where(owned)
            .values(
                state=JobState.SUCCEEDED.value,
                metrics_json=param("metrics_json"),
                adapter_version=param("adapter_version"),
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires=None,
                outputs_json=param("outputs_json"),
            )
            .returning(*J.c)
        )
        self.publish = (
            d.insert(AV)
            .values(
                namespace=param("namespace"),
                name=param("name"),
                version=param("version"),
                job_id=param("job_id"),
                task=param("task"),
                base_model=param("base_model"),
                labels_json=param("labels_json"),
                metrics_json=param("metrics_json"),
                lora_rank=param("lora_rank"),
                size_bytes=param("size_bytes"),
                created_at=now,
                seq=param("seq"),
                lineage_json=param("lineage_json"),
            )
            .on_conflict_do_nothing()
            .returning(AV.c.seq)
        )
        next_seq = sa.select(sa.func.coalesce(sa.func.max(E.c.seq), 0) + 1).where(
            E.c.job_id == param("job_id")
        )
        self.event = (
            sa.insert(E)
            .values(
                job_id=param("job_id"),
                seq=next_seq.scalar_subquery(),
                time=now,
                type=param("type"),
                body_json=param("body_json"),
            )
            .returning(E.c.seq)
        )
        clock = schema.registry_clock
        self.tick = sa.update(clock).where(clock.c.id == 1).values(seq=clock.c.seq + 1).returning(clock.c.seq)
        C = schema.adapter_counters
        self.reserve_version = (
            d.insert(C)
            .values(namespace=param("namespace"), name=param("name"), next_version=1)
            .on_conflict_do_update(
                index_elements=[C.c.namespace, C.c.name], set_={"next_version": C.c.next_version + 1}
            )
            .returning(C.c.next_version)
        )
        # A namespace's quota usage in one round trip (services/quotas.py checks it).
        DS, UP = schema.datasets, schema.dataset_uploads
        ns = param("namespace")
        self.usage = sa.select(
            sa.select(sa.func.count())
            .where(J.c.namespace == ns, sa.or_(J.c.state == _QUEUED, J.c.state == _RUNNING))
            .scalar_subquery()
            .label("active_jobs"),
            sa.select(sa.func.coalesce(sa.func.sum(DS.c.size_bytes), 0))
            .where(DS.c.namespace == ns)
            .scalar_subquery()
            .label("dataset_bytes"),
            # Uploads past their TTL are as good as gone (the sweep drops them): not counted.
            sa.select(sa.func.coalesce(sa.func.sum(UP.c.received), 0))
            .where(UP.c.namespace == ns, UP.c.touched_at >= d.later("ttl_s"))
            .scalar_subquery()
            .label("upload_bytes"),
            sa.select(sa.func.count())
            .where(AV.c.namespace == ns, AV.c.deleted == sa.false())
            .scalar_subquery()
            .label("adapter_versions"),
        )
        self.changes = sa.select(AV).where(AV.c.seq > param("after")).order_by(AV.c.seq).limit(param("limit"))
        AA = schema.adapter_aliases
        self.alias_changes = (
            sa.select(AA).where(AA.c.seq > param("after")).order_by(AA.c.seq).limit(param("limit"))
        )
        self.changes_upto = (
            sa.select(AV)
            .where(AV.c.seq > param("after"), AV.c.seq <= param("upto"))
            .order_by(AV.c.seq)
            .limit(param("limit"))
        )
        self.alias_changes_upto = (
            sa.select(AA)
            .where(AA.c.seq > param("after"), AA.c.seq <= param("upto"))
            .order_by(AA.c.seq)
            .limit(param("limit"))
        )
        self.all = [v for v in vars(self).values() if isinstance(v, sa.Executable)]
