"""The submit path's small-data choices (issue #17): k-fold instead of a hold-out too small to
measure on (auto, or asked for), its settings refused with field violations, and the optimizer
defaults that follow the data size when no step budget is given."""

from __future__ import annotations

import math

import pytest

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.jobs import OptimizerSettings, TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training import auto_defaults
from tuneserve_server.training.validation import TrainInput, build_job_spec

LIMITS = TrainLimits(
    served_task=TaskType.CLASSIFICATION,
    base_model="tiny-bert",
    max_train_examples=20000,
    max_text_chars=200,
    max_lora_rank=64,
    linear_modules=frozenset({"query", "value"}),
    default_targets=("query", "value"),
)


def rows(labels: int, per_label: int) -> list[tuple[str, str]]:
    return [(f"text {i} of label {k}", f"label-{k}") for k in range(labels) for i in range(per_label)]


def submit(train, **kw) -> TrainInput:
    return TrainInput(
        namespace="default",
        adapter_name="a",
        task=TaskType.CLASSIFICATION,
        request_id="r",
        train=train,
        validation=kw.pop("validation", []),
        **kw,
    )


def violations(req: TrainInput) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as err:
        build_job_spec(req, LIMITS)
    return {v.field: v.description for v in err.value.violations}


def test_auto_uses_kfold_when_the_holdout_would_be_small():
    spec = build_job_spec(submit(rows(4, 10)), LIMITS)
    ev = spec.hyperparameters.evaluation
    assert (ev.validation_scheme, ev.folds) == ("kfold", 5)
    assert len(spec.train) == 40 and spec.validation == ()  # every row trains; folds cross-validate
    # 2000 rows: a 10% hold-out of 200 rows is measured on, as before.
    big = build_job_spec(submit(rows(20, 100)), LIMITS)
    assert big.hyperparameters.evaluation.validation_scheme == "holdout"
    assert len(big.validation) == 200 and len(big.train) == 1800
    # The threshold is a setting; a fraction or validation rows given mean a hold-out.
    low = build_job_spec(submit(rows(4, 10), evaluation={"min_holdout_rows": 4}), LIMITS)
    assert low.hyperparameters.evaluation.validation_scheme == "holdout" and len(low.validation) == 4
    frac = build_job_spec(submit(rows(4, 10), validation_fraction=0.2), LIMITS)
    assert frac.hyperparameters.evaluation.validation_scheme == "holdout" and len(frac.validation) == 8
    given = build_job_spec(
        submit(rows(2, 5), validation=[("held a", "label-0"), ("held b", "label-1")]), LIMITS
    )
    assert given.hyperparameters.evaluation.validation_scheme == "holdout" and len(given.validation) == 2
    # Explicit kfold on large data; fewer distinct groups than folds: fewer folds.
    forced = build_job_spec(
        submit(rows(20, 100), evaluation={"validation_scheme": "kfold", "folds": 3}), LIMITS
    )
    assert (forced.hyperparameters.evaluation.validation_scheme, forced.hyperparameters.evaluation.folds) == (
        "kfold",
        3,
    )
    few = build_job_spec(submit([*rows(1, 3), ("x", "b"), ("y", "b")]), LIMITS)
    assert few.hyperparameters.evaluation.folds == 5
    tiny = build_job_spec(submit([("x", "a"), ("y", "a"), ("z", "b"), ("w", "b")]), LIMITS)
    assert tiny.hyperparameters.evaluation.folds == 4


def test_invalid_validation_settings_are_field_violations():
    base = rows(4, 10)
    found = violations(submit(base, evaluation={"validation_scheme": "bogus"}))
    assert "must be one of auto, holdout, kfold" in found["hyperparameters.evaluation.validation_scheme"]
    assert (
        "must be in [2, 10]"
        in violations(submit(base, evaluation={"folds": 1}))["hyperparameters.evaluation.folds"]
    )
    assert "hyperparameters.evaluation.folds" in violations(submit(base, evaluation={"folds": 11}))
    assert "hyperparameters.evaluation.min_holdout_rows" in violations(
        submit(base, evaluation={"min_holdout_rows": 10**6})
    )
    both = violations(submit(base, validation=[("v", "label-0")], evaluation={"validation_scheme": "kfold"}))
    assert "give no validation examples" in both["hyperparameters.evaluation.validation_scheme"]
    assert "hyperparameters.evaluation.validation_scheme" in violations(
        submit(base, validation_fraction=0.2, evaluation={"validation_scheme": "kfold"})
    )
    same = [("same text", "a"), ("same text", "a"), ("other", "b"), ("other", "b")]
    assert "cross-validate" in violations(submit(same))["training_examples"]
    causal = TrainLimits(**{**LIMITS.__dict__, "served_task": TaskType.CAUSAL_LM})
    with pytest.raises(InvalidRequest) as err:
        build_job_spec(
            TrainInput(
                namespace="default",
                adapter_name="a",
                task=TaskType.CAUSAL_LM,
                request_id="r",
                train=[],
                validation=[],
                evaluation={"validation_scheme": "kfold"},
            ),
            causal,
        )
    assert any(v.field == "hyperparameters.evaluation.validation_scheme" for v in err.value.violations)


def test_unset_budget_follows_the_data_size():
    small = build_job_spec(submit(rows(4, 10)), LIMITS)
    opt = small.hyperparameters.optimizer
    assert small.auto_hyperparameters == ("epochs", "learning_rate", "batch_size", "warmup_ratio")
    assert opt.epochs == auto_defaults.resolve(40)["epochs"] > OptimizerSettings.epochs
    assert opt.learning_rate == auto_defaults.SMALL_DATA_LR
    assert math.ceil(40 / opt.batch_size) * opt.epochs >= min(
        auto_defaults.MIN_STEPS, auto_defaults.MAX_EPOCHS * math.ceil(40 / opt.batch_size)
    )
    # A budget given: nothing chosen, today's defaults for the rest.
    given = build_job_spec(submit(rows(4, 10), optimizer={"epochs": 3}), LIMITS)
    assert given.auto_hyperparameters == ()
    assert (given.hyperparameters.optimizer.epochs, given.hyperparameters.optimizer.learning_rate) == (
        3,
        2e-3,
    )
    capped = build_job_spec(submit(rows(4, 10), optimizer={"max_steps": 5}), LIMITS)
    assert capped.auto_hyperparameters == () and capped.hyperparameters.optimizer.epochs == 4
    # A learning rate or batch given is kept; the epochs follow that batch.
    lr = build_job_spec(submit(rows(4, 10), optimizer={"learning_rate": 5e-4, "batch_size": 8}), LIMITS)
    assert lr.auto_hyperparameters == ("epochs", "warmup_ratio")
    assert lr.hyperparameters.optimizer.learning_rate == 5e-4
    assert lr.hyperparameters.optimizer.epochs == auto_defaults.resolve(40, 8)["epochs"]


def test_large_sets_train_at_least_as_long_as_before():
    """The full Banking77 training split (9000 rows after the hold-out): today's 4 epochs, lr 2e-3,
    batch 32 (docs/benchmarks.md's full-set figure), or more steps, never fewer."""
    for n in (9000, 10003, 50_000):
        chosen = auto_defaults.resolve(n)
        assert chosen["epochs"] >= OptimizerSettings.epochs
        if chosen["epochs"] == OptimizerSettings.epochs:
            assert chosen["learning_rate"] == OptimizerSettings.learning_rate
        assert chosen["batch_size"] == OptimizerSettings.batch_size
    for n in (1, 10, 100, 1000, 5000):
        chosen = auto_defaults.resolve(n)
        steps = math.ceil(n / 32) * chosen["epochs"]
        assert chosen["epochs"] <= auto_defaults.MAX_EPOCHS
        assert steps >= auto_defaults.MIN_STEPS or chosen["epochs"] == auto_defaults.MAX_EPOCHS


def test_the_sweep_holds_the_rules_configuration_at_every_slice():
    """docs/benchmarks.md compares the defaults with the best of the sweep at each Banking77 slice
    (bench/small_data.py, bench/results/small_data.jsonl): that needs the rule's own configuration to
    have run there. A change to the rule fails here until the sweep is rerun for it."""
    import json
    from collections import defaultdict
    from pathlib import Path

    results = Path(__file__).resolve().parents[4] / "bench" / "results" / "small_data.jsonl"
    runs: dict[int, set[str]] = defaultdict(set)
    rows: dict[int, int] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            run = json.loads(line)
            runs[run["per"]].add(run["name"])
            rows[run["per"]] = run["train_rows"]
    assert {5, 10, 30} <= set(runs)
    for per, names in runs.items():
        chosen = auto_defaults.resolve(rows[per])
        assert f"e{chosen['epochs']}-lr{chosen['learning_rate']:g}" in names, (per, sorted(names))
