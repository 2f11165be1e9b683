"""LocalAdapterStore on a real directory: staged next to the store, published by rename."""

from __future__ import annotations

import os

import pytest

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore


def _stage(store: LocalAdapterStore, payload: bytes = b"weights") -> tuple:
    staged = store.staging_dir()
    (staged / "adapter_model.safetensors").write_bytes(payload)
    (staged / "tuneserve.json").write_text('{"format": 1}')
    (staged / "sub").mkdir()
    (staged / "sub" / "extra.bin").write_bytes(b"x" * 10)
    return staged, len(payload) + len('{"format": 1}') + 10


def test_staging_dir_is_fresh_empty_and_on_the_store_filesystem(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    a, b = store.staging_dir(), store.staging_dir()
    assert a != b
    assert a.is_dir() and list(a.iterdir()) == []
    assert store.root in a.parents
    assert os.stat(a).st_dev == os.stat(store.root).st_dev


def test_publish_moves_the_staged_directory_into_place_whole(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    staged, expected_size = _stage(store)
    staged_inode = os.stat(staged).st_ino
    assert not (store.root / "team-a" / "intents" / "1").exists()

    size = store.publish(staged, "team-a", "intents", 1)

    assert size == expected_size
    final = store.open("team-a", "intents", 1)
    assert final == store.root / "team-a" / "intents" / "1"
    # The very same directory, renamed: no reader could have seen it half copied.
    assert os.stat(final).st_ino == staged_inode
    assert not staged.exists()
    assert (final / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (final / "sub" / "extra.bin").read_bytes() == b"x" * 10
    # A second store on the same root (another replica) sees it too.
    assert LocalAdapterStore(store.root).open("team-a", "intents", 1) == final


def test_publishing_a_version_twice_raises_and_keeps_the_first(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    first, _ = _stage(store, b"first")
    store.publish(first, "default", "intents", 1)
    second, _ = _stage(store, b"second")
    with pytest.raises(FileExistsError):
        store.publish(second, "default", "intents", 1)
    final = store.open("default", "intents", 1)
    assert (final / "adapter_model.safetensors").read_bytes() == b"first"
    assert store.publish(second, "default", "intents", 2) > 0
    assert (store.open("default", "intents", 2) / "adapter_model.safetensors").read_bytes() == b"second"


def test_open_missing_version_is_not_found(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    staged, _ = _stage(store)
    store.publish(staged, "default", "intents", 1)
    with pytest.raises(NotFound):
        store.open("default", "intents", 2)
    with pytest.raises(NotFound):
        store.open("other-ns", "intents", 1)
    with pytest.raises(NotFound):
        store.open("default", "nothing", 1)


def test_delete_removes_the_version_and_leaves_no_debris(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    for version in (1, 2):
        staged, _ = _stage(store)
        store.publish(staged, "default", "intents", version)
    store.delete("default", "intents", 1)
    with pytest.raises(NotFound):
        store.open("default", "intents", 1)
    assert not (store.root / "default" / "intents" / "1").exists()
    assert store.open("default", "intents", 2).is_dir()  # the other version is untouched
    store.delete("default", "intents", 1)  # deleting again is a no-op
    store.delete("default", "never", 7)
    assert list((store.root / ".staging").iterdir()) == []
