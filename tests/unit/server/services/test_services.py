"""The application services on real parts: a SqliteStore and a LocalAdapterStore in tmp_path
and a real InferenceEngine serving a tiny random BERT saved as a local model directory."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneserve_server.app import build_services
from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import (
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    NotReady,
    QuotaExceeded,
)
from tuneserve_server.domain.jobs import JobSpec, JobState, TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.generation import SamplingParams
from tuneserve_server.engine.inference import ClassifyResult, InferenceEngine
from tuneserve_server.observability.metrics import JOBS_SUBMITTED
from tuneserve_server.services import Services
from tuneserve_server.services.datasets import UploadChunk, UploadHeader
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore
from tuneserve_server.training.validation import TrainInput

NS = "team-a"
TINY_BASE_ID = "tiny-bert"  # what conftest's TinyBase adapters name as their base model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, make_tiny_base):
    """The tiny base as a model directory the engine loads like any other (its name is the
    base model id the adapters name)."""
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("base")
    base = make_tiny_base()
    model_dir = root / TINY_BASE_ID
    base.encoder.save_pretrained(model_dir)
    vocab = root / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(95))]) + "\n"
    )
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    return base, model_dir


@dataclass
class Parts:
    base: object  # conftest's TinyBase
    make_spec: Callable[..., JobSpec]
    store: SqliteStore
    adapter_store: LocalAdapterStore
    engine: InferenceEngine
    services: Services

    def publish(self, name: str, labels: tuple[str, ...] = ("neg", "pos")) -> int:
        """An adapter version the way the worker makes one: a job claimed, its files
        published to the adapter store, the version registered as the job completes."""
        spec = self.make_spec(NS, f"req-{name}-{datetime.now(UTC).timestamp()}", name)
        job, _ = self.store.create_job(spec)
        claimed = self.store.claim_job("w", 60)
        assert claimed is not None and claimed[0].id == job.id
        version = self.store.reserve_adapter_version(NS, name)
        staged = self.base.write_adapter(self.adapter_store.staging_dir(), labels=labels)
        size = self.adapter_store.publish(staged, NS, name, version)
        record = AdapterVersionRecord(
            namespace=NS,
            name=name,
            version=version,
            job_id=job.id,
            task=TaskType.CLASSIFICATION,
            base_model=TINY_BASE_ID,
            labels=labels,
            metrics={},
            lora_rank=4,
            size_bytes=size,
            created_at=datetime.now(UTC),
        )
        self.store.complete_job(job.id, "w", {}, record)
        return version


def run_with(
    tiny_model_dir,
    make_spec,
    tmp_path: Path,
    body: Callable[[Parts], Awaitable[None]],
    *,
    start: bool = True,
    **settings_overrides: object,
) -> None:
    base, model_dir = tiny_model_dir
    settings = Settings(
        data_dir=tmp_path / "data",
        base_model=str(model_dir),
        torch_threads=1,
        registry_poll_s=3600,
        max_text_chars=50,
        max_predict_inputs=3,
        **settings_overrides,
    )
    store = SqliteStore(tmp_path / "jobs.db")
    adapter_store = LocalAdapterStore(tmp_path / "adapters")
    engine = InferenceEngine(settings, store, adapter_store)
    parts = Parts(
        base, make_spec, store, adapter_store, engine, build_services(settings, store, adapter_store, engine)
    )

    async def main() -> None:
        if start:
            await engine.start()
        try:
            await body(parts)
        finally:
            if start:
                await engine.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()


# ---------------------------------------------------------------- adapter deletion
def test_deleting_an_adapter_marks_the_rows_removes_the_files_and_unloads_it(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        v1, v2 = p.publish("intents"), p.publish("intents")
        p.publish("other")
        await p.engine.refresh()
        await p.services.adapters.load(AdapterRef(NS, "intents", v1), pin=False)
        await p.services.adapters.load(AdapterRef(NS, "intents"), pin=True)  # pinned: still goes
        await p.services.adapters.load(AdapterRef(NS, "other"), pin=False)
        assert set(await p.services.adapters.residency()) == {
            (NS, "intents", v1),
            (NS, "intents", v2),
            (NS, "other", 1),
        }

        assert await p.services.adapters.delete(AdapterRef(NS, "intents")) == [v1, v2]

        assert p.store.adapter_versions(NS, "intents") == []
        changes = {(r.name, r.version): r.deleted for r in p.store.adapter_changes(0)}
        assert changes == {("intents", v1): True, ("intents", v2): True, ("other", 1): False}
        for version in (v1, v2):
            assert not (p.adapter_store.root / NS / "intents" / str(version)).exists()
            with pytest.raises(NotFound):
                p.adapter_store.open(NS, "intents", version)
        assert set(await p.services.adapters.residency()) == {(NS, "other", 1)}
        with pytest.raises(NotFound):
            await p.engine.resolve(AdapterRef(NS, "intents"))
        # the other adapter is untouched: rows, files and residency
        assert [r.version for r in p.store.adapter_versions(NS, "other")] == [1]
        assert p.adapter_store.open(NS, "other", 1).is_dir()
        with pytest.raises(NotFound):
            await p.services.adapters.get(NS, "intents")

    run_with(tiny_model_dir, make_spec, tmp_path, body)


def test_deleting_one_version_keeps_the_others_and_an_unknown_name_is_not_found(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        v1, v2 = p.publish("intents"), p.publish("intents")
        await p.engine.refresh()
        await p.services.adapters.load(AdapterRef(NS, "intents", v1), pin=False)

        assert await p.services.adapters.delete(AdapterRef(NS, "intents", v1)) == [v1]

        records, residency = await p.services.adapters.get(NS, "intents")
        assert [r.version for r in records] == [v2]
        assert (NS, "intents", v1) not in residency
        assert not (p.adapter_store.root / NS / "intents" / str(v1)).exists()
        assert p.adapter_store.open(NS, "intents", v2).is_dir()
        with pytest.raises(NotFound):
            await p.services.adapters.delete(AdapterRef(NS, "no-such-adapter"))
        with pytest.raises(NotFound):
            await p.services.adapters.delete(AdapterRef(NS, "intents", v1))  # already gone
        page = await p.services.adapters.list(NS, page_size=10, page_token="")
        assert [[r.version for r in versions] for versions in page.adapters] == [[v2]]

    run_with(tiny_model_dir, make_spec, tmp_path, body)


# ---------------------------------------------------------------- readiness, once
def test_calls_that_need_the_base_model_are_not_ready_until_it_loads(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        req = TrainInput(
            namespace=NS,
            adapter_name="intents",
            task=TaskType.CLASSIFICATION,
            request_id="r1",
            train=[("w1 w2", "a"), ("w3", "b")] * 10,
            validation=[],
        )
        with pytest.raises(NotReady):
            await p.services.training.submit(req)
        with pytest.raises(NotReady):
            await p.services.training.validate(req)
        with pytest.raises(NotReady):
            await p.services.datasets.upload(_parts(_header(b"x")))
        with pytest.raises(NotReady):
            p.services.server_info.info()
        assert p.store.list_jobs(NS) == ([], "")

    run_with(tiny_model_dir, make_spec, tmp_path, body, start=False)


def test_server_info_is_the_configured_limits_and_the_loaded_model(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        info = p.services.server_info.info()
        assert info.model.base_model == p.engine.source.model_id
        assert info.model.task is TaskType.CLASSIFICATION
        assert info.model.max_positions == p.engine.max_positions
        assert info.model.classify_max_tokens == p.engine.runner.max_length
        lim = info.limits
        assert (lim.max_text_chars, lim.max_predict_inputs, lim.max_lora_rank) == (50, 3, 8)
        assert info.quotas.active_jobs == 7
        assert info.auth.mode == "none" and not info.auth.jwt and not info.auth.client_certificates
        assert info.features.prediction_sets and info.features.uncertainty
        assert not info.features.streaming_generation and not info.features.generation
        assert info.version

    run_with(tiny_model_dir, make_spec, tmp_path, body, max_lora_rank=8, quota_active_jobs=7, auth="none")


# ---------------------------------------------------------------- dataset intake and train preparation
def _csv(n: int = 24) -> bytes:
    return (
        "text,label\n" + "".join(f"w{i} w{i + 1} w{i + 2},{'a' if i % 2 else 'b'}\n" for i in range(n))
    ).encode()


def _header(content: bytes, upload_id: str = "up-1") -> UploadHeader:
    return UploadHeader(
        namespace=NS,
        display_name="demo",
        task=TaskType.CLASSIFICATION,
        format="csv",
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        upload_id=upload_id,
    )


async def _parts(*parts: object) -> AsyncIterator[object]:
    for part in parts:
        yield part


def test_an_uploaded_dataset_trains_a_job_queued_once_per_request_id(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        content = _csv()
        half = len(content) // 2
        dataset, created = await p.services.datasets.upload(
            _parts(_header(content), UploadChunk(0, content[:half]), UploadChunk(half, content[half:]))
        )
        assert created and dataset.rows == 24 and dataset.usable_rows == 24
        assert dataset.report["max_tokens"] == 5  # the served tokenizer counted: [CLS] 3 words [SEP]
        assert await p.services.datasets.get(NS, dataset.id) == dataset
        # the same upload_id again: answered from the store, without reading a chunk
        again, created = await p.services.datasets.upload(_parts(_header(content), "not read"))
        assert (again, created) == (dataset, False)

        req = TrainInput(
            namespace=NS,
            adapter_name="intents",
            task=TaskType.CLASSIFICATION,
            request_id="r1",
            train=[],
            validation=[],
            dataset_id=dataset.id,
        )
        before = JOBS_SUBMITTED._value.get()
        first = await p.services.training.submit(req)
        second = await p.services.training.submit(req)
        assert first.created and not second.created and second.job.id == first.job.id
        assert JOBS_SUBMITTED._value.get() == before + 1
        assert (
            first.job.dataset_id == dataset.id
            and first.job.train_examples + first.job.validation_examples == 24
        )
        assert first.data_report == second.data_report and first.data_report["usable_rows"] == 24
        jobs, _ = await p.services.training.list_jobs(
            NS, states=[], adapter_name="", page_size=10, page_token=""
        )
        assert [j.id for j in jobs] == [first.job.id]

        report = await p.services.training.validate(req)
        assert report.usable_rows == 24 and report.ok
        await p.services.datasets.delete(NS, dataset.id)
        with pytest.raises(NotFound) as err:
            await p.services.training.validate(req)
        assert err.value.message.startswith("dataset_id:")

    run_with(tiny_model_dir, make_spec, tmp_path, body)


def test_an_upload_stream_of_the_wrong_shape_is_refused_by_field(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        content = _csv()
        for parts in ((), (UploadChunk(0, content),), (None,)):
            with pytest.raises(InvalidRequest) as err:
                await p.services.datasets.upload(_parts(*parts))
            assert [v.field for v in err.value.violations] == ["header"]
        with pytest.raises(InvalidRequest) as err:
            await p.services.datasets.upload(_parts(_header(content, "up-2"), UploadChunk(0, content), None))
        assert "only the first message" in err.value.violations[0].description
        with pytest.raises(FailedPrecondition):  # this server serves an encoder
            await p.services.datasets.upload(
                _parts(replace(_header(content, "up-3"), task=TaskType.CAUSAL_LM))
            )

    run_with(tiny_model_dir, make_spec, tmp_path, body)


def test_an_upload_resumes_over_stored_chunks_and_quotes_a_conflict_from_the_stream(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        content = _csv() + b"w0 w1 w2,a\n"  # row 1's text again, with the other label
        datasets = p.services.datasets
        with pytest.raises(FailedPrecondition, match="incomplete"):  # the connection drops
            await datasets.upload(_parts(_header(content), UploadChunk(0, content[:40])))
        (held,), _ = await datasets.list_uploads(NS, page_size=10, page_token="")
        assert (held.upload_id, held.received, held.declared_bytes, held.display_name) == (
            "up-1",
            40,
            len(content),
            "demo",
        )
        with pytest.raises(FailedPrecondition, match="differ"):  # re-sent bytes must match
            await datasets.upload(_parts(_header(content), UploadChunk(30, b"X" * 20)))
        dataset, created = await datasets.upload(
            _parts(_header(content), UploadChunk(0, content[:25]), UploadChunk(25, content[25:]))
        )
        assert created and dataset.rows == 25
        (conflict,) = [i for i in dataset.report["issues"] if i["code"] == "conflicting_labels"]
        assert "e.g. 'w0 w1 w2' as 'a' and 'b' (training rows 1, 25)" in conflict["message"]
        assert await datasets.list_uploads(NS, page_size=10, page_token="") == ([], "")
        assert p.store.dataset_content(NS, dataset.id) == content

    run_with(tiny_model_dir, make_spec, tmp_path, body)


def test_an_owner_discards_an_unfinished_upload_and_a_bad_file_is_discarded(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        content = _csv()
        datasets = p.services.datasets
        with pytest.raises(FailedPrecondition):
            await datasets.upload(_parts(_header(content, "half"), UploadChunk(0, content[:10])))
        with pytest.raises(NotFound):
            await datasets.discard_upload("team-b", "half")  # another namespace's upload
        await datasets.discard_upload(NS, "half")
        with pytest.raises(NotFound):
            await datasets.discard_upload(NS, "half")
        bad = replace(_header(content, "bad"), sha256="0" * 64)
        with pytest.raises(InvalidRequest) as err:
            await datasets.upload(_parts(bad, UploadChunk(0, content)))
        assert [v.field for v in err.value.violations] == ["header.sha256"]
        assert await datasets.list_uploads(NS, page_size=10, page_token="") == ([], "")

    run_with(tiny_model_dir, make_spec, tmp_path, body)


def test_the_api_sweeps_abandoned_uploads_on_a_timer(tmp_path):
    from tuneserve_server.app import sweep_uploads_every
    from tuneserve_server.services.datasets import DatasetService

    store = SqliteStore(tmp_path / "jobs.db", upload_ttl_s=0.2)
    header = {"sha256": "0" * 64, "size_bytes": 100, "format": "csv", "task": "classification"}
    store.begin_upload(NS, "abandoned", header)
    store.add_upload_chunk(NS, "abandoned", 0, b"x" * 50)
    datasets = DatasetService(store, engine=None, max_dataset_bytes=1000, max_text_chars=50, quotas=Quotas())  # type: ignore[arg-type]

    async def main() -> None:
        sweeper = asyncio.create_task(sweep_uploads_every(0.05, datasets))
        try:
            for _ in range(400):  # no other upload starts: only the timer can forget it
                if store.upload_bytes(NS, "abandoned") == b"":
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the abandoned upload was never swept")
        finally:
            sweeper.cancel()

    try:
        asyncio.run(main())
        assert store.list_uploads(NS) == ([], "")
    finally:
        store.close()


# ---------------------------------------------------------------- prediction
def _no_sampling() -> SamplingParams:
    raise AssertionError("an encoder server must not convert generation parameters")


def test_prediction_checks_inputs_once_then_classifies(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        p.publish("intents", labels=("neg", "pos"))
        predict = p.services.prediction.predict
        ref = AdapterRef(NS, "intents")
        for inputs, field in (
            ([], "inputs"),
            (["w1"] * 4, "inputs"),
            (["w1", "  "], "inputs[1]"),
            (["w1", "x" * 51], "inputs[1]"),
        ):
            with pytest.raises(InvalidRequest) as err:
                await predict(ref, inputs, generation_asked=False, sampling=_no_sampling)
            assert [v.field for v in err.value.violations] == [field]
        with pytest.raises(InvalidRequest) as err:
            await p.services.prediction.open_stream(ref, " ", _no_sampling)
        assert [v.field for v in err.value.violations] == ["input"]
        with pytest.raises(FailedPrecondition, match="does not generate"):
            await predict(ref, ["w1"], generation_asked=True, sampling=_no_sampling)
        with pytest.raises(FailedPrecondition, match="does not generate"):
            await p.services.prediction.open_stream(ref, "w1", _no_sampling)

        result = await predict(ref, ["w1 w2", "w3"], generation_asked=False, sampling=_no_sampling)
        assert isinstance(result, ClassifyResult)
        assert result.adapter is not None and (result.adapter.name, result.adapter.version) == ("intents", 1)
        assert [sorted(s.labels) for s in result.scores] == [["neg", "pos"], ["neg", "pos"]]

    run_with(tiny_model_dir, make_spec, tmp_path, body)


# ---------------------------------------------------------------- tenant quotas
def _train(request_id: str, namespace: str = NS) -> TrainInput:
    labels = ("pos", "neg")
    return TrainInput(
        namespace=namespace,
        adapter_name="intents",
        task=TaskType.CLASSIFICATION,
        request_id=request_id,
        train=[(f"w{i} w{i + 1}", labels[i % 2]) for i in range(8)],
        validation=[],
    )


def test_train_is_refused_past_the_active_jobs_and_adapter_versions_quotas(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        p.publish("old")
        p.publish("old")  # 2 versions stored
        assert (await p.services.training.submit(_train("r0"))).created  # 2 + 1 active + 1 <= 3
        with pytest.raises(QuotaExceeded) as err:  # 2 stored + 1 active + this one > 3
            await p.services.training.submit(_train("r1"))
        e = err.value
        assert (e.quota, e.limit, e.used) == ("adapter_versions", 3, 3) and e.retry_after_s == 0
        assert "one per queued or running job" in e.message and NS in e.message
        p.services.training.quotas = replace(p.services.training.quotas, adapter_versions=0)  # unlimited
        assert (await p.services.training.submit(_train("r1"))).created
        with pytest.raises(QuotaExceeded) as err:
            await p.services.training.submit(_train("r2"))
        e = err.value
        assert (e.quota, e.limit, e.used) == ("active_jobs", 2, 2) and e.retry_after_s > 0
        assert (await p.services.training.submit(_train("r0", "team-b"))).created  # its own quota
        claimed = p.store.claim_job("w", 60)  # a job of ours ends: room for one more
        assert claimed is not None and claimed[0].namespace == NS
        p.store.finish_job(claimed[0].id, "w", JobState.FAILED, "x")
        assert (await p.services.training.submit(_train("r2"))).created

    run_with(tiny_model_dir, make_spec, tmp_path, body, quota_active_jobs=2, quota_adapter_versions=3)


def test_uploads_are_refused_past_the_dataset_and_upload_byte_quotas(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        content = _csv()  # ~400 bytes
        size = len(content)
        # declared size past the unfinished-upload quota: refused at the start, nothing kept
        with pytest.raises(QuotaExceeded) as err:
            await p.services.datasets.upload(_parts(_header(content, "big"), "not read"))
        assert (err.value.quota, err.value.limit, err.value.used) == ("upload_bytes", size - 1, 0)
        assert p.store.namespace_usage(NS)["upload_bytes"] == 0

    run_with(tiny_model_dir, make_spec, tmp_path, body, quota_upload_bytes=len(_csv()) - 1)

    async def chunks(p: Parts) -> None:
        content = _csv()
        half = len(content) // 2
        # a half-sent upload holds `half` bytes; a second upload's chunk passes the quota
        with pytest.raises(ConnectionError):
            await p.services.datasets.upload(
                _cut_parts(_header(content, "u1"), UploadChunk(0, content[:half]), _Cut())
            )
        assert p.store.namespace_usage(NS)["upload_bytes"] == half
        other = _csv(23)
        with pytest.raises(QuotaExceeded) as err:  # refused at its start: its size does not fit
            await p.services.datasets.upload(_parts(_header(other, "u2"), UploadChunk(0, other)))
        assert err.value.quota == "upload_bytes" and err.value.used == half
        # finishing the first one frees its upload bytes and stores it as a dataset
        dataset, created = await p.services.datasets.upload(
            _parts(_header(content, "u1"), UploadChunk(half, content[half:]))
        )
        assert created and p.store.namespace_usage(NS) == {
            "active_jobs": 0,
            "active_evaluations": 0,  # counted since the evals merge (0005)
            "dataset_bytes": len(content),
            "upload_bytes": 0,
            "adapter_versions": 0,
        }
        # now the stored bytes leave no room for another file of that size
        with pytest.raises(QuotaExceeded) as err:
            await p.services.datasets.upload(_parts(_header(content, "u3"), "not read"))
        assert (err.value.quota, err.value.used) == ("dataset_bytes", len(content))
        await p.services.datasets.delete(NS, dataset.id)
        _, created = await p.services.datasets.upload(_parts(_header(content, "u4"), UploadChunk(0, content)))
        assert created

    n = len(_csv())
    run_with(
        tiny_model_dir,
        make_spec,
        tmp_path / "chunks",
        chunks,
        quota_upload_bytes=n,
        quota_dataset_bytes=n + n // 2,
    )


class _Cut:
    """An upload stream part that stands for the connection dropping mid-upload."""


async def _cut_parts(*parts: object) -> AsyncIterator[object]:
    for part in parts:
        if isinstance(part, _Cut):
            raise ConnectionError("client went away")
        yield part


def test_pins_are_capped_per_namespace(tiny_model_dir, make_spec, tmp_path):
    async def body(p: Parts) -> None:
        for name in ("a", "b", "c"):
            p.publish(name)
        await p.engine.refresh()
        await p.services.adapters.load(AdapterRef(NS, "a"), pin=True)
        await p.services.adapters.load(AdapterRef(NS, "b"), pin=True)
        await p.services.adapters.load(AdapterRef(NS, "a"), pin=True)  # already pinned: no new pin
        with pytest.raises(QuotaExceeded) as err:
            await p.services.adapters.load(AdapterRef(NS, "c"), pin=True)
        assert (err.value.quota, err.value.limit, err.value.used) == ("pinned_adapters", 2, 2)
        loaded = await p.services.adapters.load(AdapterRef(NS, "c"), pin=False)  # loading is fine
        assert not loaded.pinned
        await p.services.adapters.unload(AdapterRef(NS, "a"))
        assert (await p.services.adapters.load(AdapterRef(NS, "c"), pin=True)).pinned

    run_with(tiny_model_dir, make_spec, tmp_path, body, quota_pinned_adapters=2)


def test_an_upload_chunk_is_refused_when_other_uploads_filled_the_quota_meanwhile(
    tiny_model_dir, make_spec, tmp_path
):
    async def body(p: Parts) -> None:
        content, small = _csv(), _csv(4)
        passed_start, go = asyncio.Event(), asyncio.Event()

        async def slow() -> AsyncIterator[object]:
            yield _header(content, "slow")
            passed_start.set()  # the next part is asked for once the start's checks passed
            await go.wait()
            yield UploadChunk(0, content)

        slow_upload = asyncio.create_task(p.services.datasets.upload(slow()))
        await passed_start.wait()
        with pytest.raises(ConnectionError):  # meanwhile another upload holds some bytes
            await p.services.datasets.upload(
                _cut_parts(_header(small, "quick"), UploadChunk(0, small[:50]), _Cut())
            )
        go.set()
        with pytest.raises(QuotaExceeded) as err:
            await slow_upload
        assert (err.value.quota, err.value.limit, err.value.used) == ("upload_bytes", len(content), 50)
        assert p.store.namespace_usage(NS)["upload_bytes"] == 50  # the refused chunk was not stored

    run_with(tiny_model_dir, make_spec, tmp_path, body, quota_upload_bytes=len(_csv()))
