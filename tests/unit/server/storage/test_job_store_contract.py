"""The JobStore contract, run against every implementation: SQLite (a file) and PostgreSQL
(the real server; a fresh schema per test). Idempotent submits, tenant isolation, paging,
cancel, atomic claims from several store instances (several worker processes), leases and
their reaping, the registry and its change feed.

`open_store(**kwargs)` opens another store instance on the same database, as another
process would; the fixture closes every instance after the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tuneserve_server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    LeaseLost,
    NotFound,
)
from tuneserve_server.domain.jobs import JobProgress, JobState, TaskType
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.storage.job_store import JobStore

OpenStore = Callable[..., JobStore]


def _record(spec, version: int, job_id: str = "") -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=spec.namespace,
        name=spec.adapter_name,
        version=version,
        job_id=job_id,
        task=spec.task,
        base_model="tiny-bert",
        labels=("neg", "pos"),
        metrics={"accuracy": 0.75},
        lora_rank=4,
        size_bytes=1234,
        created_at=datetime.now(UTC),
    )


def _publish(store: JobStore, spec, worker_id: str = "w") -> int:
    """Run one job through the worker side and register its adapter version."""
    job, _ = store.create_job(spec)
    claimed = store.claim_job(worker_id, 60)
    assert claimed is not None and claimed[0].id == job.id
    version = store.reserve_adapter_version(spec.namespace, spec.adapter_name)
    store.complete_job(job.id, worker_id, {"accuracy": 0.75}, _record(spec, version, job.id))
    return version


def _run_threads(target: Callable[..., None], args: list[tuple]) -> None:
    errors: list[BaseException] = []

    def run(*a: object) -> None:
        try:
            target(*a)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# ------------------------------------------------------------------ create / get
def test_create_job_is_idempotent_on_namespace_and_request_id(store, make_spec):
    spec = make_spec(request_id="r1")
    job, created = store.create_job(spec)
    assert created is True
    assert job.state is JobState.QUEUED
    assert job.train_examples == 4 and job.validation_examples == 1

    again, created_again = store.create_job(make_spec(request_id="r1"))
    assert created_again is False
    assert again == job

    with pytest.raises(AlreadyExists, match="r1"):
        store.create_job(make_spec(request_id="r1", n=6))
    # The same request id in another namespace is another caller's key: a new job.
    other, created_other = store.create_job(make_spec(namespace="b", request_id="r1"))
    assert created_other is True and other.id != job.id
    assert len(store.list_jobs("default")[0]) == 1


def test_racing_submits_of_one_request_id_make_one_job(open_store, make_spec):
    stores = [open_store() for _ in range(4)]
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def submit(s: JobStore) -> None:
        start.wait()
        job, created = s.create_job(make_spec(request_id="same"))
        with lock:
            results.append((job.id, created))

    _run_threads(submit, [(s,) for s in stores])
    assert len({job_id for job_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]


def test_job_timestamps_are_aware_utc_and_ordered(store, make_spec):
    before = datetime.now(UTC) - timedelta(seconds=5)
    job, _ = store.create_job(make_spec())
    assert job.created_at.utcoffset() == timedelta(0) and job.created_at.tzinfo is not None
    assert before < job.created_at < datetime.now(UTC) + timedelta(seconds=5)
    assert job.updated_at == job.created_at and job.started_at is None and job.finished_at is None
    running, _ = store.claim_job("w", 60)
    assert running.started_at is not None and running.started_at >= job.created_at
    assert running.started_at.utcoffset() == timedelta(0)
    done = store.finish_job(job.id, "w", JobState.FAILED, "boom")
    assert done.finished_at >= running.started_at and done.updated_at == done.finished_at
    assert store.get_job("default", job.id) == done


def test_jobs_are_invisible_across_namespaces(store, make_spec):
    job, _ = store.create_job(make_spec(namespace="a"))
    assert store.get_job("a", job.id).id == job.id
    with pytest.raises(NotFound):
        store.get_job("b", job.id)
    with pytest.raises(NotFound):
        store.cancel_job("b", job.id)
    assert store.list_jobs("b") == ([], "")
    assert store.get_job("a", job.id).state is JobState.QUEUED  # the failed cancel did nothing
    with pytest.raises(NotFound):
        store.get_job("a", "job-does-not-exist")


# ------------------------------------------------------------------ list / count
def test_list_jobs_pages_newest_first_and_filters(store, make_spec):
    ids = []
    for i in range(5):
        job, _ = store.create_job(make_spec(namespace="a", request_id=f"r{i}", adapter_name="xy"[i % 2]))
        ids.append(job.id)
    store.create_job(make_spec(namespace="b", request_id="rb"))

    seen, token, pages = [], "", 0
    while True:
        jobs, token = store.list_jobs("a", page_size=2, page_token=token)
        assert len(jobs) <= 2
        seen += [j.id for j in jobs]
        pages += 1
        if not token:
            break
    assert pages == 3
    assert seen == ids[::-1]  # newest first, each exactly once, nothing from namespace b

    assert [j.id for j in store.list_jobs("a", page_size=0)[0]] == ids[::-1]  # 0: the default
    assert store.list_jobs("a", page_size=5)[1] == ""  # an exact fit has no next page

    assert [j.id for j in store.list_jobs("a", adapter_name="x")[0]] == [ids[4], ids[2], ids[0]]
    claimed = store.claim_job("w", 60)
    assert claimed is not None and claimed[0].id == ids[0]  # oldest first for workers
    running, _ = store.list_jobs("a", states=[JobState.RUNNING])
    assert [j.id for j in running] == [ids[0]]
    queued_y, _ = store.list_jobs("a", states=[JobState.QUEUED], adapter_name="y")
    assert [j.id for j in queued_y] == [ids[3], ids[1]]
    both, _ = store.list_jobs("a", states=[JobState.QUEUED, JobState.RUNNING])
    assert len(both) == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_token": "abc"}, "page_token"),
        ({"page_token": "-3"}, "page_token"),
        ({"page_token": "²"}, "page_token"),  # str.isdigit() says yes, int() says no
        ({"page_token": "9" * 30}, "page_token"),  # too big for a 64-bit integer
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
    ],
)
def test_list_jobs_rejects_bad_paging(store, kwargs, field):
    with pytest.raises(InvalidRequest) as err:
        store.list_jobs("a", **kwargs)
    assert [v.field for v in err.value.violations] == [field]


def test_count_jobs_by_state_spans_namespaces(store, make_spec):
    assert store.count_jobs_by_state() == {}
    for i in range(4):
        store.create_job(make_spec(namespace="ab"[i % 2], request_id=f"r{i}"))
    first, _ = store.claim_job("w", 60)
    store.finish_job(first.id, "w", JobState.FAILED, "boom")
    store.claim_job("w", 60)
    (queued,), _ = store.list_jobs("ab"[3 % 2], states=[JobState.QUEUED])
    store.cancel_job(queued.namespace, queued.id)
    assert store.count_jobs_by_state() == {
        JobState.FAILED: 1,
        JobState.RUNNING: 1,
        JobState.QUEUED: 1,
        JobState.CANCELLED: 1,
    }


# ------------------------------------------------------------------ cancel
def test_cancel_queued_job_is_immediate(store, make_spec):
    job, _ = store.create_job(make_spec())
    cancelled = store.cancel_job("default", job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.error == "cancelled by request"
    assert store.claim_job("w", 60) is None  # a worker never sees it
    with pytest.raises(FailedPrecondition):
        store.cancel_job("default", job.id)


def test_cancel_running_job_is_requested_then_seen_by_heartbeat(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w", 60)
    assert store.heartbeat(job.id, "w", 60, JobProgress(1, 10, 1, 0.5)) is False
    requested = store.cancel_job("default", job.id)
    assert requested.state is JobState.RUNNING
    assert requested.cancel_requested is True
    assert store.heartbeat(job.id, "w", 60, JobProgress(2, 10, 1, 0.4)) is True
    done = store.finish_job(job.id, "w", JobState.CANCELLED, "cancelled by request")
    assert done.state is JobState.CANCELLED
    assert done.progress == JobProgress(2, 10, 1, 0.4)
    with pytest.raises(FailedPrecondition):
        store.cancel_job("default", job.id)


def test_cancel_terminal_job_fails_precondition(store, make_spec):
    spec = make_spec()
    _publish(store, spec)
    (job,), _ = store.list_jobs("default")
    assert job.state is JobState.SUCCEEDED
    with pytest.raises(FailedPrecondition):
        store.cancel_job("default", job.id)
    assert store.get_job("default", job.id).state is JobState.SUCCEEDED


def test_finish_job_takes_only_failed_or_cancelled(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w", 60)
    with pytest.raises(ValueError):
        store.finish_job(job.id, "w", JobState.SUCCEEDED)
    failed = store.finish_job(job.id, "w", JobState.FAILED, "boom")
    assert (failed.state, failed.error) == (JobState.FAILED, "boom")
    assert failed.finished_at is not None


# ------------------------------------------------------------------ claims and leases
def test_concurrent_claims_from_two_stores_never_share_a_job(open_store, make_spec):
    stores = [open_store(), open_store()]
    created = {stores[0].create_job(make_spec(request_id=f"r{i}"))[0].id for i in range(20)}
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(store: JobStore, worker_id: str) -> None:
        start.wait()
        while (claimed := store.claim_job(worker_id, 60)) is not None:
            job, spec = claimed
            assert job.state is JobState.RUNNING and spec.request_id == job.request_id
            with lock:
                claims.append((job.id, worker_id))

    _run_threads(worker, [(stores[i % 2], f"w{i}") for i in range(6)])
    claimed_ids = [job_id for job_id, _ in claims]
    assert len(claimed_ids) == 20
    assert set(claimed_ids) == created
    # Each job is RUNNING under exactly the worker that claimed it.
    for job_id, worker_id in claims:
        assert stores[1].heartbeat(job_id, worker_id, 60, JobProgress()) is False


def test_four_workers_with_their_own_stores_claim_each_job_exactly_once(open_store, make_spec):
    stores = [open_store() for _ in range(4)]
    created = {stores[0].create_job(make_spec(request_id=f"r{i}"))[0].id for i in range(40)}
    claims: dict[str, list[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(store: JobStore, worker_id: str) -> None:
        start.wait()
        while (claimed := store.claim_job(worker_id, 60)) is not None:
            job, _ = claimed
            with lock:
                claims.setdefault(job.id, []).append(worker_id)
            store.finish_job(job.id, worker_id, JobState.FAILED, "done")

    _run_threads(worker, [(s, f"w{i}") for i, s in enumerate(stores)])
    assert set(claims) == created
    assert all(len(owners) == 1 for owners in claims.values()), claims
    assert stores[1].count_jobs_by_state() == {JobState.FAILED: 40}
    for job_id, (_owner,) in claims.items():
        job = stores[2].get_job("default", job_id)
        assert (job.state, job.attempts, job.error) == (JobState.FAILED, 1, "done")


def test_competing_reapers_requeue_each_expired_job_exactly_once(open_store, make_spec):
    # (A retry budget that a slow machine cannot spend while the dead worker is still claiming.)
    stores = [open_store(max_attempts=100) for _ in range(4)]
    created = {stores[0].create_job(make_spec(request_id=f"r{i}"))[0].id for i in range(24)}
    dead_claims: dict[str, int] = {}  # a worker that claims everything, then dies
    while (claimed := stores[0].claim_job("dead-worker", 0.3)) is not None:
        # (On a slow machine its first leases may expire while it is still claiming.)
        dead_claims[claimed[0].id] = dead_claims.get(claimed[0].id, 0) + 1
    assert set(dead_claims) == created
    time.sleep(0.45)
    claims: dict[str, list[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(store: JobStore, worker_id: str) -> None:
        start.wait()
        while (claimed := store.claim_job(worker_id, 60)) is not None:
            job, _ = claimed
            assert job.attempts == dead_claims[job.id] + 1  # requeued once, not twice
            with lock:
                claims.setdefault(job.id, []).append(worker_id)

    _run_threads(worker, [(s, f"w{i}") for i, s in enumerate(stores)])
    assert set(claims) == created
    assert all(len(owners) == 1 for owners in claims.values()), claims
    with pytest.raises(LeaseLost):
        stores[0].heartbeat(next(iter(created)), "dead-worker", 60, JobProgress())


def test_expired_lease_is_requeued_and_taken_over(store, make_spec):
    job, _ = store.create_job(make_spec())
    first, _ = store.claim_job("w1", 1.0)
    assert (first.id, first.attempts) == (job.id, 1)
    assert store.claim_job("w2", 60) is None  # lease still live: nothing to take
    time.sleep(1.1)
    second, spec = store.claim_job("w2", 60)
    assert second.id == job.id
    assert second.attempts == 2
    assert second.state is JobState.RUNNING
    assert second.started_at == first.started_at  # the first start is kept
    assert spec.request_id == "req-1"
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "w1", 60, JobProgress())
    with pytest.raises(LeaseLost):
        store.complete_job(job.id, "w1", {}, _record(spec, 1, job.id))
    with pytest.raises(LeaseLost):
        store.finish_job(job.id, "w1", JobState.FAILED, "late")
    with pytest.raises(LeaseLost):
        store.release_job(job.id, "w1")
    assert store.heartbeat(job.id, "w2", 60, JobProgress()) is False
    assert store.adapter_changes(0) == []  # the stale worker registered nothing


def test_a_late_heartbeat_before_any_takeover_keeps_the_job(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w1", 0.05)
    time.sleep(0.12)
    # Expired, but no other worker has reaped it: still w1's, and the beat renews the lease.
    assert store.heartbeat(job.id, "w1", 60, JobProgress(1, 2, 1, 0.1)) is False
    assert store.claim_job("w2", 60) is None
    assert store.get_job("default", job.id).attempts == 1


def test_max_attempts_exhausted_fails_the_job(open_store, make_spec):
    store = open_store(max_attempts=2)
    job, _ = store.create_job(make_spec())
    assert store.claim_job("w1", 0.03)[0].attempts == 1
    time.sleep(0.08)
    assert store.claim_job("w2", 0.03)[0].attempts == 2
    time.sleep(0.08)
    assert store.claim_job("w3", 60) is None
    failed = store.get_job("default", job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == "worker lost the job 2 times (retry budget spent)"
    assert failed.finished_at is not None
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "w2", 60, JobProgress())


def test_expired_lease_of_cancel_requested_job_ends_cancelled(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w1", 0.05)
    store.cancel_job("default", job.id)
    time.sleep(0.12)
    assert store.claim_job("w2", 60) is None
    cancelled = store.get_job("default", job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.error == "cancelled by request" and cancelled.finished_at is not None


def test_release_job_requeues_without_counting_the_attempt(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w1", 60)
    with pytest.raises(LeaseLost):
        store.release_job(job.id, "someone-else")
    released = store.release_job(job.id, "w1")
    assert released.state is JobState.QUEUED
    assert released.attempts == 0
    again, _ = store.claim_job("w2", 60)
    assert (again.id, again.attempts) == (job.id, 1)
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "w1", 60, JobProgress())


# ------------------------------------------------------------------ completion and registry
def test_complete_job_registers_the_version_and_succeeds_together(store, make_spec):
    spec = make_spec(adapter_name="intents")
    job, _ = store.create_job(spec)
    store.claim_job("w", 60)
    version = store.reserve_adapter_version("default", "intents")
    done = store.complete_job(job.id, "w", {"accuracy": 0.9}, _record(spec, version, job.id))
    assert done.state is JobState.SUCCEEDED
    assert done.adapter_version == version == 1
    assert done.metrics == {"accuracy": 0.9}
    assert done.finished_at is not None
    (rec,) = store.adapter_versions("default", "intents")
    assert (rec.name, rec.version, rec.job_id, rec.labels, rec.lora_rank, rec.size_bytes) == (
        "intents",
        1,
        job.id,
        ("neg", "pos"),
        4,
        1234,
    )
    assert rec.metrics == {"accuracy": 0.75} and rec.base_model == "tiny-bert"
    assert rec.created_at.utcoffset() == timedelta(0)
    assert rec.task is TaskType.CLASSIFICATION and rec.seq >= 1 and not rec.deleted
    with pytest.raises(LeaseLost):  # a finished job is no one's to complete again
        store.complete_job(job.id, "w", {}, _record(spec, 2, job.id))


def test_complete_job_rolls_back_entirely_when_registration_fails(store, make_spec):
    spec = make_spec(request_id="r1")
    _publish(store, spec)  # intents@1
    job2, _ = store.create_job(make_spec(request_id="r2"))
    store.claim_job("w2", 60)
    changes_before = store.registry_changes(0)
    with pytest.raises(Exception):  # noqa: B017 - version 1 is taken: the insert fails
        store.complete_job(job2.id, "w2", {"accuracy": 1.0}, _record(spec, 1, job2.id))
    after = store.get_job("default", job2.id)
    assert after.state is JobState.RUNNING and after.adapter_version == 0
    assert store.registry_changes(0) == changes_before  # versions and aliases alike
    # The registry clock did not move either: the next change gets the next seq (deleting
    # the adapter removes its `default` alias first, then the version).
    last = max(c.seq for side in changes_before for c in side)
    store.delete_adapter_versions("default", "intents")
    _, aliases = store.registry_changes(last)
    assert [a.seq for a in aliases] == [last + 1]


def test_register_adapter_version_publishes_without_a_job(store, make_spec):
    """ImportAdapter's registration: the same row complete_job writes, in the change feed,
    counted against the namespace; a version registered twice is AlreadyExists."""
    spec = make_spec(adapter_name="imported")
    _publish(store, make_spec(adapter_name="trained"))
    before = store.adapter_changes(0)[-1].seq
    version = store.reserve_adapter_version("default", "imported")
    record = _record(spec, version, "import:abc")
    store.register_adapter_version(record)
    (rec,) = store.adapter_versions("default", "imported")
    assert (rec.version, rec.job_id, rec.labels, rec.lora_rank, rec.base_model) == (
        1,
        "import:abc",
        ("neg", "pos"),
        4,
        "tiny-bert",
    )
    assert [c.name for c in store.adapter_changes(before)] == ["imported"]
    assert store.namespace_usage("default")["adapter_versions"] == 2
    with pytest.raises(AlreadyExists):
        store.register_adapter_version(record)
    assert len(store.adapter_changes(0)) == 2  # the refused one left nothing behind


def test_reserve_adapter_version_increments_per_name_and_never_repeats(open_store):
    store = open_store()
    assert [store.reserve_adapter_version("a", "x") for _ in range(3)] == [1, 2, 3]
    assert store.reserve_adapter_version("a", "y") == 1
    assert store.reserve_adapter_version("b", "x") == 1
    store.close()
    store = open_store()  # survives a restart
    assert store.reserve_adapter_version("a", "x") == 4

    stores = [open_store(), open_store()]
    got: list[int] = []
    lock = threading.Lock()

    def reserve(s: JobStore) -> None:
        for _ in range(10):
            v = s.reserve_adapter_version("a", "z")
            with lock:
                got.append(v)

    _run_threads(reserve, [(stores[i % 2],) for i in range(4)])
    assert sorted(got) == list(range(1, 41))


def test_delete_adapter_versions_one_then_all_then_not_found(store, make_spec):
    for i in range(3):
        _publish(store, make_spec(request_id=f"r{i}"))
    _publish(store, make_spec(request_id="other", adapter_name="other"))

    deleted = store.delete_adapter_versions("default", "intents", 2)
    assert [r.version for r in deleted] == [2]
    assert [r.version for r in store.adapter_versions("default", "intents")] == [1, 3]
    everything = store.adapter_versions("default", "intents", include_deleted=True)
    assert [(r.version, r.deleted) for r in everything] == [(1, False), (2, True), (3, False)]

    with pytest.raises(NotFound):
        store.delete_adapter_versions("default", "intents", 2)  # already gone
    with pytest.raises(NotFound):
        store.delete_adapter_versions("b", "intents")  # another tenant's name

    deleted_all = store.delete_adapter_versions("default", "intents")
    assert sorted(r.version for r in deleted_all) == [1, 3]
    assert store.adapter_versions("default", "intents") == []
    with pytest.raises(NotFound):
        store.delete_adapter_versions("default", "intents")
    assert [r.name for r in store.adapter_versions("default")] == ["other"]
    assert store.adapter_names("default") == (["other"], "")
    # A deleted version number is never handed out again.
    assert store.reserve_adapter_version("default", "intents") == 4


def test_adapter_changes_lists_published_and_deleted_rows_by_seq(store, make_spec):
    _publish(store, make_spec(request_id="r1"))  # intents@1
    _publish(store, make_spec(request_id="r2"))  # intents@2
    store.delete_adapter_versions("default", "intents", 1)

    changes = store.adapter_changes(0)
    assert [(r.version, r.deleted) for r in changes] == [(2, False), (1, True)]
    seqs = [r.seq for r in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    assert [(r.version, r.deleted) for r in store.adapter_changes(seqs[0])] == [(1, True)]
    assert store.adapter_changes(seqs[1]) == []
    assert len(store.adapter_changes(0, limit=1)) == 1


def test_a_polling_replica_never_misses_a_change_made_concurrently(open_store, make_spec):
    """Replicas keep a cursor (the highest seq seen) and ask for changes after it. With many
    writers committing at once, a change must never land behind a cursor already past it
    (the sequence-gap race: seq handed out before commit, committed after a larger one)."""
    writers = [open_store() for _ in range(4)]
    reader = open_store()
    per_writer = 8
    for w in range(4):
        for i in range(per_writer):
            writers[0].create_job(make_spec(request_id=f"w{w}-{i}", adapter_name=f"a{w}"))
    done = threading.Event()
    seen: dict[tuple[str, int, bool], int] = {}

    def poll() -> None:
        cursor = 0
        while True:
            finished = done.is_set()  # read before the poll, so the last poll sees everything
            for rec in reader.adapter_changes(cursor):
                assert rec.seq > cursor
                seen[(rec.name, rec.version, rec.deleted)] = rec.seq
                cursor = rec.seq
            if finished:
                return

    def write(store: JobStore, worker_id: str) -> None:
        while (claimed := store.claim_job(worker_id, 60)) is not None:
            job, spec = claimed
            version = store.reserve_adapter_version(spec.namespace, spec.adapter_name)
            # Deletes are registry changes too; a version `default` points at cannot be
            # deleted, so those are published without moving it (policy manual).
            store.complete_job(
                job.id, worker_id, {}, _record(spec, version, job.id), promote=version % 3 != 0
            )
            if version % 3 == 0:
                try:
                    store.delete_adapter_versions(spec.namespace, spec.adapter_name, version)
                except FailedPrecondition:
                    # Writers finish out of order: when version 3 is the adapter's first
                    # completed version it becomes `default` anyway, and an alias target
                    # cannot be deleted. The change stream, not the delete, is under test.
                    aliases = store.adapter_aliases(spec.namespace, spec.adapter_name)
                    assert [(a.alias, a.version) for a in aliases] == [("default", version)]

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _run_threads(write, [(s, f"w{i}") for i, s in enumerate(writers)])
    finally:
        done.set()
        poller.join(timeout=60)
    final = {(r.name, r.version, r.deleted): r.seq for r in reader.adapter_changes(0, limit=10_000)}
    # Every row's latest state reached the poller, with the seq it has now.
    assert seen.items() >= final.items(), set(final.items()) - set(seen.items())
    published = reader.adapter_changes(0, limit=10_000)
    assert len(published) == 4 * per_writer
    seqs = sorted(r.seq for r in published)
    assert len(set(seqs)) == len(seqs)


def test_adapter_names_pages(store, make_spec):
    for i, name in enumerate(["c", "a.b", "a-b", "b", "a_b"]):
        _publish(store, make_spec(request_id=f"r{i}", adapter_name=name))
    names, token = store.adapter_names("default", page_size=2)
    # Byte order, whatever the database's collation: '-' < '.' < '_'.
    assert (names, bool(token)) == (["a-b", "a.b"], True)
    names, token = store.adapter_names("default", page_size=2, page_token=token)
    assert (names, bool(token)) == (["a_b", "b"], True)
    assert store.adapter_names("default", page_size=2, page_token=token) == (["c"], "")
    assert [r.name for r in store.adapter_versions("default")] == ["a-b", "a.b", "a_b", "b", "c"]


def test_jobs_survive_closing_and_reopening_the_store(open_store, make_spec):
    store = open_store()
    first, _ = store.create_job(make_spec(request_id="r1"))
    second, _ = store.create_job(make_spec(request_id="r2"))
    store.claim_job("w", 60)  # takes r1, the oldest
    store.heartbeat(first.id, "w", 60, JobProgress(3, 9, 1, 0.25))
    store.close()

    reopened = open_store()
    a = reopened.get_job("default", first.id)
    b = reopened.get_job("default", second.id)
    assert a.state is JobState.RUNNING and a.progress == JobProgress(3, 9, 1, 0.25)
    assert b.state is JobState.QUEUED
    assert reopened.create_job(make_spec(request_id="r2")) == (b, False)
    assert reopened.heartbeat(first.id, "w", 60, JobProgress()) is False  # lease kept


def test_nul_characters_are_answered_the_same_on_every_database(store, make_spec):
    # PostgreSQL text cannot hold NUL; SQLite could, but one store answers the same on both.
    with pytest.raises(InvalidRequest) as err:
        store.create_job(make_spec(request_id="a\x00b"))
    assert [v.field for v in err.value.violations] == ["request_id"]
    with pytest.raises(NotFound):
        store.get_job("default", "job-\x00")
    with pytest.raises(NotFound):
        store.cancel_job("default", "job-\x00")
    with pytest.raises(NotFound):
        store.delete_adapter_versions("default", "x\x00")
    assert store.list_jobs("default", adapter_name="x\x00") == ([], "")
    assert store.adapter_versions("default", "x\x00") == []
    job, _ = store.create_job(make_spec())
    store.claim_job("w", 60)
    failed = store.finish_job(job.id, "w", JobState.FAILED, "bad\x00byte")
    assert failed.error == "badbyte"


def test_publishing_a_version_twice_is_refused_and_rolls_the_completion_back(store, make_spec):
    spec = make_spec()
    version = _publish(store, spec)
    changes = store.adapter_changes(0)
    job, _ = store.create_job(make_spec(request_id="second"))
    store.claim_job("w", 60)
    with pytest.raises(AlreadyExists):
        store.complete_job(job.id, "w", {}, _record(spec, version, job.id))
    after = store.get_job("default", job.id)
    assert after.state is JobState.RUNNING and after.adapter_version == 0
    assert store.adapter_changes(0) == changes  # no registry row, no clock tick
    assert [e.state for e in store.list_events("default", job.id)] == [JobState.QUEUED, JobState.RUNNING]
