"""uncertainty.py: conformal sets checked row by row against MAPIE, coverage on synthetic exchangeable
data, abstention and risk–coverage on hand-made cases, Ledoit–Wolf and AUROC against sklearn, the
Mahalanobis detector against its brute-force definition, and the file round trip."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mapie.classification import SplitConformalClassifier
from mapie.conformity_scores import APSConformityScore
from safetensors import safe_open
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest
from tuneserve_server.uncertainty import (
    ABOVE_EVERY_PROBABILITY,
    UNCERTAINTY_FILE,
    AbstentionPolicy,
    ConformalCalibration,
    MahalanobisOOD,
    UncertaintyModel,
    _loo_quantiles,
    aps_scores,
    auroc,
    conformal_quantile,
    ledoit_wolf,
    max_supported_level,
    order_index,
    risk_coverage,
    rows_needed,
)


# ---------------------------------------------------------------- MAPIE as the oracle
class _FixedProbs(ClassifierMixin, BaseEstimator):
    """A 'prefit' classifier whose predict_proba returns given rows: X holds row indices."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])

    def fit(self, X: np.ndarray, y: np.ndarray) -> _FixedProbs:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probs[np.asarray(X)[:, 0].astype(int)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def __sklearn_is_fitted__(self) -> bool:
        return True


class _DeterministicAPS(APSConformityScore):
    """MAPIE 1.6's APS always randomises the calibration score (cumsum - U * p_true), whatever
    include_last_label says; this keeps MAPIE's own cumsum (get_true_label_cumsum_proba) with U = 0,
    the non-randomised score. Sets are MAPIE's unchanged (include_last_label=True)."""

    def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):  # type: ignore[no-untyped-def]
        scores, self.cutoff = self.get_true_label_cumsum_proba(y, y_pred, self.classes)
        return scores


def _dirichlet_rows(rng: np.random.Generator, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = rng.dirichlet(np.full(k, 0.7), size=rows)
    labels = (probs.cumsum(1) > rng.random((rows, 1))).argmax(1)  # y ~ probs: a calibrated model
    return probs, labels


def _mapie_sets(score: str, probs: np.ndarray, labels: np.ndarray, n: int, levels: list[float]):
    conformity = "lac" if score == "lac" else _DeterministicAPS()
    mapie = SplitConformalClassifier(
        _FixedProbs(probs), confidence_level=levels, conformity_score=conformity, prefit=True
    )
    rows = np.arange(len(probs))[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "conformalization set has fewer labels" on small n
        mapie.conformalize(rows[:n], labels[:n])
        _, sets = mapie.predict_set(rows[n:], conformity_score_params={"include_last_label": True})
    return mapie, sets


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize(("n", "k"), [(40, 3), (200, 5), (1000, 20), (250, 77)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_sets_equal_mapie(score: str, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs, labels = _dirichlet_rows(rng, n + 500, k)
    levels = [0.5, 0.8, 0.9, 0.95]
    mapie, expected = _mapie_sets(score, probs, labels, n, levels)
    calibration = ConformalCalibration.fit(torch.from_numpy(probs[:n]), torch.from_numpy(labels[:n]))
    np.testing.assert_array_equal(calibration.scores(score).numpy(), mapie.conformity_scores.ravel())
    for i, level in enumerate(levels):
        sets = calibration.prediction_sets(torch.from_numpy(probs[n:]), level, score, mode="marginal")
        assert sets.mode == "marginal"
        np.testing.assert_array_equal(sets.members.numpy(), expected[:, :, i], err_msg=f"level {level}")
        assert float(sets.thresholds[0]) == float(mapie._mapie_classifier.quantiles_[i])


@pytest.mark.parametrize(("n", "k"), [(40, 3), (200, 5), (1000, 20), (250, 77)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomised_aps_equals_mapie(n: int, k: int, seed: int) -> None:
    """MAPIE's own randomised APS (its default score, include_last_label="randomized"): given the u
    MAPIE draws (a RandomState(seed) per call: n for the calibration scores, one per predicted row),
    the scores, the quantiles and every set are MAPIE's."""
    rng = np.random.default_rng(seed)
    probs, labels = _dirichlet_rows(rng, n + 500, k)
    levels = [0.5, 0.8, 0.9, 0.95]
    mapie = SplitConformalClassifier(
        _FixedProbs(probs), confidence_level=levels, conformity_score="aps", prefit=True, random_state=seed
    )
    rows = np.arange(len(probs))[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapie.conformalize(rows[:n], labels[:n])
        _, expected = mapie.predict_set(
            rows[n:], conformity_score_params={"include_last_label": "randomized"}
        )
    u_cal = torch.from_numpy(np.random.RandomState(seed).uniform(size=n))
    u_new = torch.from_numpy(np.random.RandomState(seed).uniform(size=(500, 1)).ravel())
    calibration = ConformalCalibration.fit(
        torch.from_numpy(probs[:n]), torch.from_numpy(labels[:n]), aps_u=u_cal
    )
    np.testing.assert_allclose(calibration.scores("aps").numpy(), mapie.conformity_scores.ravel(), atol=1e-12)
    for i, level in enumerate(levels):
        sets = calibration.prediction_sets(torch.from_numpy(probs[n:]), level, "aps", "marginal", u_new)
        assert float(sets.thresholds[0]) == pytest.approx(
            float(mapie._mapie_classifier.quantiles_[i]), abs=1e-12
        )
        np.testing.assert_array_equal(sets.members.numpy(), expected[:, :, i], err_msg=f"level {level}")


def test_randomised_aps_needs_the_rows_u_and_covers_exactly() -> None:
    """With u the coverage is the level, not more (exchangeable synthetic rows, many splits), and a
    request without u is refused rather than served the deterministic sets."""
    covered, deterministic = [], []
    for seed in range(30):
        probs, labels = _dirichlet_rows(np.random.default_rng(100 + seed), 1300, 10)
        p, y = torch.from_numpy(probs), torch.from_numpy(labels)
        u = torch.from_numpy(np.random.default_rng(seed).random(1300))
        randomised = ConformalCalibration.fit(p[:300], y[:300], aps_u=u[:300])
        sets = randomised.prediction_sets(p[300:], 0.8, "aps", "marginal", u[300:])
        covered.append(float(sets.members[torch.arange(1000), y[300:]].double().mean()))
        plain = ConformalCalibration.fit(p[:300], y[:300]).prediction_sets(p[300:], 0.8, "aps", "marginal")
        deterministic.append(float(plain.members[torch.arange(1000), y[300:]].double().mean()))
    assert abs(np.mean(covered) - 0.8) < 0.01  # E[coverage] = ceil(301 * 0.8) / 301 = 0.8007
    assert np.mean(deterministic) > np.mean(covered) + 0.01  # the crossing label always in: conservative
    with pytest.raises(ValueError, match="randomised"):
        randomised.prediction_sets(p[:5], 0.8, "aps", "marginal")
    assert randomised.prediction_sets(p[:5], 0.8, "lac", "marginal").members.shape == (5, 10)  # LAC: no u


def test_text_uniforms_are_a_function_of_the_text() -> None:
    from tuneserve_server.uncertainty import text_uniforms

    u = text_uniforms(["a", "b", "a", "où est ma carte"])
    assert u[0] == u[2] and u[0] != u[1]
    assert bool(((u >= 0) & (u < 1)).all())
    many = text_uniforms([f"ticket {i}" for i in range(20000)])
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float(many.var()) - 1 / 12) < 0.005


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_lac_equals_mapie(seed: int) -> None:  # MAPIE allows only LAC on two labels
    probs, labels = _dirichlet_rows(np.random.default_rng(seed), 600, 2)
    _, expected = _mapie_sets("lac", probs, labels, 100, [0.8, 0.9])
    calibration = ConformalCalibration.fit(torch.from_numpy(probs[:100]), torch.from_numpy(labels[:100]))
    for i, level in enumerate([0.8, 0.9]):
        got = calibration.prediction_sets(torch.from_numpy(probs[100:]), level, "lac", "marginal").members
        np.testing.assert_array_equal(got.numpy(), expected[:, :, i])


def test_lac_sets_can_be_empty_aps_sets_never_are() -> None:
    """Documented behaviour, as MAPIE: a confident model's LAC threshold leaves ambiguous rows with no
    label; APS always keeps the label whose mass crosses the threshold."""
    confident = torch.tensor([[0.98, 0.01, 0.01]] * 50)
    calibration = ConformalCalibration.fit(confident, torch.zeros(50, dtype=torch.int64))
    ambiguous = torch.tensor([[0.34, 0.33, 0.33]])
    assert calibration.prediction_sets(ambiguous, 0.9, "lac").members.sum() == 0
    assert calibration.prediction_sets(ambiguous, 0.9, "aps", "marginal").members.sum() >= 1
    probs, labels = _dirichlet_rows(np.random.default_rng(3), 700, 10)
    calibration = ConformalCalibration.fit(torch.from_numpy(probs[:200]), torch.from_numpy(labels[:200]))
    for mode in ("marginal", "mondrian"):
        sets = calibration.prediction_sets(torch.from_numpy(probs[200:]), 0.8, "aps", mode)
        assert bool((sets.members.sum(1) >= 1).all())


# ---------------------------------------------------------------- the quantile and its preconditions
def test_quantile_is_the_kth_order_statistic() -> None:
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)  # k = ceil(10 * 0.9) = 9: the max
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # k = 5
    assert conformal_quantile(scores, 0.55) == pytest.approx(0.6)  # k = ceil(5.5) = 6
    with pytest.raises(FailedPrecondition, match=r"needs at least 9 calibration rows; .* has 8"):
        conformal_quantile(scores[:8], 0.9)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95, 0.97, 0.99, 0.333, 0.123])
def test_rows_needed_is_the_boundary(level: float) -> None:
    need = rows_needed(level)
    assert order_index(need, level) <= need
    assert order_index(need - 1, level) > need - 1
    assert max_supported_level(need) >= level > max_supported_level(need - 1)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_level_must_be_inside_the_unit_interval(level: float) -> None:
    calibration = ConformalCalibration.fit(torch.full((20, 2), 0.5), torch.zeros(20, dtype=torch.int64))
    with pytest.raises(InvalidRequest, match="confidence_level"):
        calibration.prediction_sets(torch.full((1, 2), 0.5), level)


def _imbalanced(rng: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Five labels, prior 40/30/20/7/3 %, a model much less sure of the rare ones."""
    prior = torch.tensor([0.40, 0.30, 0.20, 0.07, 0.03])
    strength = torch.tensor([3.0, 3.0, 2.5, 0.8, 0.4])
    labels = torch.multinomial(prior, rows, replacement=True, generator=rng)
    logits = torch.randn(rows, 5, generator=rng, dtype=torch.float64)
    logits[torch.arange(rows), labels] += strength[labels].to(torch.float64)
    return torch.softmax(logits, 1), labels


def test_mode_auto_falls_back_and_mondrian_names_the_short_label() -> None:
    probs, labels = _imbalanced(torch.Generator().manual_seed(0), 200)
    counts = torch.bincount(labels, minlength=5)
    names = ["a", "b", "c", "rare_d", "rare_e"]
    calibration = ConformalCalibration.fit(probs, labels, names)
    assert int(counts[4]) < rows_needed(0.95)  # 3% of 200: too few for per-label sets at 0.95
    assert calibration.prediction_sets(probs, 0.95, "lac", "auto").mode == "marginal"
    with pytest.raises(FailedPrecondition, match=rf"'rare_e' has {int(counts[4])}") as info:
        calibration.prediction_sets(probs, 0.95, "lac", "mondrian")
    assert f"at least {rows_needed(0.95)}" in info.value.message
    low = max_supported_level(int(counts.min()))
    assert calibration.prediction_sets(probs, low, "lac", "auto").mode == "mondrian"
    with pytest.raises(FailedPrecondition, match=r"needs at least 999 calibration rows; .*200"):
        calibration.prediction_sets(probs, 0.999, "aps", "marginal")


def test_mondrian_thresholds_are_each_labels_own_quantile() -> None:
    probs, labels = _imbalanced(torch.Generator().manual_seed(1), 3000)
    calibration = ConformalCalibration.fit(probs, labels)
    for score in ("lac", "aps"):
        q, mode = calibration.thresholds(0.9, score, "mondrian")
        assert mode == "mondrian"
        for j in range(5):
            assert float(q[j]) == conformal_quantile(calibration.scores(score)[labels == j], 0.9)


# ---------------------------------------------------------------- coverage on exchangeable data
@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("level", [0.8, 0.9])
def test_coverage_marginal_and_per_label(score: str, level: float) -> None:
    """Over many calibration draws: marginal sets cover >= level overall (LAC misses it on the rare,
    hard label); Mondrian sets reach it on every label."""
    rng = torch.Generator().manual_seed(7)
    trials, n_cal, n_test = 120, 1500, 1000
    marginal_hits, marginal_rare = [], []
    mondrian_hits = {j: [] for j in range(5)}
    for _ in range(trials):
        cal_p, cal_y = _imbalanced(rng, n_cal)
        test_p, test_y = _imbalanced(rng, n_test)
        calibration = ConformalCalibration.fit(cal_p, cal_y)
        rows = torch.arange(n_test)
        marginal = calibration.prediction_sets(test_p, level, score, "marginal").members[rows, test_y]
        marginal_hits.append(marginal.double().mean())
        marginal_rare.append(marginal[test_y == 4].double())
        mondrian = calibration.prediction_sets(test_p, level, score, "mondrian").members[rows, test_y]
        for j in range(5):
            mondrian_hits[j].append(mondrian[test_y == j].double())
    coverage = float(torch.stack(marginal_hits).mean())
    assert coverage >= level - 0.005
    if score == "lac":  # continuous scores: split conformal is also at most level + 1/(n+1)
        assert coverage <= level + 1 / (n_cal + 1) + 0.005
    if score == "lac":  # one threshold for all: the rare, hard label is badly under-covered
        assert float(torch.cat(marginal_rare).mean()) < level - 0.05  # why Mondrian exists
    # (APS sets already grow on the uncertain rare rows; deterministic APS with the crossing label
    # kept over-covers, as MAPIE documents: no upper bound to test there.)
    for j in range(5):
        assert float(torch.cat(mondrian_hits[j]).mean()) >= level - 0.015, f"label {j}"


def test_leave_one_out_quantiles_equal_refitting_without_the_row() -> None:
    scores = torch.tensor([0.3, 0.1, 0.3, 0.9, 0.5, 0.2, 0.7, 0.3, 0.6, 0.8, 0.4, 0.05], dtype=torch.float64)
    for level in (0.5, 0.75, 0.9):
        loo = _loo_quantiles(scores, level)
        assert loo is not None
        for i in range(len(scores)):
            others = torch.cat([scores[:i], scores[i + 1 :]])
            assert float(loo[i]) == conformal_quantile(others, level)
    assert _loo_quantiles(scores, 0.95) is None  # 11 rows do not support 0.95


def test_summary_coverage_is_leave_one_out() -> None:
    probs, labels = _imbalanced(torch.Generator().manual_seed(2), 400)
    model = UncertaintyModel.fit(probs, labels, target_precision=0.9)
    counts = model.calibration.label_counts()
    summary = model.summary()
    # 0.95 needs 19 rows per label (marginal sets here), 0.8 needs 4 (Mondrian): recompute both
    # by brute force, each row's set from a calibration fitted without that row.
    assert int(counts.min()) - 1 < rows_needed(0.95) and int(counts.min()) - 1 >= rows_needed(0.8)
    for score, level, mode in (("aps", 0.95, "marginal"), ("lac", 0.8, "mondrian"), ("aps", 0.8, "mondrian")):
        covered, sizes = [], []
        for i in range(400):
            keep = torch.arange(400) != i
            without = ConformalCalibration.fit(probs[keep], labels[keep])
            members = without.prediction_sets(probs[i : i + 1], level, score, mode).members[0]  # type: ignore[arg-type]
            covered.append(bool(members[labels[i]]))
            sizes.append(int(members.sum()))
        prefix = f"conformal_{score}_{round(level * 100)}"
        assert summary[f"{prefix}_mondrian"] == (1.0 if mode == "mondrian" else 0.0)
        assert summary[f"{prefix}_coverage"] == pytest.approx(sum(covered) / 400)
        assert summary[f"{prefix}_set_size"] == pytest.approx(sum(sizes) / 400)
        per_label = [np.mean([c for c, y in zip(covered, labels.tolist()) if y == j]) for j in range(5)]
        assert summary[f"{prefix}_label_coverage_min"] == pytest.approx(min(per_label))
        assert summary[f"{prefix}_label_coverage_max"] == pytest.approx(max(per_label))
    assert summary["conformal_max_level_marginal"] == pytest.approx(400 / 401)
    assert summary["conformal_max_level_mondrian"] == pytest.approx(
        int(counts.min()) / (int(counts.min()) + 1)
    )
    for key in ("conformal_lac_90_coverage", "aurc", "selective_accuracy_80", "abstain_threshold"):
        assert key in summary
    assert all(math.isfinite(v) for v in summary.values())


# ---------------------------------------------------------------- abstention and risk–coverage
def _rows(conf: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-label rows with top probability `conf` on label 0; the true label is 0 where correct."""
    c = torch.tensor(conf, dtype=torch.float64)
    probs = torch.stack([c, 1 - c], 1)
    return probs, torch.tensor([0 if ok else 1 for ok in correct])


CONF = [0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6]
CORRECT = [True, True, True, False, True, True, True, False, False, True]


def test_precision_target_picks_the_smallest_threshold_that_reaches_it() -> None:
    probs, labels = _rows(CONF, CORRECT)
    # answered k: precision 1,1,1,.75,.8,.833,.857,.75,.667,.7
    assert AbstentionPolicy.fit(probs, labels, target_precision=0.85, min_answered=1).threshold == 0.75
    assert AbstentionPolicy.fit(probs, labels, target_precision=0.8, min_answered=1).threshold == 0.75
    assert AbstentionPolicy.fit(probs, labels, target_precision=0.95, min_answered=1).threshold == 0.95
    assert AbstentionPolicy.fit(probs, labels, target_precision=0.7, min_answered=1).threshold == 0.6
    # min_answered 4 rules out the perfect top three; nothing with >= 4 rows reaches 0.9
    policy = AbstentionPolicy.fit(probs, labels, target_precision=0.9, min_answered=4)
    assert not policy.reachable
    assert policy.threshold == ABOVE_EVERY_PROBABILITY > 1.0
    assert bool(policy.low_confidence(torch.tensor([[1.0, 0.0]])).all())


def test_coverage_target_answers_the_most_confident_fraction() -> None:
    probs, labels = _rows(CONF, CORRECT)
    policy = AbstentionPolicy.fit(probs, labels, target_coverage=0.5)
    assert policy.threshold == 0.85
    assert int((~policy.low_confidence(probs)).sum()) == 5
    with pytest.raises(InvalidRequest):
        AbstentionPolicy.fit(probs, labels, target_precision=0.9, target_coverage=0.5)


def test_abstain_reasons_combine_low_confidence_and_out_of_domain() -> None:
    probs, labels = _rows(CONF, CORRECT)
    model = UncertaintyModel.fit(probs, labels, target_coverage=0.5)
    decision = model.abstain(
        _rows([0.99, 0.99, 0.6, 0.6], [True] * 4)[0], torch.tensor([False, True, False, True])
    )
    assert decision.abstain.tolist() == [False, True, True, True]
    assert decision.reasons == ["", "out_of_domain", "low_confidence", "low_confidence,out_of_domain"]
    assert model.abstain(probs).reasons[-1] == "low_confidence"


def test_risk_coverage_on_a_hand_made_case() -> None:
    probs, labels = _rows(CONF, CORRECT)
    rc = risk_coverage(probs, labels)
    assert rc["selective_accuracy_50"] == pytest.approx(4 / 5)
    assert rc["selective_accuracy_80"] == pytest.approx(6 / 8)
    assert rc["selective_accuracy_90"] == pytest.approx(6 / 9)
    assert rc["selective_accuracy_100"] == pytest.approx(7 / 10)
    errors = [0, 0, 0, 1, 1, 1, 1, 2, 3, 3]
    assert rc["aurc"] == pytest.approx(sum(e / (k + 1) for k, e in enumerate(errors)) / 10)
    perfect = risk_coverage(*_rows([0.9, 0.8, 0.7, 0.6], [True, True, False, False]))
    assert perfect["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)


def test_risk_coverage_breaks_ties_pessimistically() -> None:
    one = risk_coverage(*_rows([0.8, 0.8], [True, False]))
    other = risk_coverage(*_rows([0.8, 0.8], [False, True]))
    assert one == other
    assert one["selective_accuracy_50"] == 0.0
    assert one["aurc"] == pytest.approx((1 + 0.5) / 2)


# ---------------------------------------------------------------- out of domain
@pytest.mark.parametrize(("n", "p"), [(30, 100), (500, 40), (64, 384)])
def test_ledoit_wolf_equals_sklearn(n: int, p: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, p)) @ np.diag(np.linspace(0.2, 3.0, p))
    x -= x.mean(0)
    cov, shrinkage = ledoit_wolf(torch.from_numpy(x))
    reference = LedoitWolf(assume_centered=True).fit(x)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-10)
    np.testing.assert_allclose(cov.numpy(), reference.covariance_, rtol=1e-10, atol=1e-12)
    uncentered, _ = ledoit_wolf(torch.from_numpy(x + 5.0), assume_centered=False)
    np.testing.assert_allclose(uncentered.numpy(), reference.covariance_, rtol=1e-8, atol=1e-10)


def test_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, 300).astype(float)
    b = rng.integers(2, 10, 200).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert auroc(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0


def _clusters(rng: torch.Generator, rows: int, d: int = 32, shift: float = 0.0):
    centres = torch.randn(6, d, generator=torch.Generator().manual_seed(99), dtype=torch.float64) * 3
    labels = torch.randint(0, 6, (rows,), generator=rng)
    x = centres[labels] + torch.randn(rows, d, generator=rng, dtype=torch.float64) + shift
    return x, labels


@pytest.mark.parametrize("method", ["mahalanobis", "relative"])
def test_ood_scores_are_the_brute_force_distances(method: str) -> None:
    rng = torch.Generator().manual_seed(0)
    train, labels = _clusters(rng, 600)
    val, _ = _clusters(rng, 300)
    det = MahalanobisOOD.fit(train, labels, val, method=method)  # type: ignore[arg-type]
    probe, _ = _clusters(rng, 20, shift=0.5)
    means = torch.stack([train[labels == c].mean(0) for c in range(6)])
    cov, _ = ledoit_wolf(train - means[labels])
    inverse = torch.linalg.inv(cov)
    diff = probe[:, None, :] - means[None]
    expected = torch.einsum("ncd,de,nce->nc", diff, inverse, diff).min(1).values
    if method == "relative":
        centre = train.mean(0)
        bg, _ = ledoit_wolf(train - centre)
        expected -= torch.einsum("nd,de,ne->n", probe - centre, torch.linalg.inv(bg), probe - centre)
    # float32 storage of means and precision: a small relative error, not an exact match
    scale = torch.einsum("ncd,de,nce->nc", diff, inverse, diff).abs().max()
    torch.testing.assert_close(det.scores(probe), expected, rtol=0, atol=float(scale) * 1e-4)
    assert det.means.dtype == det.precision.dtype == torch.float32


def test_ood_threshold_holds_its_false_positive_rate_and_flags_shifted_rows() -> None:
    rng = torch.Generator().manual_seed(1)
    train, labels = _clusters(rng, 2000)
    val, _ = _clusters(rng, 400)
    det = MahalanobisOOD.fit(train, labels, val, fpr=0.05)
    fresh, _ = _clusters(rng, 5000)
    far, _ = _clusters(rng, 500, shift=2.0)
    assert 0.02 <= float(det.flags(fresh).double().mean()) <= 0.08
    assert float(det.flags(far).double().mean()) > 0.95
    assert auroc(det.scores(fresh), det.scores(far)) > 0.99
    tiny = MahalanobisOOD.fit(train, labels, val[:10], fpr=0.05)  # 10 rows cannot give 5%
    assert not tiny.enabled and not bool(tiny.flags(far).any())


def test_covariance_rows_are_capped_deterministically() -> None:
    rng = torch.Generator().manual_seed(2)
    train, labels = _clusters(rng, 3000)
    val, _ = _clusters(rng, 100)
    a = MahalanobisOOD.fit(train, labels, val, max_rows=1000)
    b = MahalanobisOOD.fit(train, labels, val, max_rows=1000)
    full = MahalanobisOOD.fit(train, labels, val)
    assert a.train_rows == 1000 and full.train_rows == 3000
    assert torch.equal(a.precision, b.precision) and not torch.equal(a.precision, full.precision)
    torch.testing.assert_close(a.means, full.means)  # means use every row


# ---------------------------------------------------------------- the container and its file
@pytest.mark.parametrize("ood_method", ["mahalanobis", "relative"])
def test_save_load_round_trip_and_bounded_size(tmp_path: Path, ood_method: str) -> None:
    rng = torch.Generator().manual_seed(3)
    d, k = 384, 77
    centres = torch.randn(k, d, generator=rng)
    train_labels = torch.randint(0, k, (20000,), generator=rng)
    train = centres[train_labels] + torch.randn(20000, d, generator=rng)
    val_labels = torch.randint(0, k, (1500,), generator=rng)
    val = centres[val_labels] + torch.randn(1500, d, generator=rng)
    logits = torch.randn(1500, k, generator=rng, dtype=torch.float64)
    logits[torch.arange(1500), val_labels] += 4.0
    probs = torch.softmax(logits, 1)
    names = [f"label_{j}" for j in range(k)]
    model = UncertaintyModel.fit(
        probs,
        val_labels,
        val,
        train,
        train_labels,
        target_precision=0.97,
        label_names=names,
        ood_method=ood_method,  # type: ignore[arg-type]
    )
    assert UncertaintyModel.load(tmp_path) is None  # an adapter from before this file existed
    path = model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [UNCERTAINTY_FILE]
    # 20000 training rows, yet only d^2 + k*d float32 (twice d^2 with the background Gaussian)
    # and 24 bytes per validation row, plus a few kB of header and metadata
    squares = 2 if ood_method == "relative" else 1
    assert path.stat().st_size < 4 * (squares * d * d + k * d + d) + 24 * 1500 + 16_000
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("ood_precision").dtype == torch.float32
        assert ("ood_background_precision" in f.keys()) == (ood_method == "relative")  # noqa: SIM118
    loaded = UncertaintyModel.load(tmp_path)
    assert loaded is not None
    assert loaded.summary() == model.summary()
    assert loaded.calibration.label_names == tuple(names)
    assert model.ood_detector is not None and model.ood_detector.train_rows == 8192
    test = probs[:50]
    for score in ("lac", "aps"):
        assert torch.equal(
            loaded.prediction_sets(test, 0.9, score).members, model.prediction_sets(test, 0.9, score).members
        )
    assert torch.equal(loaded.ood(val[:200]), model.ood(val[:200]))
    assert loaded.abstain(test).reasons == model.abstain(test).reasons
    assert loaded.abstention == model.abstention
    summary = model.summary()
    assert summary["ood_enabled"] == 1.0 and summary["uncertainty_validation_rows"] == 1500.0


def test_without_embeddings_there_is_no_detector(tmp_path: Path) -> None:
    probs, labels = _imbalanced(torch.Generator().manual_seed(4), 300)
    model = UncertaintyModel.fit(probs, labels)
    assert model.ood_detector is None and not bool(model.ood(torch.zeros(3, 8)).any())
    model.save(tmp_path)
    loaded = UncertaintyModel.load(tmp_path)
    assert loaded is not None and loaded.ood_detector is None
    assert loaded.abstention.target == "none" and not bool(loaded.abstain(probs).abstain.any())


def test_aps_score_counts_ties_as_above_the_true_label() -> None:
    probs = torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], dtype=torch.float64)
    assert aps_scores(probs, torch.tensor([0, 2])).tolist() == pytest.approx([0.8, 1.0])
