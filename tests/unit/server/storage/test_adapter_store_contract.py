"""The AdapterStore contract, run against every implementation: the local (or shared RWX)
directory store, and the S3 store against a real S3-compatible HTTP server on localhost
(moto's server mode; boto3 talks to it over HTTP exactly as to AWS or MinIO).

Each backend fixture gives a store plus the hooks to damage its backing storage behind the
store's back, and to open a second store on the same storage (another replica)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuneserve_server.config import ConfigError, Settings, load_settings
from tuneserve_server.domain.errors import CorruptAdapter, FailedPrecondition, NotFound
from tuneserve_server.storage.factory import build_adapter_store
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.manifest import MANIFEST_NAME

# peft calls a transformers API that transformers has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

FILES = {
    "adapter_model.safetensors": b"\x00weights" * 100,
    "tuneserve.json": b'{"format": 1}',
    "sub/extra.bin": b"x" * 10,
}
PAYLOAD = sum(len(v) for v in FILES.values())
CREDS = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}


@dataclass
class Backend:
    kind: str
    store: Any
    replica: Callable[[], Any]  # another store on the same backing storage, fresh cache
    overwrite: Callable[[str, str, int, str, bytes], None]  # replace one stored file
    remove: Callable[[str, str, int, str], None]  # remove one stored file
    put_unpublished: Callable[[str, str, int, dict[str, bytes]], None]  # files, never published


# ---------------------------------------------------------------- backends
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **CREDS)


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "adapters"
    store = LocalAdapterStore(root)

    def put_unpublished(ns: str, name: str, version: int, files: dict[str, bytes]) -> None:
        staged = store.staging_dir()  # a local publish in progress: staged, not yet renamed
        for rel, data in files.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)

    return Backend(
        "local",
        store,
        replica=lambda: LocalAdapterStore(root),
        overwrite=lambda ns, n, v, rel, data: (root / ns / n / str(v) / rel).write_bytes(data),
        remove=lambda ns, n, v, rel: (root / ns / n / str(v) / rel).unlink(),
        put_unpublished=put_unpublished,
    )


def _s3_backend(tmp_path: Path, endpoint: str) -> Backend:
    from tuneserve_server.storage.s3_adapter_store import S3AdapterStore

    client = _s3_client(endpoint)
    bucket = f"adapters-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/tuneserve/prod"

    def key(ns: str, n: str, v: int, rel: str) -> str:
        return f"tuneserve/prod/{ns}/{n}/{v}/{rel}"

    def replica() -> S3AdapterStore:
        return S3AdapterStore(url, cache_dir=tmp_path / f"cache-{uuid.uuid4().hex[:6]}", client=client)

    def put_unpublished(ns: str, name: str, version: int, files: dict[str, bytes]) -> None:
        for rel, data in files.items():  # an upload that stopped before its manifest
            client.put_object(Bucket=bucket, Key=key(ns, name, version, rel), Body=data)

    return Backend(
        "s3",
        S3AdapterStore(url, cache_dir=tmp_path / "cache", endpoint_url=endpoint, client=client),
        replica=replica,
        overwrite=lambda ns, n, v, rel, data: client.put_object(
            Bucket=bucket, Key=key(ns, n, v, rel), Body=data
        ),
        remove=lambda ns, n, v, rel: client.delete_object(Bucket=bucket, Key=key(ns, n, v, rel)),
        put_unpublished=put_unpublished,
    )


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path)
    return _s3_backend(tmp_path, request.getfixturevalue("s3_endpoint"))


def _stage(store: Any, files: dict[str, bytes] = FILES) -> Path:
    staged = store.staging_dir()
    for rel, data in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    return staged


def _contents(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


# ---------------------------------------------------------------- the contract
def test_staging_dirs_are_fresh_and_empty(backend):
    a, b = backend.store.staging_dir(), backend.store.staging_dir()
    assert a != b and a.is_dir() and list(a.iterdir()) == []


def test_publish_then_open_round_trips_every_file_with_a_manifest(backend):
    size = backend.store.publish(_stage(backend.store), "team-a", "intents", 1)
    assert size == PAYLOAD

    for store in (backend.store, backend.replica()):  # the writer and another replica
        directory = store.open("team-a", "intents", 1)
        assert _contents(directory) == FILES
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        assert set(manifest["files"]) == set(FILES)
        assert manifest["files"]["sub/extra.bin"]["size"] == 10
        assert len(manifest["files"]["tuneserve.json"]["sha256"]) == 64
        assert store.open("team-a", "intents", 1) == directory  # again: same (cached) copy


def test_open_of_an_unknown_version_is_not_found(backend):
    backend.store.publish(_stage(backend.store), "default", "intents", 1)
    for ns, name, version in [("default", "intents", 2), ("other", "intents", 1), ("default", "nope", 1)]:
        with pytest.raises(NotFound):
            backend.store.open(ns, name, version)


def test_a_version_whose_files_are_written_but_not_published_is_invisible(backend):
    backend.put_unpublished("default", "intents", 3, FILES)
    for store in (backend.store, backend.replica()):
        with pytest.raises(NotFound):
            store.open("default", "intents", 3)
    # Publishing it properly afterwards works and gives the published files.
    backend.store.publish(_stage(backend.store, {"tuneserve.json": b"{}"}), "default", "intents", 3)
    assert _contents(backend.replica().open("default", "intents", 3)) == {"tuneserve.json": b"{}"}


@pytest.mark.parametrize("rel", ["adapter_model.safetensors", "sub/extra.bin"])
def test_a_changed_byte_is_detected_on_open_and_named(backend, rel):
    backend.store.publish(_stage(backend.store), "default", "intents", 1)
    data = bytearray(FILES[rel])
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    backend.overwrite("default", "intents", 1, rel, bytes(data))

    with pytest.raises(CorruptAdapter, match=rel) as err:
        backend.replica().open("default", "intents", 1)
    assert isinstance(err.value, FailedPrecondition)  # FAILED_PRECONDITION to a caller
    assert "default/intents@1" in err.value.message
    local_dir = backend.store.root if backend.kind == "local" else backend.store.cache_dir
    assert str(local_dir) not in err.value.message  # callers see names, never server paths


def test_a_truncated_file_is_detected(backend):
    backend.store.publish(_stage(backend.store), "default", "intents", 1)
    backend.overwrite("default", "intents", 1, "tuneserve.json", b"{")
    with pytest.raises(CorruptAdapter, match=re.escape("tuneserve.json")):
        backend.replica().open("default", "intents", 1)


def test_a_missing_file_is_detected(backend):
    backend.store.publish(_stage(backend.store), "default", "intents", 1)
    backend.remove("default", "intents", 1, "adapter_model.safetensors")
    with pytest.raises(CorruptAdapter, match=re.escape("adapter_model.safetensors is missing")):
        backend.replica().open("default", "intents", 1)


def test_publishing_a_version_twice_is_refused_and_keeps_the_first(backend):
    backend.store.publish(_stage(backend.store, {"w": b"first"}), "default", "intents", 1)
    with pytest.raises(FileExistsError):
        backend.store.publish(_stage(backend.store, {"w": b"second"}), "default", "intents", 1)
    with pytest.raises(FileExistsError):
        backend.replica().publish(_stage(backend.store, {"w": b"third"}), "default", "intents", 1)
    assert _contents(backend.replica().open("default", "intents", 1)) == {"w": b"first"}
    backend.store.publish(_stage(backend.store, {"w": b"second"}), "default", "intents", 2)
    assert _contents(backend.replica().open("default", "intents", 2)) == {"w": b"second"}


def test_delete_removes_one_version_for_every_replica(backend):
    for version in (1, 2):
        backend.store.publish(_stage(backend.store), "default", "intents", version)
    other = backend.replica()
    other.open("default", "intents", 1)  # a replica that has it loaded / cached
    backend.store.delete("default", "intents", 1)
    for store in (backend.store, other, backend.replica()):
        with pytest.raises(NotFound):
            store.open("default", "intents", 1)
        assert _contents(store.open("default", "intents", 2)) == FILES
    backend.store.delete("default", "intents", 1)  # again: a no-op
    backend.store.delete("default", "never", 7)


# ---------------------------------------------------------------- per backend
def test_local_a_version_directory_without_its_manifest_is_corrupt(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    final = store.root / "default" / "intents" / "1"
    store.publish(_stage(store), "default", "intents", 1)
    (final / MANIFEST_NAME).unlink()
    with pytest.raises(CorruptAdapter, match=f"no {MANIFEST_NAME}"):
        store.open("default", "intents", 1)
    (final / MANIFEST_NAME).write_text("not json")
    with pytest.raises(CorruptAdapter, match="unreadable"):
        store.open("default", "intents", 1)


def test_local_a_file_added_after_publish_is_refused(tmp_path):
    store = LocalAdapterStore(tmp_path / "adapters")
    store.publish(_stage(store), "default", "intents", 1)
    (store.root / "default" / "intents" / "1" / "adapter_config.json").write_text("{}")
    with pytest.raises(CorruptAdapter, match=re.escape("adapter_config.json is not in")):
        store.open("default", "intents", 1)


def test_s3_layout_and_manifest_written_last(tmp_path, s3_endpoint):
    backend = _s3_backend(tmp_path, s3_endpoint)
    store = backend.store
    calls: list[str] = []

    def record(params, model, **_):
        if model.name in ("PutObject", "CreateMultipartUpload"):
            calls.append(params["Key"])

    store.client.meta.events.register("provide-client-params.s3", record)
    store.publish(_stage(store), "team-a", "intents", 4)
    prefix = "tuneserve/prod/team-a/intents/4/"
    assert calls[-1] == prefix + MANIFEST_NAME
    assert sorted(calls[:-1]) == sorted(prefix + rel for rel in FILES)
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix="tuneserve/prod/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(calls)


def test_s3_a_damaged_local_cache_is_downloaded_again(tmp_path, s3_endpoint):
    backend = _s3_backend(tmp_path, s3_endpoint)
    backend.store.publish(_stage(backend.store), "default", "intents", 1)
    directory = backend.store.open("default", "intents", 1)
    (directory / "sub" / "extra.bin").write_bytes(b"y" * 10)
    again = backend.store.open("default", "intents", 1)
    assert _contents(again) == FILES
    assert not any((backend.store.cache_dir / ".tmp").iterdir())  # no temp debris left


def test_s3_store_from_settings_reads_the_standard_aws_variables(tmp_path, s3_endpoint, monkeypatch):
    client = _s3_client(s3_endpoint)
    client.create_bucket(Bucket="from-settings")
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(data_dir=tmp_path, adapter_store_url="s3://from-settings/some/prefix/")
    store = build_adapter_store(settings)
    assert (store.bucket, store.prefix) == ("from-settings", "some/prefix")
    assert store.cache_dir == tmp_path / "adapter-cache"
    store.publish(_stage(store), "default", "intents", 1)
    assert client.head_object(Bucket="from-settings", Key=f"some/prefix/default/intents/1/{MANIFEST_NAME}")
    assert _contents(store.open("default", "intents", 1)) == FILES


@pytest.mark.parametrize("url", ["file:///data", "s3://", "s3:///prefix-only", "bucket/prefix"])
def test_adapter_store_url_must_be_empty_or_s3(url):
    with pytest.raises(ConfigError, match="adapter_store_url"):
        load_settings(env={"TUNESERVE_ADAPTER_STORE_URL": url})
    assert load_settings(env={"TUNESERVE_ADAPTER_STORE_URL": "s3://b-1/p"}).adapter_store_url == "s3://b-1/p"


def test_the_default_settings_build_the_directory_store(tmp_path):
    store = build_adapter_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalAdapterStore) and store.root == tmp_path / "adapters"


# ---------------------------------------------------------------- serving reads them
def test_serving_loads_a_published_adapter_from_the_store(backend, tiny_base):
    """The real registry on a tiny BERT loads what a worker published, from another replica,
    and computes exactly what the same adapter computes loaded straight from its files; a
    corrupted copy is refused before any weights load."""
    import torch

    from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry

    key = AdapterKey("team-a", "sentiment", 1)
    where = (key.namespace, key.name, key.version)
    backend.store.publish(tiny_base.write_adapter(backend.store.staging_dir(), seed=7), *where)
    reference_dir = tiny_base.write_adapter(Path(backend.store.staging_dir()) / "ref", seed=7)

    def registry() -> AdapterRegistry:
        return tiny_base.serving_registry(max_resident=4, max_rank=8)

    def forward(reg: AdapterRegistry, slot: str | None) -> torch.Tensor:
        with reg.bank.selecting([slot]):
            return reg.model(input_ids=ids).last_hidden_state

    ids = torch.tensor([[1, 5, 9, 13, 2]])
    served, reference = registry(), registry()
    entry = served.ensure(key, backend.replica().open(*where))
    ref_entry = reference.ensure(key, reference_dir)
    with torch.inference_mode():
        got, want, bare = (
            forward(served, entry.slot),
            forward(reference, ref_entry.slot),
            forward(served, None),
        )
    assert torch.equal(got, want)
    assert not torch.allclose(got, bare, atol=1e-4)  # the LoRA weights really are applied
    assert entry.meta.labels == ("neg", "pos")
    assert torch.equal(entry.head.weight, ref_entry.head.weight)

    weights = "adapter_model.safetensors"
    data = bytearray((reference_dir / weights).read_bytes())
    data[-1] ^= 0xFF
    backend.overwrite(*where, weights, bytes(data))
    fresh = registry()
    with pytest.raises(CorruptAdapter, match=weights):
        fresh.ensure(key, backend.replica().open(*where))
    assert fresh.loads == 0 and len(fresh) == 0
