"""Evaluations through the real server, worker and client: two versions of a real MiniLM
adapter on inline rows and on an uploaded dataset; the stored metrics equal scikit-learn on
the predictions Predict serves for the same rows, the comparison's McNemar p-value equals
statsmodels'; progress events; cancel; bad input with field violations; tenant isolation;
the CLI's tables and PNGs."""

from __future__ import annotations

import csv
import io
import math

import pytest
from conftest import banking77
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from tuneserve_client import cli
from tuneserve_client.errors import InvalidArgument, NotFound

ADAPTER = "evalx"
FAST = {"baseline": False, "fit_uncertainty": False, "batch_size": 16}


@pytest.fixture(scope="module")
def versions(cluster):
    """evalx@1: a few optimiser steps (weak); evalx@2: three epochs."""
    train = banking77("train", per_label=25)
    with cluster.client(timeout=60) as c:
        weak = c.train(ADAPTER, train, max_steps=3, request_id="evalx-v1", **FAST)
        weak = c.wait(weak, timeout=600, poll_interval=0.3)
        strong = c.train(ADAPTER, train, epochs=3, learning_rate=3e-3, request_id="evalx-v2", **FAST)
        strong = c.wait(strong, timeout=600, poll_interval=0.3)
    assert (weak.state, strong.state) == ("SUCCEEDED", "SUCCEEDED"), (weak.error, strong.error)
    return f"{ADAPTER}@{weak.adapter_version}", f"{ADAPTER}@{strong.adapter_version}"


@pytest.fixture(scope="module")
def rows():
    return banking77("test", per_label=30)


@pytest.fixture(scope="module")
def finished(cluster, versions, rows):
    """One evaluation of both versions on inline rows, run to the end (bare name = v2)."""
    with cluster.client(timeout=60) as c:
        ev = c.create_evaluation([versions[0], ADAPTER], rows, bootstrap_resamples=500, seed=3)
        assert ev.state == "QUEUED" and ev.targets == versions and ev.requested == (versions[0], ADAPTER)
        done = c.wait_evaluation(ev, timeout=600, poll_interval=0.3)
    assert done.state == "SUCCEEDED", done.error
    return done


def _served(client, version, rows):
    out = []
    for i in range(0, len(rows), 64):
        out += client.predict(version, [t for t, _ in rows[i : i + 64]], probabilities=True)
    return out


def test_metrics_equal_sklearn_on_what_predict_serves(cluster, versions, rows, finished):
    gold = [label for _, label in rows]
    correct = {}
    with cluster.client(timeout=60) as c:
        for version in versions:
            served = _served(c, version, rows)
            pred = [p.label for p in served]
            result = finished.result(version)
            m = result.metrics
            assert m["rows"] == len(rows)
            assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-9)
            assert m["macro_f1"] == pytest.approx(
                skm.f1_score(gold, pred, average="macro", zero_division=0), abs=1e-9
            )
            labels = sorted(set(gold) | set(pred))
            assert list(result.labels) == labels
            assert [list(r) for r in result.confusion] == skm.confusion_matrix(
                gold, pred, labels=labels
            ).tolist()
            p, r, f1, support = skm.precision_recall_fscore_support(
                gold, pred, labels=labels, zero_division=0
            )
            assert [s.precision for s in result.per_label] == pytest.approx(p.tolist(), abs=1e-9)
            assert [s.recall for s in result.per_label] == pytest.approx(r.tolist(), abs=1e-9)
            assert [s.f1 for s in result.per_label] == pytest.approx(f1.tolist(), abs=1e-9)
            assert [s.support for s in result.per_label] == support.tolist()
            p_gold = [next(x.score for x in s.probabilities if x.label == g) for s, g in zip(served, gold)]
            assert m["nll"] == pytest.approx(-sum(math.log(q) for q in p_gold) / len(gold), rel=1e-4)
            assert sum(b.count for b in result.reliability) == len(rows)
            correct[version] = [g == q for g, q in zip(gold, pred)]
    a, b = (correct[v] for v in versions)
    table = [
        [sum(x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))],
        [sum(y and not x for x, y in zip(a, b)), sum(not x and not y for x, y in zip(a, b))],
    ]
    cmp = finished.comparison(*versions)
    exact = table[0][1] + table[1][0] < 25
    assert cmp.mcnemar.method == ("exact binomial" if exact else "chi-square with continuity correction")
    assert (cmp.mcnemar.only_a_correct, cmp.mcnemar.only_b_correct) == (table[0][1], table[1][0])
    assert cmp.mcnemar.p_value == pytest.approx(
        sm_mcnemar(table, exact=exact, correction=True).pvalue, rel=1e-9
    )
    assert [x.metric for x in cmp.bootstrap] == ["macro_f1", "nll"]
    f1 = cmp.bootstrap[0]
    assert f1.ci_low <= f1.difference <= f1.ci_high and (f1.resamples, f1.seed) == (500, 3)
    assert finished.rows_per_second > 0 and finished.seconds > 0


def test_an_uploaded_dataset_gives_the_same_results(cluster, versions, rows, finished):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    with cluster.client(timeout=60) as c:
        dataset = c.upload_dataset(buf.getvalue().encode(), format="csv", display_name="test.csv")
        ev = c.create_evaluation(list(versions), dataset=dataset, bootstrap_resamples=500, seed=3)
        done = c.wait_evaluation(ev, timeout=600, poll_interval=0.3)
        assert done.state == "SUCCEEDED" and done.dataset_id == dataset.id
        for version in versions:
            assert done.result(version).metrics == pytest.approx(finished.result(version).metrics)
            assert done.result(version).confusion == finished.result(version).confusion
        assert done.comparisons[0].mcnemar == finished.comparisons[0].mcnemar
        assert done.comparisons[0].bootstrap == finished.comparisons[0].bootstrap
        listed = list(c.list_evaluations(adapter=ADAPTER))
        assert {done.id, finished.id} <= {e.id for e in listed}
        assert all(not r.per_label for e in listed for r in e.results)  # listing leaves the tables out
        events = list(c.watch_evaluation(done.id))
    states = [e.state for e in events if e.type == "STATE"]
    assert states == ["QUEUED", "RUNNING", "SUCCEEDED"]
    progress = [e for e in events if e.type == "PROGRESS"]
    assert progress and progress[-1].step == progress[-1].total_steps == 2 * len(rows)


def test_cancel(cluster, versions):
    many = banking77("test") * 2
    with cluster.client(timeout=60) as c:
        ev = c.create_evaluation(list(versions), many[:6000])
        c.cancel_evaluation(ev.id)
        done = c.wait_evaluation(ev, timeout=300, poll_interval=0.2)
        assert done.state == "CANCELLED" and not done.results
        with pytest.raises(Exception, match="already finished"):
            c.cancel_evaluation(ev.id)


def _violations(call) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as err:
        call()
    return dict(err.value.field_violations)


def test_bad_input_names_the_field(cluster, versions, rows):
    with cluster.client(timeout=60) as c:
        v = _violations(lambda: c.create_evaluation([f"{ADAPTER}@99", "no-such-adapter"], rows[:5]))
        assert "has no version 99" in v["versions[0]"] and "not found" in v["versions[1]"]
        assert "examples" in _violations(lambda: c.create_evaluation([ADAPTER], []))
        assert "examples[1].classification.text" in _violations(
            lambda: c.create_evaluation([ADAPTER], [rows[0], (" ", "card_arrival")])
        )
        assert "include_base" in _violations(
            lambda: c.create_evaluation([ADAPTER], rows[:5], include_base=True)
        )
        assert (
            "again"
            in _violations(lambda: c.create_evaluation([versions[1], ADAPTER], rows[:5]))["versions[1]"]
        )
        assert (
            "more than 10000"
            in _violations(
                lambda: c.create_evaluation([ADAPTER], [(f"text {i}", "card_arrival") for i in range(10_001)])
            )["examples"]
        )
        assert "bootstrap_resamples" in _violations(
            lambda: c.create_evaluation([ADAPTER], rows[:5], bootstrap_resamples=10_001)
        )
        with pytest.raises(NotFound, match="dataset_id"):
            c.create_evaluation([ADAPTER], dataset="ds-does-not-exist")
        # Nothing was queued by any of these.
        assert not [e for e in c.list_evaluations(states="QUEUED")]


def test_tenant_isolation(cluster, finished):
    key = cluster.api.create_key("evalother", "train", description="another tenant")
    with cluster.client(api_key=key, timeout=60) as other:
        with pytest.raises(NotFound):
            other.get_evaluation(finished.id)
        with pytest.raises(NotFound):
            other.cancel_evaluation(finished.id)
        with pytest.raises(NotFound):
            list(other.watch_evaluation(finished.id))
        assert list(other.list_evaluations()) == []
        v = _violations(lambda: other.create_evaluation([ADAPTER], [("my card", "card_arrival")]))
        assert "not found" in v["versions[0]"]
    with cluster.client(timeout=60) as c, pytest.raises(NotFound):
        c.get_job(finished.id)  # an evaluation is not a training job


def test_cli_prints_tables_and_writes_pngs(cluster, finished, versions, tmp_path, capsys):
    confusion, reliability = tmp_path / "confusion.png", tmp_path / "reliability.png"
    argv = ["--target", cluster.api.target, "--api-key", cluster.api.api_key, "eval", "get", finished.id]
    rc = cli.main([*argv, "--confusion-png", str(confusion), "--reliability-png", str(reliability)])
    out = capsys.readouterr().out
    assert rc == 0
    cmp = finished.comparison(*versions)
    assert f"comparison: {versions[1]} vs {versions[0]}" in out and "McNemar" in out
    assert f"{cmp.mcnemar.p_value:.4f}"[:6] in out or f"{cmp.mcnemar.p_value:.2g}" in out
    assert "per label:" in out and "card_arrival" in out
    for png in (confusion, reliability):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = cli.main(["--target", cluster.api.target, "--api-key", cluster.api.api_key, "eval", "list"])
    assert rc == 0 and finished.id in capsys.readouterr().out
