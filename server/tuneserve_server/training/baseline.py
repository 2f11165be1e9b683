"""The cheap reference every classification job is measured against (issue #17): multinomial
logistic regression on the FROZEN base model's mean-pooled embeddings, fitted on the job's
training rows and scored on its validation split. When the adapter does not beat it by a margin,
fine-tuning did not pay on this data, and the job says so.

The model is scikit-learn's `make_pipeline(StandardScaler(), LogisticRegression(C=1.0))` (lbfgs,
L2, intercept not penalised), written in torch so the server needs no scikit-learn: features
standardised with the training mean and (population) standard deviation, then the mean
cross-entropy plus ||W||^2 / (2 C n) minimised with L-BFGS. The unit tests compare its
predictions and probabilities with scikit-learn's, both converged, on the same features.

A job fits to a gradient max-norm of TOLERANCE = 1e-5 (scikit-learn's own default is `tol=1e-4`).
Frozen-embedding features are nearly separable and badly conditioned: on 1771 Banking77 rows of
MiniLM embeddings L-BFGS reaches 1e-5 in ~95 evaluations (0.5 s here) and needs more than 500
for 1e-9 (2.7 s; scikit-learn's lbfgs at tol=1e-10 took 614 iterations), while the held-out
predictions of the two fits agree on 99.8% of rows and their accuracy is the same. The baseline is
a reference the adapter must beat by MARGIN macro-F1, so that precision is plenty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_BASELINE_ROWS = 4096  # training rows embedded for the baseline (a sample when there are more)
MARGIN = 0.01  # the adapter should beat the baseline's macro-F1 by this much
TOLERANCE = 1e-5  # a job's fit stops at this gradient max-norm (see above)


@dataclass(frozen=True)
class LogisticBaseline:
    mean: torch.Tensor  # (d,)
    scale: torch.Tensor  # (d,)
    weight: torch.Tensor  # (K, d)
    bias: torch.Tensor  # (K,)

    @classmethod
    def fit(
        cls,
        x: torch.Tensor,
        y: torch.Tensor,
        num_labels: int,
        c: float = 1.0,
        max_iter: int = 500,
        tol: float = TOLERANCE,
    ) -> LogisticBaseline:
        x = x.to(torch.float64)
        mean = x.mean(0)
        scale = x.std(0, unbiased=False)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # as StandardScaler
        z = (x - mean) / scale
        n, d = z.shape
        weight = torch.zeros(num_labels, d, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_labels, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=tol,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        penalty = 1.0 / (2.0 * c * n)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, y) + penalty * (weight * weight).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        return cls(mean, scale, weight.detach(), bias.detach())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float64) - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)


def verdict(adapter_macro_f1: float, baseline_macro_f1: float, margin: float = MARGIN) -> str | None:
    """The job's WARNING when the adapter does not beat the baseline by `margin`; None when it does."""
    if adapter_macro_f1 >= baseline_macro_f1 + margin:
        return None
    return (
        f"the adapter's validation macro-F1 {adapter_macro_f1:.4f} does not beat a logistic regression "
        f"on the frozen base model's embeddings ({baseline_macro_f1:.4f}) by {margin:g}: fine-tuning "
        "did not pay on this data as trained (more examples or steps may help, or the baseline may do)"
    )
