"""Job events and datasets, against every JobStore (SQLite and PostgreSQL): the store logs
every state change in the transaction that makes it, numbers each job's events 1, 2, 3, ...
without gaps even under concurrent appends, and keeps uploads resumable and datasets
per-namespace."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import pytest

from tuneserve_server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from tuneserve_server.domain.jobs import EventType, JobEvent, JobProgress, JobState, TaskType
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState


def _states(events: list[JobEvent]) -> list[JobState | None]:
    return [e.state for e in events if e.type is EventType.STATE]


def _record(spec, version: int, job_id: str) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=spec.namespace,
        name=spec.adapter_name,
        version=version,
        job_id=job_id,
        task=spec.task,
        base_model="tiny",
        labels=("a", "b"),
        metrics={},
        lora_rank=4,
        size_bytes=1,
        created_at=datetime.now(UTC),
    )


def test_state_changes_are_logged_in_order_with_gapless_sequences(store, make_spec):
    spec = make_spec()
    job, _ = store.create_job(spec, {"ok": True, "total_rows": 2})
    assert job.data_report == {"ok": True, "total_rows": 2}
    store.claim_job("w", 60)
    store.append_events(
        job.id,
        [
            JobEvent(job.id, EventType.PROGRESS, progress=JobProgress(1, 4, 1, 0.9, 0.001, 12.5, 3.0)),
            JobEvent(job.id, EventType.EVALUATION, metrics={"accuracy": 0.5}),
        ],
    )
    store.release_job(job.id, "w")  # preempted
    store.claim_job("w2", 60)
    store.record_resume(job.id, "w2", 1)
    version = store.reserve_adapter_version(spec.namespace, spec.adapter_name)
    done = store.complete_job(
        job.id,
        "w2",
        {"accuracy": 0.9},
        _record(spec, version, job.id),
        {"sample_generations": [{"prompt": "p", "reference": "r", "generated": "g"}]},
    )
    assert done.resumed_from_step == 1
    assert done.sample_generations == [{"prompt": "p", "reference": "r", "generated": "g"}]
    events = store.list_events("default", job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert _states(events) == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    progress = next(e for e in events if e.type is EventType.PROGRESS)
    assert progress.progress == JobProgress(1, 4, 1, 0.9, 0.001, 12.5, 3.0)
    assert next(e for e in events if e.type is EventType.EVALUATION).metrics == {"accuracy": 0.5}
    resumed = next(e for e in events if e.type is EventType.CHECKPOINT)
    assert "resumed" in resumed.message and resumed.progress.step == 1
    assert events[-1].metrics == {"accuracy": 0.9}
    assert all(e.time is not None and e.time.tzinfo is not None for e in events)
    # Replays resume after any sequence without gaps or duplicates.
    assert store.list_events("default", job.id, after_seq=3) == events[3:]
    assert store.list_events("default", job.id, after_seq=len(events)) == []


def test_failures_and_cancels_are_logged(store, make_spec):
    failed, _ = store.create_job(make_spec())
    store.claim_job("w", 60)
    store.finish_job(failed.id, "w", JobState.FAILED, "training failed: boom")
    events = store.list_events("default", failed.id)
    assert [e.type for e in events][-2:] == [EventType.ERROR, EventType.STATE]
    assert events[-2].message == "training failed: boom" and events[-1].state is JobState.FAILED
    cancelled, _ = store.create_job(make_spec(request_id="req-2"))
    store.cancel_job("default", cancelled.id)
    assert _states(store.list_events("default", cancelled.id)) == [JobState.QUEUED, JobState.CANCELLED]


def test_an_expired_lease_is_logged_as_requeued(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w", 0.01)
    import time

    time.sleep(0.05)
    assert store.claim_job("w2", 60) is not None
    events = store.list_events("default", job.id)
    assert _states(events) == [JobState.QUEUED, JobState.RUNNING, JobState.QUEUED, JobState.RUNNING]
    assert "lease expired" in events[2].message


def test_heartbeat_progress_extras_round_trip(store, make_spec):
    job, _ = store.create_job(make_spec())
    store.claim_job("w", 60)
    store.record_resume(job.id, "w", 7)
    store.heartbeat(job.id, "w", 60, JobProgress(8, 20, 2, 0.3, 0.002, 40.0, 12.0))
    got = store.get_job("default", job.id)
    assert got.progress == JobProgress(8, 20, 2, 0.3, 0.002, 40.0, 12.0)
    assert got.resumed_from_step == 7  # a heartbeat keeps it


def test_concurrent_appends_get_distinct_gapless_sequences(open_store, make_spec):
    first = open_store()
    job, _ = first.create_job(make_spec())
    stores = [first, open_store(), open_store()]

    def append(s, n: int) -> None:
        for i in range(n):
            s.append_events(job.id, [JobEvent(job.id, EventType.WARNING, message=str(i))])

    threads = [threading.Thread(target=append, args=(s, 10)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seqs = [e.sequence for e in first.list_events("default", job.id)]
    assert seqs == list(range(1, 32))  # the QUEUED event and 30 warnings


def test_events_are_invisible_across_namespaces(store, make_spec):
    job, _ = store.create_job(make_spec(namespace="team-a"))
    assert store.list_events("team-a", job.id)
    with pytest.raises(NotFound):
        store.list_events("team-b", job.id)
    with pytest.raises(NotFound):
        store.append_events("no-such-job", [JobEvent("no-such-job", EventType.WARNING)])


# ------------------------------------------------------------------ datasets
def _header(content: bytes, **extra: object) -> dict:
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "format": "jsonl",
        "task": "classification",
        **extra,
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


def test_an_upload_resumes_where_the_stored_bytes_end_and_finishes_once(open_store):
    store = open_store()
    content = b'{"text":"a","label":"x"}\n{"text":"b","label":"y"}\n'
    state = store.begin_upload("default", "up-1", _header(content))
    assert state == UploadState("default", "up-1", _header(content), 0)
    assert store.add_upload_chunk("default", "up-1", 0, content[:10]) == 10
    with pytest.raises(FailedPrecondition, match="send from offset 10"):
        store.add_upload_chunk("default", "up-1", 20, content[20:])
    # The client reconnects (maybe to another replica) and asks where to continue.
    again = open_store().begin_upload("default", "up-1", _header(content))
    assert isinstance(again, UploadState) and again.received == 10
    store.add_upload_chunk("default", "up-1", 10, content[10:])
    assert store.upload_bytes("default", "up-1") == content
    with pytest.raises(AlreadyExists):
        store.begin_upload("default", "up-1", _header(b"other file"))
    record, created = store.finish_upload(_dataset("default", "up-1", content, "ds-1"), content)
    assert created and record.id == "ds-1" and record.created_at is not None
    again, created = store.finish_upload(_dataset("default", "up-1", content, "ds-2"), content)
    assert not created and again.id == "ds-1"
    # A finished upload_id answers with its dataset; the staging rows are gone.
    assert store.begin_upload("default", "up-1", _header(content)) == record
    assert store.upload_bytes("default", "up-1") == b""
    assert store.dataset_content("default", "ds-1") == content
    assert store.get_dataset("default", "ds-1") == record


def test_datasets_page_newest_first_and_stay_in_their_namespace(store):
    for i in range(3):
        content = f'{{"text":"t{i}","label":"x"}}\n'.encode()
        store.finish_upload(_dataset("team-a", f"u{i}", content, f"ds-{i}"), content)
    page, token = store.list_datasets("team-a", page_size=2)
    assert [d.id for d in page] == ["ds-2", "ds-1"] and token
    rest, token = store.list_datasets("team-a", page_size=2, page_token=token)
    assert [d.id for d in rest] == ["ds-0"] and token == ""
    assert store.list_datasets("team-b") == ([], "")
    for call in (store.get_dataset, store.dataset_content, store.delete_dataset):
        with pytest.raises(NotFound):
            call("team-b", "ds-0")
    store.delete_dataset("team-a", "ds-0")
    with pytest.raises(NotFound):
        store.get_dataset("team-a", "ds-0")
    with pytest.raises(NotFound):
        store.delete_dataset("team-a", "ds-0")


def test_discarding_an_upload_forgets_its_bytes(store):
    content = b"x" * 100
    store.begin_upload("default", "u", _header(content))
    store.add_upload_chunk("default", "u", 0, content[:50])
    store.discard_upload("default", "u")
    state = store.begin_upload("default", "u", _header(content))
    assert isinstance(state, UploadState) and state.received == 0


def test_an_abandoned_upload_is_forgotten_after_its_ttl(open_store):
    import time

    store = open_store(upload_ttl_s=0.5)
    content = b"y" * 100
    store.begin_upload("default", "old", _header(content))
    store.add_upload_chunk("default", "old", 0, content[:60])
    time.sleep(1.0)
    store.begin_upload("default", "new", _header(content))  # any upload start sweeps
    assert store.upload_bytes("default", "old") == b""
    state = store.begin_upload("default", "old", _header(content))
    assert isinstance(state, UploadState) and state.received == 0


def test_a_worker_that_lost_the_lease_cannot_write_events(store, make_spec):
    import time

    from tuneserve_server.domain.errors import LeaseLost

    job, _ = store.create_job(make_spec())
    store.claim_job("stalled", 0.01)
    store.append_events(job.id, [JobEvent(job.id, EventType.WARNING, message="mine")], worker_id="stalled")
    time.sleep(0.05)
    store.claim_job("next", 60)  # the lease expired: another worker owns the job now
    with pytest.raises(LeaseLost):
        store.append_events(job.id, [JobEvent(job.id, EventType.PROGRESS)], worker_id="stalled")
    store.append_events(job.id, [JobEvent(job.id, EventType.PROGRESS)], worker_id="next")
    types = [e.type for e in store.list_events("default", job.id)]
    assert types.count(EventType.PROGRESS) == 1
