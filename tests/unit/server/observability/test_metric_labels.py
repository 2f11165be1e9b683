"""Per-adapter metric labels stay bounded whatever tenants do (issue #12): a tenant that calls
thousands of adapters, or churns hot ones, cannot grow the exported series past top_n + 2 or
take every labelled slot from the other tenants; and /metrics binds to localhost unless a
deployment says otherwise."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tuneserve_server.config import Settings
from tuneserve_server.observability.metrics import (
    ADAPTER_LABEL_TOP_N,
    ADAPTER_LABELS,
    ADAPTER_LABELS_PER_NAMESPACE,
    AdapterLabels,
)


def exported(metric) -> set[str]:
    return {s.labels["adapter"] for family in metric.collect() for s in family.samples}


def record(labels: AdapterLabels, counter: Counter, latency: Histogram, adapter: str) -> str:
    label = labels.label(adapter)
    counter.labels(label).inc()
    latency.labels(label).observe(0.01)
    return label


def test_a_flooding_tenant_cannot_grow_the_series_or_take_every_slot() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_adapter_requests_total", "t", ["adapter"], registry=registry)
    latency = Histogram("t_adapter_seconds", "t", ["adapter"], registry=registry)
    labels = AdapterLabels(8, series=(counter, latency), per_namespace=2, max_tracked=100)

    for victim in ("teamb/intents", "teamc/intents"):  # light tenants, seen now and then
        record(labels, counter, latency, victim)
    # tenant A: 20,000 calls over 5,000 distinct adapters, with bursts that try to take slots
    for i in range(20_000):
        name = f"teama/a{i % 5000}" if i % 4 else f"teama/hot{(i // 400) % 50}"
        record(labels, counter, latency, name)
        if i % 1000 == 0:
            record(labels, counter, latency, "teamb/intents")
            record(labels, counter, latency, "teamc/intents")
        series = exported(counter)
        assert len(series) <= 8 + 1, len(series)  # top_n + other (no base here)
    named = labels.named
    assert sum(1 for a in named if a.startswith("teama/")) <= 2
    assert {"teamb/intents", "teamc/intents"} <= named  # still labelled under A's flood
    assert len(labels._counts) <= 101  # the traffic table is bounded too
    assert exported(counter) <= named | {"other"}
    # histograms: every series of a demoted adapter went with it
    assert {s.labels["adapter"] for f in latency.collect() for s in f.samples} <= named | {"other"}


def test_within_its_share_a_tenant_hot_adapter_displaces_its_own_weakest() -> None:
    counter = Counter("t_requests_total", "t", ["adapter"], registry=CollectorRegistry())
    labels = AdapterLabels(4, series=(counter,), per_namespace=2)
    for name in ("teama/x", "teama/y", "teamb/z"):
        counter.labels(labels.label(name)).inc()
    assert labels.label("teama/hot") == "other"  # A's share (2) is used
    results = [labels.label("teama/hot") for _ in range(30)]
    assert results[-1] == "teama/hot"
    assert "teamb/z" in labels.named  # B's slot was not the one taken
    assert len([a for a in labels.named if a.startswith("teama/")]) == 2
    demoted = ({"teama/x", "teama/y"} - labels.named).pop()
    assert demoted not in exported(counter)


def test_the_served_labels_have_a_per_tenant_share_and_metrics_bind_localhost() -> None:
    assert ADAPTER_LABELS.top_n == ADAPTER_LABEL_TOP_N
    assert ADAPTER_LABELS.per_namespace == ADAPTER_LABELS_PER_NAMESPACE < ADAPTER_LABEL_TOP_N
    assert Settings().metrics_host == "127.0.0.1"
