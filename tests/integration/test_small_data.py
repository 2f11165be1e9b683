"""Small data through the real service (issue #17): a job on a few dozen rows with no validation is
cross-validated (k-fold), its metrics say so in GetJob and GetAdapter, its calibration is fitted on
every row out of fold, the published adapter is trained on every row; unset step budgets are
chosen from the data size and reported; bad validation settings are INVALID_ARGUMENT with a field
violation."""

from __future__ import annotations

import pytest
from conftest import LABELS, auth_channel, banking77

from tuneserve.v1 import training_pb2, training_pb2_grpc
from tuneserve_client import InvalidArgument
from tuneserve_server.training import auto_defaults

ADAPTER = "small-kfold"


@pytest.fixture(scope="module")
def kfold_job(cluster):
    rows = banking77("train", per_label=6)  # 24 rows: a 10% hold-out would be 4
    with cluster.client(timeout=60) as client:
        job = client.train(ADAPTER, rows, batch_size=8, folds=3, request_id="small-kfold-1")
        done = client.wait(job, timeout=600, poll_interval=0.3)
        events = list(client.watch_job(job.id))
    assert done.state == "SUCCEEDED", done.error
    return rows, done, events


def test_small_job_is_cross_validated_and_trained_on_every_row(cluster, kfold_job):
    rows, job, events = kfold_job
    m = job.metrics
    assert m["validation_scheme"] == 1.0 and m["folds"] == 3.0
    assert m["calibration_rows"] == len(rows) == m["validation_examples"]  # every row, out of fold
    assert m["uncertainty_validation_rows"] == len(rows)
    assert 0.0 <= m["accuracy"] <= 1.0 and m["accuracy_sd"] >= 0.0 and "macro_f1_sd" in m
    assert "baseline_macro_f1" in m and "baseline_macro_f1_sd" in m
    assert job.train_examples == len(rows) and job.validation_examples == 0
    assert job.step == job.total_steps == m["total_steps"]
    folds = [e for e in events if e.type == "EVALUATION" and e.metrics.get("fold")]
    assert [e.metrics["fold"] for e in folds] == [1.0, 2.0, 3.0]
    assert m["accuracy"] == pytest.approx(sum(e.metrics["accuracy"] for e in folds) / 3)
    final = [e for e in events if "training the published adapter on all 24 rows" in e.message]
    assert len(final) == 1 and f"for {int(m['best_step'])} steps" in final[0].message
    steps = [e.step for e in events if e.type == "PROGRESS"]
    assert steps == sorted(steps)  # progress keeps moving over the folds and the final run
    chosen = [e for e in events if "hyperparameters chosen for 24 training rows" in e.message]
    assert len(chosen) == 1 and "epochs" in chosen[0].message and "learning_rate" in chosen[0].message
    with cluster.client() as client:
        adapter = client.get_adapter(ADAPTER)
        version = next(v for v in adapter.versions if v.version == job.adapter_version)
        assert version.metrics["validation_scheme"] == 1.0 and version.metrics["folds"] == 3.0
        assert sorted(version.labels) == sorted(LABELS)
        preds = client.predict(
            f"{ADAPTER}@{job.adapter_version}", [t for t, _ in banking77("test", per_label=5)]
        )
        assert {p.label for p in preds} <= set(LABELS)
    with auth_channel(cluster.api) as channel:
        reply = training_pb2_grpc.TrainingServiceStub(channel).GetJob(
            training_pb2.GetJobRequest(job_id=job.id)
        )
    hp = reply.job.hyperparameters
    assert hp.evaluation.validation_scheme == "kfold" and hp.evaluation.folds == 3
    chosen = auto_defaults.resolve(len(rows), 8)  # auto: the budget follows the 24 rows
    assert hp.optimizer.epochs == chosen["epochs"] > 4
    assert hp.optimizer.learning_rate == pytest.approx(chosen["learning_rate"])


def test_bad_validation_settings_are_refused_with_field_violations(cluster):
    rows = banking77("train", per_label=6)
    cases = [
        ({"validation_scheme": "sometimes"}, "must be one of"),
        ({"folds": 1}, "must be in [2, 10]"),
        ({"validation_scheme": "kfold", "validation": rows[:4]}, "give no validation examples"),
    ]
    with cluster.client(timeout=60) as client:
        for kwargs, text in cases:
            with pytest.raises(InvalidArgument) as err:
                client.train("bad-kfold", rows, epochs=1, **kwargs)
            fields = dict(err.value.field_violations)
            assert text in fields.get("hyperparameters.evaluation.validation_scheme", "") + fields.get(
                "hyperparameters.evaluation.folds", ""
            ), fields
