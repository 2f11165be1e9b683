"""Store contract for tenancy: what a namespace holds against its quotas
(`namespace_usage`) and fair claiming across namespaces. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from tuneserve_server.domain.jobs import JobState, TaskType
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord


def _header(content: bytes) -> dict:
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "format": "jsonl",
        "task": "classification",
    }


def _dataset(namespace: str, upload_id: str, content: bytes, dataset_id: str) -> DatasetRecord:
    return DatasetRecord(
        id=dataset_id,
        namespace=namespace,
        display_name="tickets",
        task=TaskType.CLASSIFICATION,
        format="jsonl",
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        rows=2,
        usable_rows=2,
        report={"ok": True},
        text_field="text",
        label_field="label",
        upload_id=upload_id,
    )


def _record(namespace: str, name: str, version: int, job_id: str) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=namespace,
        name=name,
        version=version,
        job_id=job_id,
        task=TaskType.CLASSIFICATION,
        base_model="tiny-bert",
        labels=("neg", "pos"),
        metrics={},
        lora_rank=4,
        size_bytes=10,
        created_at=datetime.now(UTC),
    )


ZERO = {
    "active_jobs": 0,
    "active_evaluations": 0,
    "dataset_bytes": 0,
    "upload_bytes": 0,
    "adapter_versions": 0,
}


def test_namespace_usage_counts_each_quota_of_one_namespace_only(store, make_spec):
    assert store.namespace_usage("team-a") == ZERO
    jobs = [store.create_job(make_spec(namespace="team-a", request_id=f"r{i}"))[0] for i in range(4)]
    other, _ = store.create_job(make_spec(namespace="team-b", request_id="other"))
    claimed = store.claim_job("w", 60)
    assert claimed is not None and claimed[0].id == jobs[0].id  # team-a r0: RUNNING
    claimed = store.claim_job("w", 60)
    assert claimed is not None and claimed[0].id == other.id  # team-b runs none: it goes next
    v = store.reserve_adapter_version("team-b", other.adapter_name)
    store.complete_job(other.id, "w", {}, _record("team-b", other.adapter_name, v, other.id))
    store.cancel_job("team-a", jobs[1].id)  # r1 CANCELLED; r2, r3 QUEUED
    content = b"x" * 300
    store.finish_upload(_dataset("team-a", "u1", content, "ds-1"), content)
    store.begin_upload("team-a", "u2", _header(b"y" * 100))
    store.add_upload_chunk("team-a", "u2", 0, b"y" * 40)
    store.begin_upload("team-b", "u3", _header(b"z" * 100))
    store.add_upload_chunk("team-b", "u3", 0, b"z" * 70)

    assert store.namespace_usage("team-a") == {
        "active_jobs": 3,
        "active_evaluations": 0,
        "dataset_bytes": 300,
        "upload_bytes": 40,
        "adapter_versions": 0,
    }
    assert store.namespace_usage("team-b") == {
        "active_jobs": 0,
        "active_evaluations": 0,
        "dataset_bytes": 0,
        "upload_bytes": 70,
        "adapter_versions": 1,
    }
    assert store.namespace_usage("nobody") == ZERO


def test_deleted_versions_and_finished_uploads_stop_counting(store, make_spec):
    for i in range(3):
        job, _ = store.create_job(make_spec(namespace="ns", request_id=f"r{i}", adapter_name="a"))
        claimed = store.claim_job("w", 60)
        assert claimed is not None and claimed[0].id == job.id
        v = store.reserve_adapter_version("ns", "a")
        store.complete_job(job.id, "w", {}, _record("ns", "a", v, job.id))
    assert store.namespace_usage("ns")["adapter_versions"] == 3
    store.delete_adapter_versions("ns", "a", 1)
    assert store.namespace_usage("ns")["adapter_versions"] == 2
    content = b"q" * 50
    store.begin_upload("ns", "up", _header(content))
    store.add_upload_chunk("ns", "up", 0, content)
    assert store.namespace_usage("ns")["upload_bytes"] == 50
    store.finish_upload(_dataset("ns", "up", content, "ds-q"), content)
    usage = store.namespace_usage("ns")
    assert (usage["upload_bytes"], usage["dataset_bytes"]) == (0, 50)
    store.delete_dataset("ns", "ds-q")
    assert store.namespace_usage("ns")["dataset_bytes"] == 0
    assert store.namespace_usage("n\x00s") == ZERO


def test_expired_uploads_do_not_count(open_store):
    import time

    store = open_store(upload_ttl_s=0.5)
    store.begin_upload("ns", "old", _header(b"y" * 100))
    store.add_upload_chunk("ns", "old", 0, b"y" * 60)
    assert store.namespace_usage("ns")["upload_bytes"] == 60
    time.sleep(1.0)
    assert store.namespace_usage("ns")["upload_bytes"] == 0


def test_a_namespace_with_one_job_is_not_starved_by_one_with_thirty(store, make_spec):
    a_jobs = [store.create_job(make_spec(namespace="a", request_id=f"a{i}"))[0].id for i in range(30)]
    b_job = store.create_job(make_spec(namespace="b", request_id="b0"))[0].id
    first = store.claim_job("w1", 60)
    second = store.claim_job("w2", 60)
    assert first is not None and second is not None
    assert first[0].id == a_jobs[0]  # the oldest queued job overall: nobody runs anything yet
    assert second[0].id == b_job  # a runs one, b none: b goes next
    # Then a again, oldest first, once b has nothing queued.
    third = store.claim_job("w3", 60)
    assert third is not None and third[0].id == a_jobs[1]


def test_fair_claims_prefer_the_namespace_with_fewest_running_and_break_ties_by_age(store, make_spec):
    ids = {}
    for ns, n in (("a", 3), ("b", 3), ("c", 1)):
        for i in range(n):
            ids[f"{ns}{i}"] = store.create_job(make_spec(namespace=ns, request_id=f"{ns}{i}"))[0].id
    order = []
    for w in range(7):
        claimed = store.claim_job(f"w{w}", 60)
        assert claimed is not None
        order.append(next(k for k, v in ids.items() if v == claimed[0].id))
    # running 0/0/0: oldest (a0); then b and c have 0: b0 is older; then c0; then a, b, a, b...
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]
    assert store.claim_job("w9", 60) is None
    # A namespace's finished jobs no longer count against it.
    job = store.get_job("a", ids["a0"])
    store.finish_job(job.id, "w0", JobState.FAILED, "x")
    assert store.count_jobs_by_state()[JobState.RUNNING] == 6


def test_fair_claims_from_competing_stores_still_take_each_job_once(open_store, make_spec):
    import threading

    first = open_store()
    for ns in ("a", "b", "c"):
        for i in range(8):
            first.create_job(make_spec(namespace=ns, request_id=f"{ns}{i}"))
    stores = [first, open_store(), open_store()]
    got: list[str] = []
    lock = threading.Lock()

    def drain(s, worker: str) -> None:
        while (claimed := s.claim_job(worker, 60)) is not None:
            with lock:
                got.append(claimed[0].id)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 24 and len(set(got)) == 24
