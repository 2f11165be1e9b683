"""Every Prometheus metric tuneserve exports, in one place (docs/metrics.md lists them).

Metric names are API: prefix `tuneserve_`, bounded label sets. Adapter labels go through
`AdapterLabels`, which keeps the top-N adapters by recent traffic and folds the rest into
`other`. Each process (API, worker) serves its own registry on its own port with
`serve_metrics`; values computed at scrape time (device memory, jobs by state) come from
custom collectors, so a scrape always sees the current state."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tuneserve_server.domain.jobs import JobState

REGISTRY: CollectorRegistry = DEFAULT_REGISTRY

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

BASE_ADAPTER_LABEL = "__base__"  # per-adapter label of requests for the bare base model
OTHER_ADAPTER_LABEL = "other"  # per-adapter label of adapters outside the top N
ADAPTER_LABEL_TOP_N = 20
ADAPTER_COUNT_BUCKETS = ("1", "2-4", "5-8", "9+")  # label values of ROWS_BY_ADAPTER_COUNT
FINISHED_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

# --- RPCs (API process; recorded by the server interceptor)
RPC_REQUESTS = Counter(
    "tuneserve_rpc_requests_total", "RPCs handled, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "tuneserve_rpc_latency_seconds", "RPC handling time, by method", ["method"], buckets=_LATENCY
)

# --- predict path (API process)
PREDICT_QUEUE_ROWS = Gauge("tuneserve_predict_queue_rows", "Input rows waiting for a batch")
PREDICT_REJECTED = Counter(
    "tuneserve_predict_rejected_total", "Predict requests refused because the queue was full"
)
PREDICT_DROPPED = Counter(
    "tuneserve_predict_dropped_total",
    "Queued predict requests dropped before running (deadline passed or caller cancelled)",
)
BATCH_ROWS = Histogram("tuneserve_batch_rows", "Input rows per forward pass", buckets=_ROWS)
# Causal LM (engine/generation_runner.py)
GENERATION_ACTIVE_ROWS = Gauge("tuneserve_generation_active_rows", "Sequences in the decoding loop now")
GENERATION_TOKENS = Counter("tuneserve_generation_tokens_total", "Tokens generated (all rows)")
GENERATION_CANCELLED = Counter(
    "tuneserve_generation_cancelled_total",
    "Rows dropped from the decoding loop because their caller went away",
)
GENERATION_FINISHED = Counter(
    "tuneserve_generation_finished_total", "Rows that finished, by finish reason", ["reason"]
)
BATCH_ADAPTERS = Histogram(
    "tuneserve_batch_adapters", "Distinct adapters per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64)
)
ROWS_BY_ADAPTER_COUNT = Counter(
    "tuneserve_batch_rows_by_adapter_count_total",
    "Rows run, by how many distinct adapters shared their batch (bucketed)",
    ["adapters"],
)
QUEUE_SECONDS = Histogram(
    "tuneserve_predict_queue_seconds", "Time a request waited in the queue", buckets=_LATENCY
)
FORWARD_SECONDS = Histogram(
    "tuneserve_forward_seconds", "Time of one batched forward pass (with adapter loads)", buckets=_LATENCY
)
ADAPTER_REQUESTS = Counter(
    "tuneserve_adapter_requests_total", "Predict requests by adapter (top-N, rest as other)", ["adapter"]
)
UNCERTAINTY_ROWS = Counter(
    "tuneserve_uncertainty_rows_total",
    "Classified texts whose request asked for abstention (return_uncertainty), by adapter (top-N, rest as other)",
    ["adapter"],
)
ABSTAINED_ROWS = Counter(
    "tuneserve_abstained_rows_total",
    "Of those, texts answered with abstain=true (low confidence or out of domain); "
    "abstain rate = this / tuneserve_uncertainty_rows_total",
    ["adapter"],
)
ADAPTER_LATENCY = Histogram(
    "tuneserve_adapter_request_seconds",
    "Predict latency by adapter (top-N, rest as other)",
    ["adapter"],
    buckets=_LATENCY,
)

# --- adapter registry (API process)
ADAPTER_LOADS = Counter("tuneserve_adapter_loads_total", "Adapters loaded into memory")
ADAPTER_LOAD_FAILURES = Counter("tuneserve_adapter_load_failures_total", "Adapter loads that failed")
ADAPTER_LOAD_SECONDS = Histogram(
    "tuneserve_adapter_load_seconds", "Time to load an adapter from the store", buckets=_LATENCY
)
ADAPTER_EVICTIONS = Counter("tuneserve_adapter_evictions_total", "Adapters evicted by the LRU bound")
ADAPTERS_RESIDENT = Gauge("tuneserve_adapters_resident", "Adapters resident in memory")
ADAPTERS_RESIDENT_BYTES = Gauge("tuneserve_adapters_resident_bytes", "Bytes of resident adapter weights")

# --- jobs (JOBS_SUBMITTED: API process; the rest: worker process)
JOBS = Counter("tuneserve_jobs_total", "Jobs finished by this worker, by final state", ["state"])
JOBS_SUBMITTED = Counter("tuneserve_jobs_submitted_total", "Train calls that queued a new job")
TRAIN_STEP = Gauge("tuneserve_train_step", "Optimiser step of the running (or last) job")
TRAIN_TOTAL_STEPS = Gauge("tuneserve_train_total_steps", "Total steps of the running (or last) job")
TRAIN_LOSS = Gauge(
    "tuneserve_train_loss", "Smoothed training loss of the running (or last) job; NaN before step 1"
)
TRAIN_EXAMPLES_PER_SECOND = Gauge(
    "tuneserve_train_examples_per_second",
    "Training throughput of the running (or last) job since its first step",
)
TRAIN_LAST_CHECKPOINT = Gauge(
    "tuneserve_train_last_checkpoint_timestamp_seconds",
    "Unix time of the running job's last checkpoint (age = time() - this)",
)
TRAIN_RUNNING = Gauge("tuneserve_train_running", "1 while this worker trains a job")

JOBS_BY_STATE_NAME = "tuneserve_jobs_by_state"  # API process, computed at scrape time
JOBS_BY_STATE_HELP = "Jobs in the job store, by state (all namespaces)"

# --- process (both processes)
PROCESS_RSS_BYTES = Gauge("tuneserve_process_resident_memory_bytes", "Resident memory of this process")
DEVICE_MEMORY_ALLOCATED_NAME = "tuneserve_device_memory_allocated_bytes"
DEVICE_MEMORY_RESERVED_NAME = "tuneserve_device_memory_reserved_bytes"

# Export zeros for every known label value from the start, so rate() and dashboards see
# the series before the first event.
for _state in FINISHED_JOB_STATES:
    JOBS.labels(_state.value)
for _bucket in ADAPTER_COUNT_BUCKETS:
    ROWS_BY_ADAPTER_COUNT.labels(_bucket)


def adapter_count_bucket(adapters: int) -> str:
    """The ROWS_BY_ADAPTER_COUNT label for a batch that mixed `adapters` distinct adapters."""
    if adapters <= 1:
        return "1"
    if adapters <= 4:
        return "2-4"
    if adapters <= 8:
        return "5-8"
    return "9+"


def adapter_label_name(namespace: str, name: str) -> str:
    """The raw per-adapter label (before AdapterLabels bounds it): `namespace/name`."""
    return f"{namespace}/{name}"


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0.0


PROCESS_RSS_BYTES.set_function(_rss_bytes)


# ---------------------------------------------------------------- collectors at scrape time
class DeviceMemoryCollector(Collector):
    """torch's CUDA allocator statistics per device, read at scrape time. Reports nothing in a
    process that has not initialised CUDA (it never imports torch or initialises CUDA itself)."""

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                DEVICE_MEMORY_ALLOCATED_NAME,
                "Accelerator memory held by live torch tensors, by device",
                labels=["device"],
            ),
            GaugeMetricFamily(
                DEVICE_MEMORY_RESERVED_NAME,
                "Accelerator memory reserved by torch's caching allocator, by device",
                labels=["device"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        allocated, reserved = self._families()
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_initialized():
                for i in range(torch.cuda.device_count()):
                    allocated.add_metric([f"cuda:{i}"], float(torch.cuda.memory_allocated(i)))
                    reserved.add_metric([f"cuda:{i}"], float(torch.cuda.memory_reserved(i)))
        except Exception:  # metrics must never break serving or training
            pass
        return (allocated, reserved)


class _CountsJobsByState(Protocol):
    def count_jobs_by_state(self) -> Mapping[JobState, int]: ...


class JobStateCollector(Collector):
    """Jobs by state, with one query to the job store per scrape."""

    def __init__(self, store: _CountsJobsByState) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(JOBS_BY_STATE_NAME, JOBS_BY_STATE_HELP, labels=["state"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(JOBS_BY_STATE_NAME, JOBS_BY_STATE_HELP, labels=["state"])
        try:
            counts = self.store.count_jobs_by_state()
        except Exception:  # store closed or busy: report no samples rather than fail the scrape
            counts = None
        if counts is not None:
            for state in JobState:
                family.add_metric([state.value], float(counts.get(state, 0)))
        yield family


DEVICE_MEMORY = DeviceMemoryCollector()
REGISTRY.register(DEVICE_MEMORY)

_job_state_lock = threading.Lock()
_job_state_collector: JobStateCollector | None = None


def register_job_state_collector(store: _CountsJobsByState) -> JobStateCollector:
    """Export `tuneserve_jobs_by_state` from `store` (API process). Calling it again replaces
    the previous store, so it is safe to call once per server start in one process."""
    global _job_state_collector
    with _job_state_lock:
        if _job_state_collector is not None:
            REGISTRY.unregister(_job_state_collector)
        _job_state_collector = JobStateCollector(store)
        REGISTRY.register(_job_state_collector)
        return _job_state_collector


def unregister_job_state_collector() -> None:
    global _job_state_collector
    with _job_state_lock:
        if _job_state_collector is not None:
            REGISTRY.unregister(_job_state_collector)
            _job_state_collector = None


# ---------------------------------------------------------------- bounded adapter labels
class AdapterLabels:
    """Bounded adapter label values: the top `top_n` adapters by recent traffic keep their
    own label; every other adapter is reported as `other`. At most top_n + 1 values (plus
    `__base__`) exist at any time.

    Slots are given first come, first served; when all are taken, an adapter whose traffic
    grows past twice the weakest labelled adapter's (plus a margin) takes that one's slot, and
    the demoted adapter's series are removed from `series` (its later requests count under
    `other`). Traffic counts halve every `decay_every` requests, so "top" means recent.

    `per_namespace` caps the slots one namespace (the part of the label before `/`) may hold:
    a tenant that calls many adapters, or creates and calls new ones in a loop, competes only
    with its own labelled adapters past its share and cannot push every other tenant's
    adapters into `other`. The series count stays at most top_n + 2 whatever callers do, and
    the traffic table at most max_tracked entries.
    """

    PROMOTE_MARGIN = 8

    def __init__(
        self,
        top_n: int = ADAPTER_LABEL_TOP_N,
        *,
        series: Iterable[Any] = (),
        decay_every: int = 10_000,
        max_tracked: int | None = None,
        per_namespace: int | None = None,
    ) -> None:
        self.top_n = top_n
        self.per_namespace = top_n if per_namespace is None else max(1, per_namespace)
        self.series = tuple(series)  # labelled metrics to drop a demoted adapter's series from
        self.decay_every = decay_every
        self.max_tracked = max_tracked if max_tracked is not None else max(1000, 10 * top_n)
        self._counts: dict[str, float] = {}
        self._named: set[str] = set()
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def named(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._named)

    def label(self, adapter: str) -> str:
        """Count one request for `adapter` and return the label to record it under."""
        if adapter == BASE_ADAPTER_LABEL:
            return adapter
        with self._lock:
            count = self._counts.get(adapter, 0.0) + 1
            self._counts[adapter] = count
            self._seen += 1
            if self._seen % self.decay_every == 0:
                self._decay()
                count = self._counts.get(adapter, 0.0)
            if adapter in self._named:
                return adapter
            namespace = adapter.partition("/")[0]
            own = [a for a in self._named if a.partition("/")[0] == namespace]
            if len(own) >= self.per_namespace:  # its share is used: it may only displace its own
                weakest = min(own, key=lambda a: self._counts.get(a, 0.0))
                if count > 2 * self._counts.get(weakest, 0.0) + self.PROMOTE_MARGIN:
                    self._named.discard(weakest)
                    self._named.add(adapter)
                    self._drop_series(weakest)
                    return adapter
                if len(self._counts) > self.max_tracked:
                    self._prune()
                return OTHER_ADAPTER_LABEL
            if len(self._named) < self.top_n:
                self._named.add(adapter)
                return adapter
            if self._named:
                weakest = min(self._named, key=lambda a: self._counts.get(a, 0.0))
                if count > 2 * self._counts.get(weakest, 0.0) + self.PROMOTE_MARGIN:
                    self._named.discard(weakest)
                    self._named.add(adapter)
                    self._drop_series(weakest)
                    return adapter
            if len(self._counts) > self.max_tracked:
                self._prune()
            return OTHER_ADAPTER_LABEL

    def _drop_series(self, label: str) -> None:
        for metric in self.series:
            try:
                metric.remove(label)
            except KeyError:
                pass

    def _decay(self) -> None:
        self._counts = {a: c / 2 for a, c in self._counts.items() if c / 2 >= 0.5 or a in self._named}

    def _prune(self) -> None:
        """Forget the least-used unlabelled adapters (keeps memory bounded)."""
        unnamed = sorted((c, a) for a, c in self._counts.items() if a not in self._named)
        for _, adapter in unnamed[: len(unnamed) // 2 + 1]:
            del self._counts[adapter]


# One tenant may hold at most a quarter of the labelled slots (5 of 20).
ADAPTER_LABELS_PER_NAMESPACE = max(1, ADAPTER_LABEL_TOP_N // 4)
ADAPTER_LABELS = AdapterLabels(
    series=(ADAPTER_REQUESTS, ADAPTER_LATENCY, UNCERTAINTY_ROWS, ABSTAINED_ROWS),
    per_namespace=ADAPTER_LABELS_PER_NAMESPACE,
)


# ---------------------------------------------------------------- feedback (API process)
FEEDBACK_SUBMITTED = Counter(
    "tuneserve_feedback_total",
    "SubmitFeedback calls stored (new or replacing), by adapter (top-N, rest as other)",
    ["adapter"],
)
FEEDBACK_ACCURACY = Gauge(
    "tuneserve_feedback_accuracy",
    "Live accuracy of an adapter version from feedback (correct / answered predictions), as the "
    "store held it at the last feedback this process took; one version per labelled adapter "
    "(the last one given feedback), none for other",
    ["adapter", "version"],
)
FEEDBACK_ANSWERED = Gauge(
    "tuneserve_feedback_answered",
    "Classification predictions of that adapter version answered with a label or correct",
    ["adapter", "version"],
)
PREDICTION_LOG_PENDING = Gauge(
    "tuneserve_prediction_log_pending_rows", "Served rows (prediction ids) waiting to be written"
)
PREDICTION_LOG_WRITTEN = Counter(
    "tuneserve_prediction_log_written_total", "Served rows written to the predictions table"
)
PREDICTION_LOG_DROPPED = Counter(
    "tuneserve_prediction_log_dropped_total",
    "Served rows whose id was issued but never stored (the pending queue was full or a write "
    "failed); feedback on them is NOT_FOUND",
)
# Bounded like the predict path's labels, in a table of its own (feedback traffic, not predict
# traffic, decides which adapters keep a label here).
FEEDBACK_LABELS = AdapterLabels(series=(FEEDBACK_SUBMITTED,), per_namespace=ADAPTER_LABELS_PER_NAMESPACE)


class FeedbackGauges:
    """FEEDBACK_ACCURACY / FEEDBACK_ANSWERED with at most one version per labelled adapter:
    setting a version removes the adapter's previous one, and adapters that lost their label
    in FEEDBACK_LABELS lose their series. `other` gets none (an accuracy mixed over unrelated
    adapters means nothing). At most top_n + 1 series each."""

    def __init__(self, labels: AdapterLabels = FEEDBACK_LABELS) -> None:
        self.labels = labels
        self._version: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, label: str, version: int, answered: int, accuracy: float) -> None:
        if label in (OTHER_ADAPTER_LABEL, BASE_ADAPTER_LABEL):
            return
        named = self.labels.named
        with self._lock:
            for old_label, old_version in list(self._version.items()):
                if old_label not in named or (old_label == label and old_version != str(version)):
                    self._remove(old_label, old_version)
            if label not in named:
                return
            self._version[label] = str(version)
            FEEDBACK_ACCURACY.labels(label, str(version)).set(accuracy)
            FEEDBACK_ANSWERED.labels(label, str(version)).set(answered)

    def _remove(self, label: str, version: str) -> None:
        for gauge in (FEEDBACK_ACCURACY, FEEDBACK_ANSWERED):
            try:
                gauge.remove(label, version)
            except KeyError:
                pass
        self._version.pop(label, None)


FEEDBACK_GAUGES = FeedbackGauges()


# ---------------------------------------------------------------- HTTP endpoint
def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Expose /metrics over HTTP on its own port in a daemon thread (0: do not serve).
    Returns the bound port, 0 when off. Raises OSError when the port cannot be bound."""
    if port <= 0:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
