"""The evaluation metrics and paired tests against their reference implementations on the
same predictions: scikit-learn (per-label scores, macro-F1, confusion matrix, log loss),
statsmodels (McNemar, exact and chi-square), scipy (the paired percentile bootstrap)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from tuneserve_server.training import eval_stats


def _predictions(n: int, labels: list[str], skill: float, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    gold = [rng.choice(labels) for _ in range(n)]
    pred = [g if rng.random() < skill else rng.choice(labels) for g in gold]
    return gold, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_scores_equal_sklearn(seed):
    labels = [f"l{i}" for i in range(7)]
    gold, pred = _predictions(300, labels, 0.6, seed)
    pred = [("never-gold" if i % 41 == 0 else p) for i, p in enumerate(pred)]  # a label only predicted
    order = eval_stats.label_set(gold, pred)
    p, r, f, s = skm.precision_recall_fscore_support(gold, pred, labels=order, zero_division=0)
    ours = eval_stats.per_label_scores(gold, pred, order)
    assert [x["label"] for x in ours] == order
    np.testing.assert_allclose([x["precision"] for x in ours], p, rtol=0, atol=1e-12)
    np.testing.assert_allclose([x["recall"] for x in ours], r, rtol=0, atol=1e-12)
    np.testing.assert_allclose([x["f1"] for x in ours], f, rtol=0, atol=1e-12)
    assert [x["support"] for x in ours] == s.tolist()
    assert eval_stats.macro_f1(gold, pred) == pytest.approx(
        skm.f1_score(gold, pred, average="macro", zero_division=0), abs=1e-12
    )
    assert eval_stats.accuracy(gold, pred) == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-12)
    assert (
        eval_stats.confusion_matrix(gold, pred, order)
        == skm.confusion_matrix(gold, pred, labels=order).tolist()
    )


def test_nll_ece_and_reliability():
    rng = np.random.default_rng(3)
    n, k = 400, 5
    probs = rng.dirichlet(np.ones(k) * 0.5, size=n)
    gold = rng.integers(0, k, n)
    rows = eval_stats.ClassificationRows(
        y_true=tuple(f"c{g}" for g in gold),
        y_pred=tuple(f"c{int(np.argmax(p))}" for p in probs),
        confidence=tuple(float(p.max()) for p in probs),
        p_true=tuple(float(p[g]) for p, g in zip(probs, gold)),
    )
    out = eval_stats.classification_metrics(rows, bins=10)
    assert out["metrics"]["nll"] == pytest.approx(skm.log_loss(gold, probs, labels=list(range(k))), abs=1e-12)
    # ECE from numpy's histogram of the same bins ((lo, hi] edges: right-closed via digitize).
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    bins = np.clip(np.digitize(conf, np.linspace(0, 1, 11), right=True) - 1, 0, 9)
    expected = (
        sum(
            (bins == b).sum() * abs(correct[bins == b].mean() - conf[bins == b].mean())
            for b in range(10)
            if (bins == b).any()
        )
        / n
    )
    assert out["metrics"]["ece"] == pytest.approx(expected, abs=1e-12)
    assert sum(b["count"] for b in out["reliability"]) == n
    assert [b["count"] for b in out["reliability"]] == np.bincount(bins, minlength=10).tolist()


def test_unseen_gold_labels_are_wrong_and_left_out_of_nll():
    rows = eval_stats.ClassificationRows(("a", "b", "z"), ("a", "a", "a"), (0.9, 0.6, 0.7), (0.9, 0.4, None))
    m = eval_stats.classification_metrics(rows)["metrics"]
    assert m["rows_with_unseen_label"] == 1
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["nll"] == pytest.approx(skm.log_loss([0, 1], [[0.9, 0.1], [0.6, 0.4]]))


@pytest.mark.parametrize(
    ("n", "skill_a", "skill_b", "seed"),
    [(40, 0.7, 0.8, 0), (60, 0.5, 0.5, 1), (500, 0.6, 0.75, 2), (800, 0.7, 0.7, 3), (30, 1.0, 1.0, 4)],
)
def test_mcnemar_equals_statsmodels(n, skill_a, skill_b, seed):
    rng = random.Random(seed)
    a = [rng.random() < skill_a for _ in range(n)]
    b = [rng.random() < skill_b for _ in range(n)]
    ours = eval_stats.mcnemar(a, b)
    table = [
        [sum(x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))],
        [sum(y and not x for x, y in zip(a, b)), sum(not x and not y for x, y in zip(a, b))],
    ]
    discordant = table[0][1] + table[1][0]
    exact = discordant < eval_stats.MCNEMAR_EXACT_BELOW
    oracle = sm_mcnemar(table, exact=exact, correction=True)
    assert ours["only_a_correct"] == table[0][1] and ours["only_b_correct"] == table[1][0]
    assert ours["method"] == ("exact binomial" if exact else "chi-square with continuity correction")
    if discordant:
        assert ours["p_value"] == pytest.approx(oracle.pvalue, rel=1e-9, abs=1e-15)
        assert ours["statistic"] == pytest.approx(oracle.statistic, rel=1e-9)
    else:
        assert ours["p_value"] == 1.0


def test_mcnemar_exact_small_counts():
    # 1 vs 9 discordant rows: 2 * P[X <= 1], X ~ Bin(10, 1/2) = 2 * 11 / 1024.
    a = [True] * 1 + [False] * 9 + [True] * 5
    b = [False] * 1 + [True] * 9 + [True] * 5
    assert eval_stats.mcnemar(a, b)["p_value"] == pytest.approx(22 / 1024)
    assert eval_stats.mcnemar(a, b)["p_value"] == pytest.approx(2 * stats.binom.cdf(1, 10, 0.5))


def _scipy_paired(stat_a, stat_b, n, resamples, seed):
    def statistic(idx):
        idx = np.asarray(idx)[None, :]
        return float(stat_b(idx)[0] - stat_a(idx)[0])

    return stats.bootstrap(
        (np.arange(n),),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )


def test_paired_bootstrap_macro_f1_equals_scipy():
    labels = [f"l{i}" for i in range(6)]
    gold, pa = _predictions(120, labels, 0.55, 5)
    _, pb = _predictions(120, labels, 0.7, 5)
    pb = [g if random.Random(i).random() < 0.7 else p for i, (g, p) in enumerate(zip(gold, pb))]
    sa, sb = eval_stats.macro_f1_statistic(gold, pa), eval_stats.macro_f1_statistic(gold, pb)
    # The vectorised statistic is macro-F1 on each resample, as scikit-learn computes it.
    idx = np.random.default_rng(9).integers(0, 120, (5, 120))
    for row, value in zip(idx, sa(idx)):
        assert value == pytest.approx(
            skm.f1_score([gold[i] for i in row], [pa[i] for i in row], average="macro", zero_division=0),
            abs=1e-12,
        )
    ours = eval_stats.paired_bootstrap("macro_f1", sa, sb, 120, resamples=300, seed=11)
    oracle = _scipy_paired(sa, sb, 120, 300, 11)
    assert ours.ci_low == pytest.approx(oracle.confidence_interval.low, abs=1e-12)
    assert ours.ci_high == pytest.approx(oracle.confidence_interval.high, abs=1e-12)
    assert ours.difference == pytest.approx(
        skm.f1_score(gold, pb, average="macro") - skm.f1_score(gold, pa, average="macro"), abs=1e-12
    )
    dist = oracle.bootstrap_distribution
    assert ours.p_value == pytest.approx(min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0))))


def test_paired_bootstrap_loss_equals_scipy_and_is_seeded():
    rng = np.random.default_rng(4)
    la, lb = rng.gamma(2.0, 0.5, 90), rng.gamma(2.0, 0.45, 90)
    tokens = rng.integers(1, 30, 90)
    sa, sb = eval_stats.ratio_statistic(la * tokens, tokens), eval_stats.ratio_statistic(lb * tokens, tokens)
    ours = eval_stats.paired_bootstrap("eval_loss", sa, sb, 90, resamples=200, seed=2)
    oracle = _scipy_paired(sa, sb, 90, 200, 2)
    assert (ours.ci_low, ours.ci_high) == pytest.approx(
        (oracle.confidence_interval.low, oracle.confidence_interval.high), abs=1e-12
    )
    assert ours.a == pytest.approx(float((la * tokens).sum() / tokens.sum()))
    again = eval_stats.paired_bootstrap("eval_loss", sa, sb, 90, resamples=200, seed=2)
    assert again == ours
    with pytest.raises(ValueError):
        eval_stats.paired_bootstrap("eval_loss", sa, sb, 90, resamples=eval_stats.MAX_RESAMPLES + 1)


def test_chunked_draws_cover_every_resample():
    chunks = eval_stats.resample_indices(3_000_000, 3, seed=0)
    assert sum(c.shape[0] for c in chunks) == 3 and all(c.shape[1] == 3_000_000 for c in chunks)


def test_the_promotion_gate_decides_on_the_metric_with_a_tolerance():
    from tuneserve_server.domain.jobs import TaskType
    from tuneserve_server.training.eval_run import EvalOptions, EvaluationOutcome, TargetOutcome, gate

    gold = ("a", "b", "a", "b", "a", "b")

    def target(name, pred, conf):
        rows = eval_stats.ClassificationRows(
            gold, pred, conf, tuple(c if p == g else 1 - c for p, g, c in zip(pred, gold, conf))
        )
        detail = eval_stats.classification_metrics(rows)
        return TargetOutcome(name, detail.pop("metrics"), detail, rows)

    outcome = EvaluationOutcome(
        TaskType.CLASSIFICATION,
        [
            target("x@1", ("a", "b", "a", "b", "b", "a"), (0.9,) * 6),  # 4 of 6
            target("x@2", ("a", "b", "a", "b", "a", "a"), (0.8,) * 6),  # 5 of 6
        ],
        EvalOptions(resamples=50),
    )
    better = gate(outcome, "x@1", "x@2", "accuracy")
    assert better.promote and (better.current, better.candidate) == pytest.approx((4 / 6, 5 / 6))
    assert better.comparison["mcnemar"]["only_b_correct"] == 1
    assert not gate(outcome, "x@2", "x@1", "accuracy").promote
    assert gate(outcome, "x@2", "x@1", "accuracy", tolerance=0.2).promote
    nll = gate(outcome, "x@1", "x@2", "nll")  # lower is better
    assert nll.promote == (nll.candidate <= nll.current)
