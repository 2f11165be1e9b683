"""build_job_spec: every bad input is an InvalidRequest naming the field path; defaults are
filled in; the validation split is stratified and deterministic."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest
from tuneserve_server.domain.jobs import LabelledText, TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training import auto_defaults
from tuneserve_server.training.validation import (
    TrainInput,
    build_job_spec,
    prepare_job,
    split_rows,
)

LIMITS = TrainLimits(
    served_task=TaskType.CLASSIFICATION,
    base_model="tiny-bert",
    max_train_examples=1000,
    max_text_chars=100,
    max_lora_rank=64,
    linear_modules=frozenset({"query", "key", "value", "dense"}),
    default_targets=("query", "value"),
    max_positions=512,
)


def _input(**changes) -> TrainInput:
    base = TrainInput(
        namespace="team-a",
        adapter_name="intents",
        task=TaskType.CLASSIFICATION,
        request_id="req-1",
        train=[(f"text number {i}", ["pos", "neg"][i % 2]) for i in range(20)],
        validation=[],
    )
    return replace(base, **changes)


def _violations(req: TrainInput) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as err:
        build_job_spec(req, LIMITS)
    found = {v.field: v.description for v in err.value.violations}
    assert found, "an InvalidRequest must name at least one field"
    first = err.value.violations[0]
    assert first.field in err.value.message  # the message leads with a field, too
    return found


def test_a_good_request_builds_a_spec_with_defaults():
    holdout = {"validation_scheme": "holdout"}  # 20 rows would be cross-validated (auto)
    spec = build_job_spec(
        _input(train=[(" a text ", " pos "), *_input().train[1:]], evaluation=holdout), LIMITS
    )
    assert spec.namespace == "team-a"
    assert spec.task is TaskType.CLASSIFICATION
    assert spec.hyperparameters.lora.target_modules == ("query", "value")  # the default targets
    assert spec.hyperparameters.lora.rank == 16
    # No step budget given: the epochs follow the data size (training/auto_defaults.py).
    assert spec.hyperparameters.optimizer.epochs == auto_defaults.resolve(len(spec.train))["epochs"]
    assert len(spec.train) + len(spec.validation) == 20
    assert len(spec.validation) == 2  # default fraction 0.1, one per label
    assert {ex.label for ex in spec.validation} == {"pos", "neg"}
    assert all(ex.label in {"pos", "neg"} for ex in spec.train)  # labels are stripped

    defaulted_ns = build_job_spec(_input(namespace=""), LIMITS)
    assert defaulted_ns.namespace == "default"


def test_given_hyperparameters_and_validation_examples_are_kept():
    spec = build_job_spec(
        _input(
            validation=[("held out a", "pos"), ("held out b", "neg")],
            lora={"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["key"]},
            optimizer={"learning_rate": 1e-3, "batch_size": 8, "epochs": 2, "max_seq_length": 64},
        ),
        LIMITS,
    )
    lora, opt = spec.hyperparameters.lora, spec.hyperparameters.optimizer
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (8, 16.0, 0.0, ("key",))
    assert (opt.learning_rate, opt.batch_size, opt.epochs, opt.max_seq_length) == (1e-3, 8, 2, 64)
    assert len(spec.train) == 20
    assert spec.validation == (LabelledText("held out a", "pos"), LabelledText("held out b", "neg"))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"train": []}, "training_examples"),
        (
            {"train": [("ok", "pos"), ("   ", "neg"), ("ok", "neg")]},
            "training_examples[1].classification.text",
        ),
        ({"train": [("ok", "pos"), ("x" * 101, "neg")]}, "training_examples[1].classification.text"),
        ({"train": [("ok", "pos"), ("fine", "")]}, "training_examples[1].classification.label"),
        ({"train": [("ok", "pos"), None]}, "training_examples[1]"),
        ({"train": [("same", "pos")] * 10}, "training_examples"),  # a single label
        ({"validation": [("v", "pos"), ("w", "maybe")]}, "validation_examples"),
        ({"validation": [("v", "pos"), ("", "neg")]}, "validation_examples[1].classification.text"),
        ({"validation": [("v", "pos")], "validation_fraction": 0.2}, "validation_fraction"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.51}, "validation_fraction"),
        ({"lora": {"rank": 0}}, "hyperparameters.lora.rank"),
        ({"lora": {"rank": 65}}, "hyperparameters.lora.rank"),
        ({"lora": {"dropout": 1.0}}, "hyperparameters.lora.dropout"),
        ({"lora": {"alpha": 0.0}}, "hyperparameters.lora.alpha"),
        ({"lora": {"target_modules": ["query", "q_proj"]}}, "hyperparameters.lora.target_modules"),
        ({"optimizer": {"learning_rate": 0.0}}, "hyperparameters.optimizer.learning_rate"),
        ({"optimizer": {"batch_size": 0}}, "hyperparameters.optimizer.batch_size"),
        ({"optimizer": {"epochs": 0}}, "hyperparameters.optimizer.epochs"),
        ({"optimizer": {"epochs": 101}}, "hyperparameters.optimizer.epochs"),
        ({"optimizer": {"max_seq_length": 1024}}, "hyperparameters.optimizer.max_seq_length"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"adapter_name": "Bad Name"}, "adapter_name"),
        ({"adapter_name": ""}, "adapter_name"),
        ({"task": None}, "task"),
    ],
)
def test_each_bad_input_names_its_field(changes, field):
    found = _violations(_input(**changes))
    assert field in found, found


def test_unknown_target_module_is_named_in_the_description():
    found = _violations(_input(lora={"target_modules": ["q_proj"]}))
    assert "q_proj" in found["hyperparameters.lora.target_modules"]


def test_max_seq_length_above_the_model_positions_names_the_limit():
    found = _violations(_input(optimizer={"max_seq_length": 1024}))
    assert "512" in found["hyperparameters.optimizer.max_seq_length"]


def test_a_causal_lm_job_on_a_classification_server_fails_precondition():
    with pytest.raises(FailedPrecondition, match="classification"):
        build_job_spec(_input(task=TaskType.CAUSAL_LM), LIMITS)


def test_several_violations_are_reported_together():
    found = _violations(
        _input(
            request_id="",
            adapter_name="Bad Name",
            task=None,
            train=[("ok", "pos"), ("", "neg")],
            lora={"rank": 0, "dropout": 1.0},
            optimizer={"learning_rate": 0.0, "batch_size": 0},
        )
    )
    assert set(found) >= {
        "request_id",
        "adapter_name",
        "task",
        "training_examples[1].classification.text",
        "hyperparameters.lora.rank",
        "hyperparameters.lora.dropout",
        "hyperparameters.optimizer.learning_rate",
        "hyperparameters.optimizer.batch_size",
    }


def test_too_many_bad_examples_stop_at_a_bounded_report():
    found = _violations(_input(train=[("", "")] * 500))
    assert 1 <= len(found) <= 25


def _split(examples, fraction, seed):
    """split_rows on numbered examples, the examples back without their row numbers."""
    train, held = split_rows(list(enumerate(examples, 1)), fraction, seed)
    return [ex for _, ex in train], [ex for _, ex in held]


def test_stratified_split_holds_out_the_fraction_per_label():
    examples = (
        [LabelledText(f"a{i}", "a") for i in range(50)]
        + [LabelledText(f"b{i}", "b") for i in range(30)]
        + [LabelledText(f"c{i}", "c") for i in range(2)]
        + [LabelledText("d0", "d")]
    )
    train, held = _split(examples, 0.2, seed=7)
    held_counts = Counter(ex.label for ex in held)
    train_counts = Counter(ex.label for ex in train)
    assert held_counts == {"a": 10, "b": 6}
    # No label leaves training, and none is split below the 2 examples training needs: "c" (2)
    # stays whole in training, unvalidated, instead of becoming a label too rare to train on.
    assert train_counts == {"a": 40, "b": 24, "c": 2, "d": 1}
    assert sorted(train + held, key=lambda e: e.text) == sorted(examples, key=lambda e: e.text)

    assert _split(examples, 0.2, seed=7) == (train, held)  # deterministic
    _other_train, other_held = _split(examples, 0.2, seed=8)
    assert set(other_held) != set(held)
    assert Counter(ex.label for ex in other_held) == held_counts


def test_stratified_split_keeps_two_of_each_label_in_training_even_at_half():
    examples = [LabelledText(f"a{i}", "a") for i in range(2)] + [LabelledText(f"b{i}", "b") for i in range(3)]
    train, held = _split(examples, 0.5, seed=1)
    assert Counter(ex.label for ex in train) == {"a": 2, "b": 2}
    assert Counter(ex.label for ex in held) == {"b": 1}


def test_a_label_with_two_examples_trains_unvalidated_with_a_warning():
    """Issue #17: with the default split, a label with exactly 2 distinct examples used to be
    refused (label_too_rare: one held out, one left). Now it trains, and the report says it is
    not validated."""
    rows = [(f"common text {i}", "common") for i in range(30)]
    rows += [(f"other text {i}", "other") for i in range(30)] + [("rare one", "rare"), ("rare two", "rare")]
    spec, report = prepare_job(_input(train=rows, evaluation={"validation_scheme": "holdout"}), LIMITS)
    codes = {i.code: i for i in report.issues}
    assert "label_too_rare" not in codes and report.ok
    assert codes["label_not_validated"].severity.value == "WARNING"
    assert "'rare' (2)" in codes["label_not_validated"].message
    assert Counter(ex.label for ex in spec.train)["rare"] == 2


def test_too_few_examples_to_split_is_reported():
    found = _violations(_input(train=[("one", "pos"), ("two", "neg")]))
    assert "training_examples" in found
