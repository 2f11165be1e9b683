"""The feedback gauges stay bounded: one version per labelled adapter (a new version
replaces the old series), none for `other`, and an adapter that lost its label loses its
series."""

from __future__ import annotations

from tuneserve_server.observability.metrics import (
    FEEDBACK_ACCURACY,
    REGISTRY,
    AdapterLabels,
    FeedbackGauges,
)


def _series() -> set[tuple[str, str]]:
    return {
        (s.labels["adapter"], s.labels["version"])
        for metric in REGISTRY.collect()
        if metric.name == "tuneserve_feedback_accuracy"
        for s in metric.samples
    }


def test_one_version_per_adapter_and_none_for_other():
    labels = AdapterLabels(top_n=2, per_namespace=2)
    gauges = FeedbackGauges(labels)
    a, b, c = (labels.label(f"t/{n}") for n in ("a", "b", "c"))
    assert c == "other"
    gauges.set(a, 1, 4, 0.5)
    gauges.set(a, 2, 2, 1.0)  # the newer version replaces version 1's series
    gauges.set(b, 1, 1, 0.0)
    gauges.set(c, 1, 9, 0.9)  # other: no series
    assert {("t/a", "2"), ("t/b", "1")} <= _series()
    assert ("t/a", "1") not in _series() and not any(ad == "other" for ad, _ in _series())
    assert FEEDBACK_ACCURACY.labels("t/a", "2")._value.get() == 1.0
    # t/c's traffic grows past the weakest: it takes a label, the demoted one loses its series
    for _ in range(40):
        labels.label("t/c")
    gauges.set("t/c", 3, 1, 1.0)
    named = labels.named
    assert "t/c" in named
    gone = {"t/a", "t/b"} - named
    assert gone and not any(ad in gone for ad, _ in _series())
    for label in named:
        gauges._remove(label, gauges._version.get(label, ""))
