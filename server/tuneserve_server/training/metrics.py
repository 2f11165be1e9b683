"""Evaluation metrics for classification, without a scikit-learn dependency."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    if not y_true:
        return 0.0
    return sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-label F1 over labels present in y_true or y_pred."""
    tp = [0] * num_labels
    fp = [0] * num_labels
    fn = [0] * num_labels
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    scores = []
    for k in range(num_labels):
        if tp[k] + fp[k] + fn[k] == 0:
            continue
        scores.append(2 * tp[k] / (2 * tp[k] + fp[k] + fn[k]))
    return sum(scores) / len(scores) if scores else 0.0
