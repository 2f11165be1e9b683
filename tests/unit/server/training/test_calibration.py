"""Temperature scaling and expected calibration error on known cases, and the best-metric
bookkeeping behind best-checkpoint selection and early stopping."""

from __future__ import annotations

import math

import pytest
import torch

from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.training.calibration import (
    calibration_report,
    ece,
    fit_temperature,
    nll,
)
from tuneserve_server.training.evaluation import BestTracker, resolve_metric


def sampled(true_logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels drawn from softmax(true_logits): the logits are calibrated for them by design."""
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(true_logits, -1), 1, generator=gen).squeeze(1)


def random_logits(n: int, classes: int, scale: float = 2.0, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=gen, dtype=torch.float64) * scale


def test_a_calibrated_set_has_about_zero_ece_and_temperature_one():
    logits = random_logits(40_000, 5)
    labels = sampled(logits)
    assert ece(logits, labels) < 0.01
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("scale", [0.4, 3.0])
def test_scaled_logits_give_the_scale_back_as_temperature(scale):
    logits = random_logits(40_000, 5)
    labels = sampled(logits)
    report = calibration_report(logits * scale, labels, fit=True)
    assert report["temperature"] == pytest.approx(scale, rel=0.05)
    assert report["ece_before"] > 0.05  # over- (3x) or under-confident (0.4x)
    assert report["ece_after"] < 0.01
    assert report["nll_after"] < report["nll_before"]


def test_ece_by_hand():
    # Row 1: confidence 0.9, correct (bin (0.867, 0.933]: gap 0.1).
    # Row 2: confidence 0.6, wrong (bin (0.533, 0.6]: gap 0.6). ECE = (0.1 + 0.6) / 2.
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=torch.float64))
    labels = torch.tensor([0, 0])
    assert ece(logits, labels) == pytest.approx(0.35)
    assert nll(logits, labels) == pytest.approx((-math.log(0.9) - math.log(0.4)) / 2)


def test_the_fit_never_makes_nll_worse_and_stays_in_bounds():
    # Every prediction wrong: the best temperature is as high as allowed (uniform-ish).
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]] * 20)
    labels = torch.tensor([1, 0] * 20)
    t = fit_temperature(logits, labels)
    assert 1.0 < t <= 20.0
    assert nll(logits, labels, t) < nll(logits, labels)
    report = calibration_report(logits, labels, fit=False)
    assert report["temperature"] == 1.0 and report["ece_after"] == report["ece_before"]


def test_tracker_maximises_scores_and_minimises_loss():
    assert resolve_metric("", TaskType.CLASSIFICATION) == "macro_f1"
    assert resolve_metric("", TaskType.CAUSAL_LM) == "eval_loss"
    f1 = BestTracker("macro_f1")
    assert f1.update({"macro_f1": 0.5}, 10, 1)
    assert not f1.update({"macro_f1": 0.5}, 20, 1)  # a tie is no improvement: keep the earlier
    assert f1.update({"macro_f1": 0.7}, 30, 2)
    assert (f1.best_step, f1.best_epoch, f1.best_value) == (30, 2, 0.7)
    loss = BestTracker("eval_loss")
    loss.update({"eval_loss": 1.0}, 1, 1)
    assert loss.update({"eval_loss": 0.8}, 2, 1)
    assert not loss.update({"eval_loss": 0.9}, 3, 1)
    assert loss.best_step == 2


def test_tracker_stops_after_patience_evaluations_without_improvement():
    t = BestTracker("accuracy", patience=2)
    for step, value in enumerate([0.5, 0.6, 0.6, 0.7, 0.65], start=1):
        t.update({"accuracy": value}, step, 1)
        assert not t.should_stop
    t.update({"accuracy": 0.69}, 6, 1)
    assert t.should_stop and t.best_step == 4
    assert BestTracker.from_dict(t.to_dict()) == t
    never = BestTracker("accuracy", patience=0)
    for step in range(1, 20):
        never.update({"accuracy": 0.1}, step, 1)
    assert not never.should_stop
