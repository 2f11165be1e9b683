"""Temperature scaling for classifiers: one scalar T fitted on held-out logits so that
softmax(logits / T) is calibrated, and the expected calibration error that shows it.

NLL as a function of 1/T is convex (log-sum-exp of a linear function minus a linear one),
so it is unimodal in log T too: a bounded golden-section search finds the minimum without
gradients, learning rates or surprises."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15
# Fitting one scalar on fewer held-out rows than this says more about the rows than the model.
MIN_ROWS = 20
T_MIN, T_MAX = 0.05, 20.0


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Expected calibration error: top-label confidence in `bins` equal-width bins, the
    row-weighted mean of |accuracy - mean confidence| per bin."""
    if logits.shape[0] == 0:
        return 0.0
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    # Bin k holds confidences in (k/bins, (k+1)/bins]; a confidence of exactly 0 cannot occur.
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1).long()
    total = 0.0
    for k in range(bins):
        members = index == k
        count = int(members.sum())
        if count:
            gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
            total += count * gap
    return total / logits.shape[0]


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    if logits.shape[0] == 0:
        return 0.0
    return float(F.cross_entropy(logits.double() / temperature, labels, reduction="mean"))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, tolerance: float = 1e-4) -> float:
    """The T in [T_MIN, T_MAX] that minimises nll(logits, labels, T)."""
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    best = (lo + hi) / 2
    # Never return something worse than leaving the logits alone.
    return math.exp(best) if f(best) <= f(0.0) else 1.0


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, fit: bool) -> dict[str, float]:
    """ece/nll before and after, and the temperature (1 when not fitted)."""
    temperature = fit_temperature(logits, labels) if fit else 1.0
    return {
        "temperature": temperature,
        "ece_before": ece(logits, labels),
        "ece_after": ece(logits, labels, temperature),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
    }
