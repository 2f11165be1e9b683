"""Uploads as a stream, against every JobStore (SQLite and PostgreSQL): an open upload reads
back a chunk at a time from any offset, a finished upload's chunks become the dataset's
bytes (no copy), unfinished uploads are listed with their expiry and discarded by their
owner only, and the TTL sweep runs on its own (not only when another upload starts)."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

import pytest

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.records import DatasetRecord, UploadState


def _header(content: bytes, **extra) -> dict:
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "format": "jsonl",
        "task": "classification",
        **extra,
    }


def _record(namespace: str, upload_id: str, content: bytes, dataset_id: str) -> DatasetRecord:
    return DatasetRecord(
        id=dataset_id,
        namespace=namespace,
        display_name="tickets",
        task=TaskType.CLASSIFICATION,
        format="jsonl",
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        rows=1,
        usable_rows=1,
        report={"ok": True},
        text_field="",
        label_field="",
        upload_id=upload_id,
    )


def _upload(store, namespace: str, upload_id: str, content: bytes, size: int, **header) -> None:
    store.begin_upload(namespace, upload_id, _header(content, **header))
    for offset in range(0, len(content), size):
        store.add_upload_chunk(namespace, upload_id, offset, content[offset : offset + size])


def test_an_open_upload_reads_back_a_chunk_at_a_time_from_any_offset(store):
    content = bytes(range(256)) * 4
    _upload(store, "default", "u", content, 100)
    chunks = list(store.iter_upload_chunks("default", "u"))
    assert [len(c) for c in chunks] == [100] * 10 + [24]
    assert b"".join(chunks) == content
    for start in (0, 1, 99, 100, 150, 1000, 1023, 1024):
        assert b"".join(store.iter_upload_chunks("default", "u", start)) == content[start:]
    assert list(store.iter_upload_chunks("other", "u")) == []
    assert list(store.iter_upload_chunks("default", "none")) == []


def test_a_finished_upload_keeps_its_chunks_as_the_dataset_until_it_is_deleted(store):
    content = b'{"text":"a","label":"x"}\n' * 50
    _upload(store, "team-a", "u1", content, 64)
    record, created = store.finish_upload(_record("team-a", "u1", content, "ds-1"))
    assert created
    assert store.dataset_content("team-a", "ds-1") == content
    # The upload is closed: not listed, not readable or discardable as an upload.
    assert store.list_uploads("team-a") == ([], "")
    assert store.upload_bytes("team-a", "u1") == b""
    assert store.discard_upload("team-a", "u1") is False
    assert store.dataset_content("team-a", "ds-1") == content
    # Finishing again answers with the same dataset and leaves its bytes alone.
    again, created = store.finish_upload(_record("team-a", "u1", content, "ds-2"))
    assert not created and again.id == "ds-1"
    assert store.dataset_content("team-a", "ds-1") == content
    assert store.begin_upload("team-a", "u1", _header(content)) == record
    # Deleting the dataset deletes its bytes: the upload_id starts from nothing.
    store.delete_dataset("team-a", "ds-1")
    with pytest.raises(NotFound):
        store.dataset_content("team-a", "ds-1")
    state = store.begin_upload("team-a", "u1", _header(content))
    assert isinstance(state, UploadState) and state.received == 0
    assert store.upload_bytes("team-a", "u1") == b""


def test_unfinished_uploads_are_listed_per_namespace_with_their_expiry(open_store):
    store = open_store(upload_ttl_s=3600)
    for i in range(3):
        _upload(store, "team-a", f"up-{i}", b"z" * (10 + i), 4, display_name=f"file {i}")
    store.begin_upload("team-b", "theirs", _header(b"q" * 5))
    page, token = store.list_uploads("team-a", page_size=2)
    assert [u.upload_id for u in page] == ["up-0", "up-1"] and token
    rest, token = store.list_uploads("team-a", page_size=2, page_token=token)
    assert [u.upload_id for u in rest] == ["up-2"] and token == ""
    up = page[1]
    assert (up.display_name, up.received, up.declared_bytes) == ("file 1", 11, 11)
    assert up.expires_at - up.touched_at == timedelta(seconds=3600)
    assert [u.upload_id for u in store.list_uploads("team-b")[0]] == ["theirs"]
    # A resumed upload may carry another display name: it is the same upload.
    again = store.begin_upload("team-a", "up-0", _header(b"z" * 10, display_name="renamed"))
    assert isinstance(again, UploadState) and again.received == 10


def test_an_upload_discarded_while_it_was_checked_does_not_become_an_empty_dataset(store):
    from tuneserve_server.domain.errors import FailedPrecondition

    content = b'{"text":"a","label":"x"}\n'
    _upload(store, "default", "gone", content, 10)
    store.discard_upload("default", "gone")  # e.g. DeleteUpload from another replica
    with pytest.raises(FailedPrecondition, match="discarded"):
        store.finish_upload(_record("default", "gone", content, "ds-gone"))
    assert store.list_datasets("default") == ([], "")
    _upload(store, "default", "short", content[:10], 10, size_bytes=len(content))
    with pytest.raises(FailedPrecondition):
        store.finish_upload(_record("default", "short", content, "ds-short"))


def test_discarding_an_upload_is_for_its_namespace_only(store):
    _upload(store, "team-a", "u", b"x" * 30, 10)
    assert store.discard_upload("team-b", "u") is False
    assert store.upload_bytes("team-a", "u") == b"x" * 30
    assert store.discard_upload("team-a", "u") is True
    assert store.list_uploads("team-a") == ([], "")
    assert store.discard_upload("team-a", "u") is False


def test_the_sweep_forgets_idle_uploads_without_another_upload_starting(open_store):
    store = open_store(upload_ttl_s=0.5)
    _upload(store, "default", "old", b"y" * 60, 20)
    content = b'{"text":"a","label":"x"}\n'
    _upload(store, "default", "done", content, 10)
    store.finish_upload(_record("default", "done", content, "ds-done"))
    time.sleep(1.0)
    assert store.list_uploads("default") == ([], "")  # expired: no longer listed
    assert store.sweep_uploads() == 1
    assert store.sweep_uploads() == 0
    assert store.upload_bytes("default", "old") == b""
    assert store.dataset_content("default", "ds-done") == content  # a dataset is never swept
