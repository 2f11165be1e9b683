"""training/baseline.py: the logistic-regression baseline equals scikit-learn's
StandardScaler + LogisticRegression (lbfgs, C=1) on the same features when both are converged,
and predicts what it predicts at a job's tolerance; the verdict's margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tuneserve_server.training.baseline import MARGIN, LogisticBaseline, verdict


def _blobs(seed: int, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (k, d))
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(0, 1.5, (n, d))
    x[:, 0] *= 40  # unequal scales: the standardisation matters
    return x, y


@pytest.mark.parametrize(("n", "d", "k", "seed"), [(200, 8, 3, 0), (500, 32, 5, 1), (300, 64, 10, 2)])
def test_predictions_and_probabilities_equal_sklearn(n, d, k, seed):
    x, y = _blobs(seed, n + 300, d, k)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, tol=1e-10))
    reference.fit(x[:n], y[:n])
    ours = LogisticBaseline.fit(torch.from_numpy(x[:n]), torch.from_numpy(y[:n]), k, tol=1e-9)
    probs = torch.softmax(ours.logits(torch.from_numpy(x[n:])), -1).numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(x[n:]), atol=1e-4)
    np.testing.assert_array_equal(ours.predict(torch.from_numpy(x[n:])).numpy(), reference.predict(x[n:]))
    # A job's tolerance (TOLERANCE, 1e-5): the same predictions, probabilities close.
    job = LogisticBaseline.fit(torch.from_numpy(x[:n]), torch.from_numpy(y[:n]), k)
    np.testing.assert_array_equal(job.predict(torch.from_numpy(x[n:])).numpy(), reference.predict(x[n:]))
    job_probs = torch.softmax(job.logits(torch.from_numpy(x[n:])), -1).numpy()
    np.testing.assert_allclose(job_probs, reference.predict_proba(x[n:]), atol=5e-3)


def test_a_label_missing_from_training_gets_no_predictions_and_constant_features_are_harmless():
    x, y = _blobs(3, 300, 6, 3)
    x[:, 2] = 7.0  # zero variance: scaled by 1, as StandardScaler does
    ours = LogisticBaseline.fit(torch.from_numpy(x), torch.from_numpy(y), 4)  # label 3 never seen
    predicted = ours.predict(torch.from_numpy(x))
    assert 3 not in predicted.tolist() and torch.isfinite(ours.weight).all()
    assert (predicted.numpy() == y).mean() > 0.8


def test_the_verdict_warns_below_the_margin_only():
    assert verdict(0.90, 0.80) is None
    assert verdict(0.80 + MARGIN, 0.80) is None
    message = verdict(0.805, 0.80)
    assert message is not None and "0.8050" in message and "0.8000" in message
    assert verdict(0.70, 0.80) is not None
