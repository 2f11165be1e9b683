"""Uncertainty for classification adapters: conformal prediction sets, abstention, out-of-domain flags.

Fitted once at the end of classification training (on the validation split, after temperature
scaling) and stored beside the adapter as `uncertainty.safetensors`; applied at Predict time to each
row's temperature-scaled softmax probabilities and its pooled sentence embedding. Pure tensor code
(float64 inside), no engine/training imports, so both sides can use it.

Conformal prediction sets (split conformal). The calibration rows' non-conformity scores are stored,
so any confidence level in (0, 1) is served at request time:

- LAC: score 1 - p_true; the set holds every label with 1 - p <= q.
- APS: the probability mass of the labels sorted by probability down to and including the true
  one, randomised as Romano et al. (2020) and MAPIE do: minus u * p_true, u uniform in [0, 1); the set
  holds every label whose own randomised score, with the row's u, is within q: the labels above the
  one that crosses q, and that one with probability (its mass past q) / p. The u of a row is a hash
  of its text (`text_uniforms`), not a random draw: the same text always gets the same set, and
  across texts u is uniform, which is all the guarantee needs. Versions fitted without u (and any
  calibration built without `aps_u`) use the deterministic score (u = 0) and always include the
  crossing label (MAPIE's `include_last_label=True`): valid but conservative; with a confident
  model it covers far more than asked (bench/uncertainty.py, docs/benchmarks.md).
- q is the k-th smallest calibration score, k = ceil((n + 1) * level): the finite-sample corrected
  quantile, which gives P(true label in set) >= level on exchangeable data. When k > n no finite
  quantile exists and asking for that level raises FailedPrecondition saying how many rows it needs.
- Mondrian (per-label) calibration uses each label's own rows, so rare labels get the coverage too.

The definitions are MAPIE 1.6's exactly (its `SplitConformalClassifier`, prefit, `"lac"`, and `"aps"`
with `include_last_label="randomized"` given the same u, or `True` with the calibration score not
randomised); the tests compare the sets row by row. As in MAPIE, LAC sets and randomised APS sets may
be EMPTY: no label is plausible enough at that level (the guarantee is about coverage, and an empty
set on an ambiguous row is the honest answer; callers can treat it as "abstain"). Deterministic APS
sets (crossing label included) are never empty.

Abstention: a threshold on the top probability, fitted on validation for a target precision (the
smallest threshold whose answered rows are at least that precise, with a minimum number answered;
if none reaches it the threshold is above every probability: always abstain) or a target coverage.

Out-of-domain: class-conditional Mahalanobis distance to the training embeddings' class means with a
shared Ledoit–Wolf-shrunk covariance (stable with few rows per class in 384 dimensions); the flag
threshold is the conformal (1 - fpr) quantile of the validation rows' scores, so an in-domain row is
flagged with probability <= fpr. The default variant was chosen with `bench/ood_choice.py`: base
MiniLM masked-mean embeddings (no adapter), fit on 3000 Banking77 train rows, threshold on 1000
others. AUROC, in-domain Banking77 test (3080 rows) vs
"far": examples/data/ood/general.txt (302 general questions, chit-chat, encyclopedic sentences),
"near": test rows of 19 intents held out of the fit (the other 58 intents' rows in-domain):

                                               far AUROC   near AUROC
    min class Mahalanobis (shared LW cov)        0.9995      0.802    <- default ("mahalanobis")
    relative Mahalanobis (min_c MD_c - MD_0)     0.9845      0.897    ("relative")
    global Mahalanobis (one Gaussian)            0.9995      0.741
    min cosine distance to class means           0.9999      0.876
    kNN cosine distance (k=1)                    0.9999      0.904

The default is picked on the far set, the question this flag answers (is this text about the
adapter's domain at all?): there plain min-Mahalanobis catches 100% of the general texts at a 5%
false-positive target (the in-domain test rows flagged: 5.0%) while the relative variant catches
95% and flags 6.9%. The relative variant is clearly better at unsupported intents of the same domain
(near), so it stays available as `ood_method="relative"`. A fine-tuned adapter's embeddings will
separate better than the base model's; this only picks the method.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest

UNCERTAINTY_FILE = "uncertainty.safetensors"
FORMAT_VERSION = 1
METADATA_KEY = "tuneserve_uncertainty"
# MAPIE's tolerance on set membership (mapie._machine_precision.EPSILON): sets are compared exactly.
EPSILON = 1e-8
# An abstention threshold no probability reaches (finite, so summaries stay valid JSON).
ABOVE_EVERY_PROBABILITY = math.nextafter(1.0, 2.0)
SUMMARY_LEVELS = (0.8, 0.9, 0.95)
SELECTIVE_COVERAGES = (0.5, 0.8, 0.9, 1.0)
MAX_COVARIANCE_ROWS = 8192

Score = Literal["lac", "aps"]
Mode = Literal["auto", "marginal", "mondrian"]
OodMethod = Literal["relative", "mahalanobis"]
DEFAULT_OOD_METHOD: OodMethod = "mahalanobis"  # see the module docstring


# ---------------------------------------------------------------- conformal quantile
def check_level(level: float, field_name: str = "confidence_level") -> float:
    level = float(level)
    if not (math.isfinite(level) and 0.0 < level < 1.0):
        raise InvalidRequest.field(field_name, f"must be strictly between 0 and 1, got {level}")
    return level


def order_index(n: int, level: float) -> int:
    """k = ceil((n + 1) * level), computed as MAPIE does (alpha = 1 - level in decimal) so the
    two agree to the row: no float noise like 0.1 * 3 = 0.30000000000000004 leaks into k."""
    alpha = float(Decimal("1") - Decimal(str(level)))
    return math.ceil((n + 1) * (1 - alpha))


def rows_needed(level: float) -> int:
    """The fewest calibration rows for which `level` has a finite conformal quantile (k <= n)."""
    level = check_level(level)
    n = max(1, math.floor(level / (1.0 - level)) - 2)
    while order_index(n, level) > n:
        n += 1
    return n


def max_supported_level(n: int) -> float:
    """The highest level n calibration rows support: n / (n + 1) (0 when there are none)."""
    if n <= 0:
        return 0.0
    level = n / (n + 1)
    while order_index(n, level) > n:
        level = math.nextafter(level, 0.0)
    return level


def conformal_quantile(scores: torch.Tensor, level: float, what: str = "the validation split") -> float:
    """The k-th smallest score (k = ceil((n + 1) * level)); FailedPrecondition when k > n, rather than
    a quantile that would silently not give the promised coverage."""
    level = check_level(level)
    n = int(scores.numel())
    k = order_index(n, level)
    if k > n:
        raise FailedPrecondition(
            f"confidence level {level} needs at least {rows_needed(level)} calibration rows; {what} has {n}"
        )
    return float(torch.sort(scores.reshape(-1).to(torch.float64)).values[k - 1])


def _loo_quantiles(scores: torch.Tensor, level: float) -> torch.Tensor | None:
    """For each row i, the conformal quantile of the other n - 1 scores (None if n - 1 rows do not
    support `level`): removing a row at sorted position r shifts the k-th smallest by one iff r < k."""
    n = int(scores.numel())
    if n < 2 or order_index(n - 1, level) > n - 1:
        return None
    k = order_index(n - 1, level)
    order = torch.argsort(scores, stable=True)
    ranked = scores[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    return torch.where(rank >= k, ranked[k - 1], ranked[min(k, n - 1)])


# ---------------------------------------------------------------- scores and sets
def _as_probs(probs: torch.Tensor) -> torch.Tensor:
    probs = torch.as_tensor(probs).to(torch.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (rows, labels), got shape {tuple(probs.shape)}")
    return probs


def _as_labels(labels: torch.Tensor, num_labels: int, rows: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    if labels.numel() != rows:
        raise ValueError(f"{labels.numel()} labels for {rows} rows")
    if rows and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels})")
    return labels


def lac_scores(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - p_true."""
    probs = _as_probs(probs)
    return 1.0 - probs.gather(1, labels.reshape(-1, 1)).squeeze(1)


def text_uniforms(texts: Sequence[str]) -> torch.Tensor:
    """One u in [0, 1) per text, a function of the text alone (BLAKE2b of its UTF-8 bytes): the APS
    randomisation, reproducible per input and uniform across inputs."""
    out = torch.empty(len(texts), dtype=torch.float64)
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"tuneserve-aps").digest()
        out[i] = (int.from_bytes(digest, "big") >> 11) * 2.0**-53  # 53 bits: exact in float64
    return out


def _mass_through(probs: torch.Tensor) -> torch.Tensor:
    """(n, K): for each label, the probability mass of every label at least as probable (itself and
    the labels tied with it included: the conservative reading of ties, independent of order)."""
    k = probs.shape[1]
    descending = torch.sort(probs, dim=1, descending=True, stable=True).values
    cumulative = torch.cumsum(descending, dim=1)
    ascending = torch.flip(descending, dims=[1]).contiguous()
    at_least = k - torch.searchsorted(ascending, probs.contiguous(), right=False)  # labels with p >= p_j
    return cumulative.gather(1, (at_least - 1).clamp(min=0))


def aps_scores(probs: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """Cumulative mass of the labels sorted by probability, down to and including the true label
    (labels tied with it count as above it: the conservative reading, and order-independent);
    with `u` (one per row) randomised: minus u * p_true."""
    probs = _as_probs(probs)
    ranked = torch.sort(probs, dim=1, descending=True, stable=True).values
    cumulative = torch.cumsum(ranked, dim=1)
    p_true = probs.gather(1, labels.reshape(-1, 1))
    last = (probs >= p_true).sum(1) - 1
    scores = cumulative.gather(1, last.reshape(-1, 1)).squeeze(1)
    if u is None:
        return scores
    return scores - _as_u(u, probs.shape[0]) * p_true.squeeze(1)


def _as_u(u: torch.Tensor, rows: int) -> torch.Tensor:
    u = torch.as_tensor(u, dtype=torch.float64).reshape(-1)
    if u.numel() != rows:
        raise ValueError(f"{u.numel()} APS uniforms for {rows} rows")
    return u


def lac_sets(probs: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """Labels whose score 1 - p is within the threshold (a scalar, per label (K,), or per row and
    label (n, K)). May be empty, as in MAPIE."""
    probs = _as_probs(probs)
    return ((1.0 - probs) - torch.as_tensor(thresholds, dtype=torch.float64)) <= EPSILON


def aps_sets(probs: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """Marginal APS sets, MAPIE's `include_last_label=True` construction: walk the labels by
    decreasing probability until the cumulative mass reaches the threshold (scalar or per row),
    keep every label at least as probable as the one that crossed it. Never empty."""
    probs = _as_probs(probs)
    n, k = probs.shape
    q = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1, 1).expand(n, 1)
    ranked = torch.sort(probs, dim=1, descending=True, stable=True).values
    cumulative = torch.cumsum(ranked, dim=1)
    reached = (cumulative - q) >= -EPSILON
    # First position whose mass reaches q; if rounding leaves none (mass 1 - 1e-16 < q), take all.
    position = torch.where(reached.any(1), reached.to(torch.int8).argmax(1), torch.full((n,), k - 1))
    p_last = ranked.gather(1, position.reshape(-1, 1))
    # MAPIE: a zero-probability last label becomes the smallest non-zero probability, so labels the
    # model gives no mass never enter the set just because the threshold is ~1.
    tiny = p_last <= EPSILON
    if bool(tiny.any()):
        smallest = torch.where(probs < EPSILON, torch.inf, probs).min(1, keepdim=True).values
        p_last = torch.where(tiny, smallest, p_last)
    return (probs - p_last) >= -EPSILON


def aps_sets_randomized(
    probs: torch.Tensor, thresholds: torch.Tensor | float, u: torch.Tensor
) -> torch.Tensor:
    """Randomised APS sets: label j is in when its own randomised score, mass through j - u * p_j
    with the row's u, is within the threshold (scalar, per label (K,) for Mondrian, or per row (n, 1)
    or per row and label (n, K)). The labels above the crossing one are always in; the crossing one
    is in when u >= (its mass - q) / p, as MAPIE's `include_last_label="randomized"`. May be empty."""
    probs = _as_probs(probs)
    n, k = probs.shape
    scores = _mass_through(probs) - _as_u(u, n).reshape(n, 1) * probs
    q = torch.as_tensor(thresholds, dtype=torch.float64)
    return (scores - q.expand(n, k) if q.dim() == 2 else scores - q) <= EPSILON


def aps_sets_mondrian(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per-label APS sets: label j is in when the mass strictly above it is below its own threshold
    q_j (per label (K,) or per row and label (n, K)), the per-label reading of "walk down until the
    mass reaches q, crossing label included": it covers j whenever j's score is within q_j."""
    probs = _as_probs(probs)
    n, k = probs.shape
    descending = torch.sort(probs, dim=1, descending=True, stable=True).values
    before = torch.cumsum(descending, dim=1) - descending  # mass strictly before each position
    ascending = torch.flip(descending, dims=[1]).contiguous()
    greater = k - torch.searchsorted(ascending, probs.contiguous(), right=True)  # labels above j
    mass_above = before.gather(1, greater.clamp(max=k - 1))
    q = torch.as_tensor(thresholds, dtype=torch.float64).expand(n, k)
    return (mass_above - q) < -EPSILON


def _sets(
    score: str, probs: torch.Tensor, thresholds: torch.Tensor, mondrian: bool, u: torch.Tensor | None = None
) -> torch.Tensor:
    if score == "lac":
        return lac_sets(probs, thresholds)
    if u is not None:
        return aps_sets_randomized(probs, thresholds, u)
    return aps_sets_mondrian(probs, thresholds) if mondrian else aps_sets(probs, thresholds)


@dataclass(frozen=True)
class PredictionSets:
    """`members[i, j]`: label j is in row i's set. `mode` is what was used ("marginal"/"mondrian");
    `thresholds` the quantile per label (all equal when marginal)."""

    members: torch.Tensor
    mode: str
    level: float
    score: str
    thresholds: torch.Tensor


@dataclass(frozen=True)
class ConformalCalibration:
    """The calibration (validation) rows' labels and both scores: enough for any level later.
    `aps_u`: the rows' APS uniforms when the APS score is randomised (then every request must
    bring its rows' u), None for the deterministic score."""

    num_labels: int
    labels: torch.Tensor  # (n,) int64
    lac: torch.Tensor  # (n,) float64
    aps: torch.Tensor  # (n,) float64
    label_names: tuple[str, ...] | None = None
    aps_u: torch.Tensor | None = None  # (n,) float64

    @classmethod
    def fit(
        cls,
        probs: torch.Tensor,
        labels: torch.Tensor,
        label_names: Sequence[str] | None = None,
        aps_u: torch.Tensor | None = None,
    ) -> ConformalCalibration:
        probs = _as_probs(probs)
        labels = _as_labels(labels, probs.shape[1], probs.shape[0])
        names = tuple(label_names) if label_names is not None else None
        if names is not None and len(names) != probs.shape[1]:
            raise ValueError(f"{len(names)} label names for {probs.shape[1]} labels")
        u = None if aps_u is None else _as_u(aps_u, probs.shape[0])
        aps = aps_scores(probs, labels, u)
        return cls(probs.shape[1], labels, lac_scores(probs, labels), aps, names, u)

    @property
    def aps_randomized(self) -> bool:
        return self.aps_u is not None

    @property
    def rows(self) -> int:
        return int(self.labels.numel())

    def label_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_labels)

    def _name(self, j: int) -> str:
        return repr(self.label_names[j]) if self.label_names else f"#{j}"

    def scores(self, score: str) -> torch.Tensor:
        if score not in ("lac", "aps"):
            raise InvalidRequest.field("conformal_score", f"must be 'lac' or 'aps', got {score!r}")
        return self.lac if score == "lac" else self.aps

    def thresholds(self, level: float, score: Score = "lac", mode: Mode = "auto") -> tuple[torch.Tensor, str]:
        """Per-label quantiles (K,) and the mode used. "auto": Mondrian when every label has the rows
        the level needs, else marginal; "mondrian" raises naming the labels that fall short."""
        level = check_level(level)
        scores = self.scores(score)
        if mode not in ("auto", "marginal", "mondrian"):
            raise InvalidRequest.field("conformal_mode", f"must be auto, marginal or mondrian, got {mode!r}")
        need = rows_needed(level)
        counts = self.label_counts()
        if mode == "mondrian" or (mode == "auto" and int(counts.min()) >= need):
            short = [j for j in range(self.num_labels) if int(counts[j]) < need]
            if short:
                listed = ", ".join(f"{self._name(j)} has {int(counts[j])}" for j in short[:5])
                more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
                raise FailedPrecondition(
                    f"per-label (mondrian) sets at confidence level {level} need at least {need} "
                    f"validation rows for every label; {listed}{more}"
                )
            q = torch.tensor(
                [conformal_quantile(scores[self.labels == j], level) for j in range(self.num_labels)],
                dtype=torch.float64,
            )
            return q, "mondrian"
        q = conformal_quantile(scores, level, what=f"this version's validation split ({self.rows} rows)")
        return torch.full((self.num_labels,), q, dtype=torch.float64), "marginal"

    def prediction_sets(
        self,
        probs: torch.Tensor,
        level: float,
        score: Score = "lac",
        mode: Mode = "auto",
        u: torch.Tensor | None = None,
    ) -> PredictionSets:
        """`u`: the rows' APS uniforms (`text_uniforms` of their texts); needed for APS sets when
        this calibration's APS score is randomised, ignored otherwise."""
        probs = _as_probs(probs)
        if probs.shape[1] != self.num_labels:
            raise ValueError(f"probabilities have {probs.shape[1]} labels, calibration {self.num_labels}")
        q, used = self.thresholds(level, score, mode)
        mondrian = used == "mondrian"
        members = _sets(score, probs, q if mondrian else q[:1], mondrian, self._row_u(score, u, probs))
        return PredictionSets(members, used, float(level), score, q)

    def _row_u(self, score: str, u: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor | None:
        if score != "aps" or not self.aps_randomized:
            return None
        if u is None:
            raise ValueError("this calibration's APS score is randomised: give each row's u (text_uniforms)")
        return _as_u(u, probs.shape[0])

    def loo_coverage(self, probs: torch.Tensor, level: float, score: Score) -> dict[str, float] | None:
        """Honest coverage of the sets `mode="auto"` would build, by leave-one-out over the calibration
        rows: row i is judged by sets calibrated on the other n - 1 rows (exactly what a new row with
        n - 1 calibration rows gets). Mondrian when every label keeps enough rows without its own
        row, else marginal; None if even marginal is unsupported."""
        probs = _as_probs(probs)
        scores = self.scores(score)
        counts = self.label_counts()
        need = rows_needed(level)
        n, k = probs.shape
        mondrian = int(counts.min()) - 1 >= need
        if mondrian:
            per_label, _ = self.thresholds(level, score, "mondrian")
            q = per_label.reshape(1, k).repeat(n, 1)
            for j in range(k):
                rows = torch.nonzero(self.labels == j).squeeze(1)
                loo = _loo_quantiles(scores[rows], level)
                assert loo is not None  # n_j - 1 >= need
                q[rows, j] = loo
        else:
            loo = _loo_quantiles(scores, level)
            if loo is None:
                return None
            q = loo.reshape(n, 1)
        members = _sets(score, probs, q, mondrian, self.aps_u if score == "aps" else None)
        covered = members[torch.arange(n), self.labels].to(torch.float64)
        present = [j for j in range(k) if int(counts[j]) > 0]
        per_label = torch.stack([covered[self.labels == j].mean() for j in present])
        return {
            "coverage": float(covered.mean()),
            "set_size": float(members.sum(1).to(torch.float64).mean()),
            "label_coverage_min": float(per_label.min()),
            "label_coverage_max": float(per_label.max()),
            "mondrian": 1.0 if mondrian else 0.0,
        }


# ---------------------------------------------------------------- abstention
def _confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _as_probs(probs)
    labels = _as_labels(labels, probs.shape[1], probs.shape[0])
    top, predicted = probs.max(1)
    return top, predicted == labels


def _rank_for_selection(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Most confident first; among equal confidences the wrong rows first (pessimistic, and
    independent of row order)."""
    by_correct = torch.argsort(correct.to(torch.int8), stable=True)
    return by_correct[torch.argsort(confidence[by_correct], descending=True, stable=True)]


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Selective accuracy when answering the most confident 50/80/90/100% of rows, and the AURC:
    the mean, over k = 1..n, of the error rate among the k most confident rows (lower is better)."""
    confidence, correct = _confidence_and_correct(probs, labels)
    n = int(confidence.numel())
    if n == 0:
        raise ValueError("risk_coverage needs at least one row")
    ordered = correct[_rank_for_selection(confidence, correct)].to(torch.float64)
    accuracy_at = torch.cumsum(ordered, 0) / torch.arange(1, n + 1, dtype=torch.float64)
    out = {}
    for c in SELECTIVE_COVERAGES:
        answered = max(1, math.ceil(c * n - 1e-9))
        out[f"selective_accuracy_{round(c * 100)}"] = float(accuracy_at[answered - 1])
    out["aurc"] = float((1.0 - accuracy_at).mean())
    return out


@dataclass(frozen=True)
class AbstentionPolicy:
    """Answer when the top probability >= threshold. `target` is "precision", "coverage" or "none";
    `reachable` is False when the precision target was out of reach (then nothing is answered)."""

    threshold: float
    target: str
    target_value: float
    reachable: bool
    min_answered: int

    @classmethod
    def fit(
        cls,
        probs: torch.Tensor,
        labels: torch.Tensor,
        target_precision: float | None = None,
        target_coverage: float | None = None,
        min_answered: int = 25,
    ) -> AbstentionPolicy:
        if target_precision is not None and target_coverage is not None:
            raise InvalidRequest.field("abstention", "give a target precision or a target coverage, not both")
        confidence, correct = _confidence_and_correct(probs, labels)
        n = int(confidence.numel())
        if target_precision is None and target_coverage is None:
            return cls(0.0, "none", 0.0, True, min_answered)
        ordered = _rank_for_selection(confidence, correct)
        conf = confidence[ordered]
        if target_coverage is not None:
            target_coverage = check_level(target_coverage, "target_coverage") if target_coverage < 1 else 1.0
            answered = max(1, math.ceil(target_coverage * n - 1e-9))
            return cls(float(conf[answered - 1]), "coverage", target_coverage, True, min_answered)
        assert target_precision is not None
        target_precision = check_level(target_precision, "target_precision")
        hits = torch.cumsum(correct[ordered].to(torch.float64), 0)
        answered = torch.arange(1, n + 1, dtype=torch.float64)
        # A threshold t answers every row with confidence >= t: only the last row of a tie group is a
        # possible cut.
        group_end = torch.ones(n, dtype=torch.bool)
        group_end[:-1] = conf[:-1] != conf[1:]
        ok = group_end & (answered >= min_answered) & (hits >= target_precision * answered - 1e-9)
        if not bool(ok.any()):
            return cls(ABOVE_EVERY_PROBABILITY, "precision", target_precision, False, min_answered)
        last = int(torch.nonzero(ok).max())  # most rows answered = smallest threshold
        return cls(float(conf[last]), "precision", target_precision, True, min_answered)

    def low_confidence(self, probs: torch.Tensor) -> torch.Tensor:
        return _as_probs(probs).max(1).values < self.threshold


@dataclass(frozen=True)
class Abstention:
    """Per row: abstain or answer, and why ("" when answering; otherwise "low_confidence",
    "out_of_domain", or both joined by a comma in that order)."""

    abstain: torch.Tensor
    reasons: list[str]


# ---------------------------------------------------------------- out of domain
def ledoit_wolf(x: torch.Tensor, assume_centered: bool = True) -> tuple[torch.Tensor, float]:
    """Ledoit–Wolf shrunk covariance (toward mu * I) and the shrinkage, as
    sklearn.covariance.LedoitWolf computes them (its formula, unblocked)."""
    x = x.to(torch.float64)
    if not assume_centered:
        x = x - x.mean(0)
    n, p = x.shape
    emp_cov = x.T @ x / n
    x2 = x * x
    emp_cov_trace = x2.sum(0) / n
    mu = float(emp_cov_trace.sum()) / p
    beta_ = float((x2.T @ x2).sum())
    delta_ = float((emp_cov * emp_cov).sum())  # sum((X^T X)^2) / n^2
    beta = 1.0 / (p * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * float(emp_cov_trace.sum()) + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.diagonal().add_(shrinkage * mu)
    return shrunk, shrinkage


def _precision(cov: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_inverse(torch.linalg.cholesky(cov))


def _squared_mahalanobis(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(n, C) squared distances, expanded so no (n, C, d) tensor is built."""
    x = x.to(torch.float64)
    means = means.to(torch.float64)
    precision = precision.to(torch.float64)
    xp = x @ precision
    mp = means @ precision
    return ((xp * x).sum(1, keepdim=True) - 2.0 * xp @ means.T + (mp * means).sum(1)).clamp(min=0.0)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(out-of-domain score > in-domain score), ties counting one half (Mann–Whitney U)."""
    a = torch.as_tensor(in_scores, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(out_scores, dtype=torch.float64).reshape(-1)
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auroc needs scores on both sides")
    both = torch.cat([a, b])
    _, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each distinct value's first row
    average_rank = first.to(torch.float64) + (counts.to(torch.float64) + 1.0) / 2.0
    rank_out = average_rank[inverse[a.numel() :]].sum()
    m = b.numel()
    u = float(rank_out) - m * (m + 1) / 2.0
    return u / (a.numel() * m)


@dataclass(frozen=True)
class MahalanobisOOD:
    """Class means of the training embeddings and the precision of their shared shrunk covariance
    (float32 when stored); `relative` adds the background Gaussian of all training rows and scores
    min_c MD_c - MD_0 (Ren et al. 2021). `flag`: score > threshold."""

    method: str
    means: torch.Tensor  # (C, d), the classes that have training rows
    precision: torch.Tensor  # (d, d)
    threshold: float  # inf: too few validation rows for the false-positive rate, never flags
    fpr: float
    train_rows: int
    background_mean: torch.Tensor | None = None
    background_precision: torch.Tensor | None = None

    @classmethod
    def fit(
        cls,
        train_embeddings: torch.Tensor,
        train_labels: torch.Tensor,
        validation_embeddings: torch.Tensor,
        method: OodMethod = DEFAULT_OOD_METHOD,
        fpr: float = 0.05,
        max_rows: int = MAX_COVARIANCE_ROWS,
    ) -> MahalanobisOOD:
        if method not in ("relative", "mahalanobis"):
            raise ValueError(f"unknown out-of-domain method {method!r}")
        fpr = check_level(fpr, "ood_fpr")
        x = torch.as_tensor(train_embeddings).to(torch.float64)
        y = torch.as_tensor(train_labels).to(torch.int64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.numel() or x.shape[0] < 2:
            raise ValueError("training embeddings must be (rows >= 2, dim) with one label per row")
        present = torch.unique(y)
        index = torch.searchsorted(present, y)
        means = torch.zeros(len(present), x.shape[1], dtype=torch.float64).index_add_(0, index, x)
        means /= torch.bincount(index, minlength=len(present)).to(torch.float64).unsqueeze(1)
        # Means from every row (cheap); the covariance from a deterministic subsample, which bounds
        # the fit's time and is plenty for d = 384.
        if x.shape[0] > max_rows:
            keep = torch.sort(
                torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_rows]
            ).values
            x, index = x[keep], index[keep]
        cov, _ = ledoit_wolf(x - means[index])
        detector = cls(
            method, means.to(torch.float32), _precision(cov).to(torch.float32), math.inf, fpr, int(x.shape[0])
        )
        if method == "relative":
            background_mean = x.mean(0)
            background_cov, _ = ledoit_wolf(x - background_mean)
            detector = replace(
                detector,
                background_mean=background_mean.to(torch.float32),
                background_precision=_precision(background_cov).to(torch.float32),
            )
        val_scores = detector.scores(validation_embeddings)
        if order_index(val_scores.numel(), 1.0 - fpr) > val_scores.numel():
            return detector  # too few validation rows to promise the rate: never flags
        return replace(detector, threshold=conformal_quantile(val_scores, 1.0 - fpr))

    @property
    def enabled(self) -> bool:
        return math.isfinite(self.threshold)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(embeddings).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise ValueError(f"embeddings must be (rows, {self.means.shape[1]}), got {tuple(x.shape)}")
        score = _squared_mahalanobis(x, self.means, self.precision).min(1).values
        if self.background_mean is not None and self.background_precision is not None:
            score = (
                score - _squared_mahalanobis(x, self.background_mean[None], self.background_precision)[:, 0]
            )
        return score

    def flags(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scores(embeddings) > self.threshold


# ---------------------------------------------------------------- the stored container
@dataclass(frozen=True)
class UncertaintyModel:
    """Everything fitted for one adapter version; `metrics` is the summary computed at fit time (it
    needs the validation probabilities, which are not stored)."""

    calibration: ConformalCalibration
    abstention: AbstentionPolicy
    ood_detector: MahalanobisOOD | None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        validation_probs: torch.Tensor,
        validation_labels: torch.Tensor,
        validation_embeddings: torch.Tensor | None = None,
        train_embeddings: torch.Tensor | None = None,
        train_labels: torch.Tensor | None = None,
        *,
        target_precision: float | None = None,
        target_coverage: float | None = None,
        min_answered: int = 25,
        ood_fpr: float = 0.05,
        ood_method: OodMethod = DEFAULT_OOD_METHOD,
        label_names: Sequence[str] | None = None,
        max_covariance_rows: int = MAX_COVARIANCE_ROWS,
        aps_u: torch.Tensor | None = None,
    ) -> UncertaintyModel:
        """`aps_u`: the validation rows' APS uniforms (`text_uniforms` of their texts) for the
        randomised APS score; None: deterministic APS."""
        probs = _as_probs(validation_probs)
        calibration = ConformalCalibration.fit(probs, validation_labels, label_names, aps_u)
        abstention = AbstentionPolicy.fit(
            probs, calibration.labels, target_precision, target_coverage, min_answered
        )
        given = [t is not None for t in (validation_embeddings, train_embeddings, train_labels)]
        if any(given) and not all(given):
            raise ValueError("out-of-domain needs validation embeddings, training embeddings and labels")
        detector = None
        if all(given):
            assert validation_embeddings is not None and train_embeddings is not None
            assert train_labels is not None
            if len(validation_embeddings) != probs.shape[0]:
                raise ValueError("one validation embedding per validation row")
            detector = MahalanobisOOD.fit(
                train_embeddings,
                train_labels,
                validation_embeddings,
                ood_method,
                ood_fpr,
                max_covariance_rows,
            )
        metrics = _summarise(calibration, abstention, detector, probs)
        return cls(calibration, abstention, detector, metrics)

    def prediction_sets(
        self,
        probs: torch.Tensor,
        level: float,
        score: Score = "lac",
        mode: Mode = "auto",
        u: torch.Tensor | None = None,
    ) -> PredictionSets:
        return self.calibration.prediction_sets(probs, level, score, mode, u)

    def ood(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Out-of-domain flag per row (all False without a detector or with too few validation rows)."""
        if self.ood_detector is None:
            return torch.zeros(len(embeddings), dtype=torch.bool)
        return self.ood_detector.flags(embeddings)

    def abstain(self, probs: torch.Tensor, ood_flags: torch.Tensor | None = None) -> Abstention:
        low = self.abstention.low_confidence(probs)
        ood = torch.zeros_like(low) if ood_flags is None else torch.as_tensor(ood_flags, dtype=torch.bool)
        if ood.shape != low.shape:
            raise ValueError(f"{ood.numel()} out-of-domain flags for {low.numel()} rows")
        reasons = [
            ",".join(r for r, on in (("low_confidence", lo), ("out_of_domain", od)) if on)
            for lo, od in zip(low.tolist(), ood.tolist())
        ]
        return Abstention(low | ood, reasons)

    def summary(self) -> dict[str, float]:
        return dict(self.metrics)

    @property
    def nbytes(self) -> int:
        """Memory its tensors hold (counted in the serving registry's resident bytes)."""
        parts = (self.calibration, self.ood_detector)
        return sum(
            v.numel() * v.element_size()
            for part in parts
            if part is not None
            for v in vars(part).values()
            if isinstance(v, torch.Tensor)
        )

    # ---------------------------------------------------------------- files
    def save(self, directory: Path | str) -> Path:
        """One safetensors file: tensors, plus the small json (options, label names, summary) as its
        metadata. Bounded: O(validation rows + classes * d + d^2)."""
        cal, ab, det = self.calibration, self.abstention, self.ood_detector
        tensors = {
            "calibration_labels": cal.labels.contiguous(),
            "calibration_lac": cal.lac.contiguous(),
            "calibration_aps": cal.aps.contiguous(),
            "abstain_threshold": torch.tensor([ab.threshold], dtype=torch.float64),
        }
        if cal.aps_u is not None:
            tensors["calibration_aps_u"] = cal.aps_u.contiguous()
        meta: dict[str, object] = {
            "format": FORMAT_VERSION,
            "num_labels": cal.num_labels,
            "label_names": list(cal.label_names) if cal.label_names is not None else None,
            "abstention": {
                "target": ab.target,
                "target_value": ab.target_value,
                "reachable": ab.reachable,
                "min_answered": ab.min_answered,
            },
            "metrics": self.metrics,
        }
        if det is not None:
            tensors["ood_means"] = det.means.to(torch.float32).contiguous()
            tensors["ood_precision"] = det.precision.to(torch.float32).contiguous()
            tensors["ood_threshold"] = torch.tensor([det.threshold], dtype=torch.float64)
            if det.background_mean is not None and det.background_precision is not None:
                tensors["ood_background_mean"] = det.background_mean.to(torch.float32).contiguous()
                tensors["ood_background_precision"] = det.background_precision.to(torch.float32).contiguous()
            meta["ood"] = {"method": det.method, "fpr": det.fpr, "train_rows": det.train_rows}
        path = Path(directory) / UNCERTAINTY_FILE
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, allow_nan=False)})
        return path

    @classmethod
    def load(cls, directory: Path | str) -> UncertaintyModel | None:
        """None when the version has no uncertainty file (adapters trained before it existed)."""
        path = Path(directory) / UNCERTAINTY_FILE
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
            if meta.get("format") != FORMAT_VERSION:
                raise FailedPrecondition(f"{UNCERTAINTY_FILE}: format {meta.get('format')} is not supported")
            t = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        names = meta.get("label_names")
        calibration = ConformalCalibration(
            int(meta["num_labels"]),
            t["calibration_labels"],
            t["calibration_lac"],
            t["calibration_aps"],
            tuple(names) if names is not None else None,
            t.get("calibration_aps_u"),  # absent: deterministic APS (fitted before randomisation)
        )
        a = meta["abstention"]
        abstention = AbstentionPolicy(
            float(t["abstain_threshold"][0]),
            a["target"],
            float(a["target_value"]),
            bool(a["reachable"]),
            int(a["min_answered"]),
        )
        detector = None
        if "ood" in meta:
            o = meta["ood"]
            detector = MahalanobisOOD(
                o["method"],
                t["ood_means"],
                t["ood_precision"],
                float(t["ood_threshold"][0]),
                float(o["fpr"]),
                int(o["train_rows"]),
                t.get("ood_background_mean"),
                t.get("ood_background_precision"),
            )
        return cls(calibration, abstention, detector, {k: float(v) for k, v in meta["metrics"].items()})


def _summarise(
    calibration: ConformalCalibration,
    abstention: AbstentionPolicy,
    detector: MahalanobisOOD | None,
    probs: torch.Tensor,
) -> dict[str, float]:
    """The flat metrics for GetAdapter and the job. Set coverage is leave-one-out (honest: no row
    calibrates its own set); levels the validation split cannot support are left out."""
    counts = calibration.label_counts()
    out: dict[str, float] = {
        "uncertainty_validation_rows": float(calibration.rows),
        "conformal_min_label_rows": float(counts.min()),
        "conformal_max_level_marginal": max_supported_level(calibration.rows),
        "conformal_max_level_mondrian": max_supported_level(int(counts.min())),
        "conformal_aps_randomized": 1.0 if calibration.aps_randomized else 0.0,
    }
    for score in ("lac", "aps"):
        for level in SUMMARY_LEVELS:
            loo = calibration.loo_coverage(probs, level, score)  # type: ignore[arg-type]
            for key, value in (loo or {}).items():
                out[f"conformal_{score}_{round(level * 100)}_{key}"] = value
    answered = ~abstention.low_confidence(probs)
    _, correct = _confidence_and_correct(probs, calibration.labels)
    out["abstain_threshold"] = abstention.threshold
    out["abstain_reachable"] = 1.0 if abstention.reachable else 0.0
    out["abstain_validation_answered"] = float(answered.to(torch.float64).mean())
    if bool(answered.any()):
        out["abstain_validation_accuracy"] = float(correct[answered].to(torch.float64).mean())
    out.update(risk_coverage(probs, calibration.labels))
    if detector is not None:
        out["ood_enabled"] = 1.0 if detector.enabled else 0.0
        out["ood_fpr_target"] = detector.fpr
        out["ood_train_rows_used"] = float(detector.train_rows)
        if detector.enabled:
            out["ood_threshold"] = detector.threshold
    return out
