"""The metrics of an evaluation and the paired tests that compare two versions on the same
rows. Pure functions over plain lists / numpy arrays (no torch, no scikit-learn): the unit
tests hold them equal to scikit-learn, scipy and statsmodels on the same predictions.

Definitions (each the reference library's default):

* per-label precision / recall / F1 / support and the confusion matrix are over the labels
  that occur in the gold labels or the predictions, sorted; a label never predicted has
  precision 0 (scikit-learn's zero_division=0);
* macro-F1 is the unweighted mean of those per-label F1 scores (f1_score(average="macro"));
* ECE: top-label confidence in `bins` equal-width bins (k/bins, (k+1)/bins], the row-weighted
  mean of |accuracy - mean confidence| per bin; the bins are the reliability diagram;
* NLL: the mean of -log p(gold label), over rows whose gold label the model can predict at all
  (a version trained without that label has no probability for it; those rows are counted
  as `rows_with_unseen_label` and are wrong for accuracy);
* McNemar: b = rows only A got right, c = rows only B got right; with b + c < 25 the exact
  two-sided binomial test (p = min(1, 2 P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)), else the
  chi-square statistic with continuity correction (|b - c| - 1)^2 / (b + c) on 1 degree of
  freedom (statsmodels' mcnemar(exact=True) and mcnemar(exact=False, correction=True));
* paired bootstrap: `resamples` draws of n row indices with replacement from
  numpy.random.default_rng(seed) (rng.integers(0, n, (resamples, n)), what
  scipy.stats.bootstrap(paired=True) draws), the difference B - A of the metric on each; the
  percentile interval and a two-sided p-value 2 * min(P[d <= 0], P[d >= 0]) (capped at 1)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15
# Below this many discordant rows McNemar's chi-square approximation is poor: exact binomial.
MCNEMAR_EXACT_BELOW = 25
DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 10_000
DEFAULT_SEED = 0
# Index draws per chunk of resamples (rows x resamples), so memory stays bounded.
_DRAW_CELLS = 4_000_000
_EPS = 1e-12


# ---------------------------------------------------------------- classification
def label_set(y_true: Sequence[str], y_pred: Sequence[str]) -> list[str]:
    return sorted(set(y_true) | set(y_pred))


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """matrix[i][j]: rows whose gold label is labels[i] and prediction labels[j]."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[t]][index[p]] += 1
    return matrix


def per_label_scores(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[dict]:
    """[{label, precision, recall, f1, support}] in `labels` order."""
    matrix = confusion_matrix(y_true, y_pred, labels)
    out = []
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (support + predicted) if support + predicted else 0.0
        out.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return out


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    scores = per_label_scores(y_true, y_pred, label_set(y_true, y_pred))
    return sum(s["f1"] for s in scores) / len(scores) if scores else 0.0


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram: per equal-width bin (lower, upper], its row count, accuracy and
    mean confidence (0 for an empty bin)."""
    counts = [0] * bins
    hits = [0] * bins
    conf_sum = [0.0] * bins
    for c, ok in zip(confidence, correct, strict=True):
        k = min(max(math.ceil(c * bins) - 1, 0), bins - 1)
        counts[k] += 1
        hits[k] += int(ok)
        conf_sum[k] += c
    return [
        {
            "lower": k / bins,
            "upper": (k + 1) / bins,
            "count": counts[k],
            "accuracy": hits[k] / counts[k] if counts[k] else 0.0,
            "confidence": conf_sum[k] / counts[k] if counts[k] else 0.0,
        }
        for k in range(bins)
    ]


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    n = len(confidence)
    if not n:
        return 0.0
    return (
        sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(confidence, correct, bins))
        / n
    )


def nll(p_true: Sequence[float]) -> float:
    """Mean -log p of the gold labels (clipped away from 0 as scikit-learn's log_loss does)."""
    if not p_true:
        return 0.0
    return float(np.mean(-np.log(np.clip(np.asarray(p_true, dtype=np.float64), _EPS, 1.0))))


@dataclass(frozen=True)
class ClassificationRows:
    """One version's outcome on every row, in row order. `p_true` is None for a row whose gold
    label the version does not have."""

    y_true: tuple[str, ...]
    y_pred: tuple[str, ...]
    confidence: tuple[float, ...]  # the top label's probability
    p_true: tuple[float | None, ...]

    @property
    def correct(self) -> list[bool]:
        return [t == p for t, p in zip(self.y_true, self.y_pred, strict=True)]

    def row_nll(self) -> np.ndarray:
        """-log p(gold) per row; NaN where the gold label is unseen."""
        return np.array(
            [math.nan if p is None else -math.log(min(max(p, _EPS), 1.0)) for p in self.p_true],
            dtype=np.float64,
        )


def classification_metrics(rows: ClassificationRows, bins: int = ECE_BINS) -> dict:
    """{"metrics", "per_label", "labels", "confusion", "reliability"} of one version."""
    labels = label_set(rows.y_true, rows.y_pred)
    per_label = per_label_scores(rows.y_true, rows.y_pred, labels)
    correct = rows.correct
    known = [p for p in rows.p_true if p is not None]
    metrics = {
        "rows": float(len(rows.y_true)),
        "accuracy": accuracy(rows.y_true, rows.y_pred),
        "macro_f1": sum(s["f1"] for s in per_label) / len(per_label) if per_label else 0.0,
        "ece": ece(rows.confidence, correct, bins),
        "nll": nll(known),
        "rows_with_unseen_label": float(len(rows.p_true) - len(known)),
    }
    return {
        "metrics": metrics,
        "per_label": per_label,
        "labels": labels,
        "confusion": confusion_matrix(rows.y_true, rows.y_pred, labels),
        "reliability": reliability(rows.confidence, correct, bins),
    }


# ---------------------------------------------------------------- paired tests
def _binomial_tail(k: int, n: int) -> float:
    """P[X <= k] for X ~ Bin(n, 1/2), exactly."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """McNemar's test of equal accuracy for paired outcomes (see the module docstring)."""
    b = sum(1 for a_ok, b_ok in zip(correct_a, correct_b, strict=True) if a_ok and not b_ok)
    c = sum(1 for a_ok, b_ok in zip(correct_a, correct_b, strict=True) if b_ok and not a_ok)
    n = b + c
    if n < MCNEMAR_EXACT_BELOW:
        statistic = float(min(b, c))
        p = 1.0 if n == 0 else min(1.0, 2 * _binomial_tail(min(b, c), n))
        method = "exact binomial"
    else:
        statistic = (abs(b - c) - 1) ** 2 / n
        p = math.erfc(math.sqrt(statistic / 2))  # chi-square sf, 1 degree of freedom
        method = "chi-square with continuity correction"
    return {
        "only_a_correct": b,
        "only_b_correct": c,
        "statistic": statistic,
        "p_value": p,
        "method": method,
    }


@dataclass(frozen=True)
class BootstrapResult:
    metric: str
    a: float
    b: float
    difference: float  # b - a on all rows
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    resamples: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


# A statistic of a paired bootstrap: row indices (resamples, n) -> values (resamples,).
Statistic = Callable[[np.ndarray], np.ndarray]


def resample_indices(n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """The index draws, as chunks of whole resamples. One chunk (what scipy.stats.bootstrap draws
    with the same generator) whenever resamples * n fits _DRAW_CELLS."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _DRAW_CELLS // max(n, 1))
    out = []
    done = 0
    while done < resamples:
        k = min(per_chunk, resamples - done)
        out.append(rng.integers(0, n, (k, n)))
        done += k
    return out


def paired_bootstrap(
    metric: str,
    stat_a: Statistic,
    stat_b: Statistic,
    n: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> BootstrapResult:
    """The paired bootstrap of stat_b - stat_a over n rows (see the module docstring)."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be in 1..{MAX_RESAMPLES}")
    everything = np.arange(n)[None, :]
    a, b = float(stat_a(everything)[0]), float(stat_b(everything)[0])
    diffs = np.concatenate([stat_b(idx) - stat_a(idx) for idx in resample_indices(n, resamples, seed)])
    alpha = (1 - confidence) / 2
    low, high = np.percentile(diffs, [100 * alpha, 100 * (1 - alpha)])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return BootstrapResult(metric, a, b, b - a, float(low), float(high), confidence, p, resamples, seed)


def macro_f1_statistic(y_true: Sequence[str], y_pred: Sequence[str]) -> Statistic:
    """Macro-F1 on each resample (over the labels present in that resample's gold labels or
    predictions, as macro_f1 on those rows would compute it), vectorised with bincount."""
    labels = label_set(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    g = np.array([index[t] for t in y_true], dtype=np.int64)
    p = np.array([index[t] for t in y_pred], dtype=np.int64)
    k = len(labels)

    def stat(idx: np.ndarray) -> np.ndarray:
        r = idx.shape[0]
        offsets = (np.arange(r, dtype=np.int64) * k)[:, None]
        gi, pi = g[idx] + offsets, p[idx] + offsets
        hit = g[idx] == p[idx]
        tp = np.bincount(gi[hit], minlength=r * k).reshape(r, k)
        fn = np.bincount(gi[~hit], minlength=r * k).reshape(r, k)
        fp = np.bincount(pi[~hit], minlength=r * k).reshape(r, k)
        denom = 2 * tp + fp + fn
        present = denom > 0
        f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
        return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    return stat


def accuracy_statistic(correct: Sequence[bool]) -> Statistic:
    hits = np.asarray(correct, dtype=np.float64)
    return lambda idx: hits[idx].mean(axis=1)


def ratio_statistic(numerator: Sequence[float], denominator: Sequence[float]) -> Statistic:
    """sum(numerator) / sum(denominator) on each resample: a token-weighted mean loss (with
    denominator = tokens per row) or a plain mean (denominator = 1)."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    return lambda idx: num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), _EPS)
