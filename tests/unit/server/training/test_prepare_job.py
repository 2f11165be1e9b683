"""prepare_job: Train's data path — datasets and inline examples of both task families, the
data report it returns, and the rejections (INVALID_ARGUMENT with the report) before any job
is queued."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tuneserve_server.domain.errors import DataRejected, InvalidRequest
from tuneserve_server.domain.jobs import CausalExample, ChatTurn, TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training.datafile import parse_dataset
from tuneserve_server.training.validation import TrainInput, prepare_job

LIMITS = TrainLimits(
    served_task=TaskType.CLASSIFICATION,
    base_model="tiny-bert",
    max_train_examples=1000,
    max_text_chars=200,
    max_lora_rank=64,
    linear_modules=frozenset({"query", "value"}),
    default_targets=("query", "value"),
    count_tokens=lambda texts: [len(t.split()) for t in texts],
)
LM_LIMITS = replace(LIMITS, served_task=TaskType.CAUSAL_LM, base_model="tiny-llama")


def _input(**changes) -> TrainInput:
    base = TrainInput(
        namespace="team-a",
        adapter_name="intents",
        task=TaskType.CLASSIFICATION,
        request_id="req-1",
        train=[],
        validation=[],
    )
    return replace(base, **changes)


def _csv(rows: list[tuple[str, str]]) -> bytes:
    return ("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows)).encode()


def test_a_dataset_trains_with_its_bad_rows_dropped_and_reported():
    rows = [(f"query number {i}", "card" if i % 2 else "fx") for i in range(40)]
    data = _csv(rows) + b"no label here,\n,empty text\n"
    parsed = parse_dataset(data, "csv", TaskType.CLASSIFICATION, max_text_chars=200)
    spec, report = prepare_job(_input(dataset_id="ds-1"), LIMITS, train_file=parsed)
    assert spec.dataset_id == "ds-1"
    assert len(spec.train) + len(spec.validation) == 40
    assert {d.reason: d.count for d in report.dropped} == {"missing_label": 1, "empty_text": 1}
    assert report.total_rows == 42 and report.usable_rows == 40 and report.ok
    assert report.max_tokens == 3  # measured with the limits' counter
    assert any(i.code == "rows_dropped" for i in report.warnings)


def test_repeated_texts_stay_on_one_side_of_the_held_out_split():
    rows = [(f"query {i % 10}", "card" if i % 10 < 5 else "fx") for i in range(60)]
    spec, report = prepare_job(_input(train=rows, validation_fraction=0.2), LIMITS)
    held = {ex.text for ex in spec.validation}
    assert held and not held & {ex.text for ex in spec.train}
    assert report.leaked_validation_rows == 0


def test_leaky_validation_data_is_rejected_with_the_whole_report():
    train = [(f"train text {i}", "a" if i % 2 else "b") for i in range(20)]
    validation = [*train[:5], ("fresh text", "a")]
    with pytest.raises(DataRejected) as err:
        prepare_job(_input(train=train, validation=validation), LIMITS)
    assert err.value.violations[0].field == "validation_examples"
    assert "also in training" in err.value.message
    assert err.value.report["leaked_validation_rows"] == 5
    assert err.value.report["ok"] is False


def test_a_label_too_rare_is_rejected_naming_the_dataset():
    rows = [(f"text {i}", "common") for i in range(20)] + [("only once", "rare")]
    parsed = parse_dataset(_csv(rows), "csv", TaskType.CLASSIFICATION, max_text_chars=200)
    with pytest.raises(DataRejected) as err:
        prepare_job(_input(dataset_id="ds-1"), LIMITS, train_file=parsed)
    assert err.value.violations[0].field == "dataset_id"
    assert "rare" in err.value.message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"train": [("a", "b")], "dataset_id": "ds-1"}, "training_examples"),
        ({"dataset_id": "", "train": []}, "training_examples"),
        (
            {"validation": [("a", "b")], "validation_dataset_id": "ds-2", "dataset_id": "ds-1"},
            "validation_examples",
        ),
        (
            {"validation_dataset_id": "ds-2", "validation_fraction": 0.2, "dataset_id": "ds-1"},
            "validation_fraction",
        ),
    ],
)
def test_conflicting_data_sources_name_the_field(changes, field):
    with pytest.raises(InvalidRequest) as err:
        prepare_job(_input(**changes), LIMITS)
    assert field in {v.field for v in err.value.violations}


def _lm(**changes) -> TrainInput:
    train = [CausalExample(prompt=f"question {i}", completion=f"ANSWER: {i}") for i in range(20)]
    return replace(_input(task=TaskType.CAUSAL_LM, adapter_name="style", train=train), **changes)


def test_causal_examples_are_accepted_and_split_uniformly():
    spec, report = prepare_job(_lm(), LM_LIMITS)
    assert spec.task is TaskType.CAUSAL_LM
    assert len(spec.validation) == 2 and len(spec.train) == 18
    assert all(isinstance(e, CausalExample) for e in spec.train + spec.validation)
    assert report.ok and report.labels == ()


@pytest.mark.parametrize(
    ("example", "field"),
    [
        (CausalExample(prompt="", completion="x"), "training_examples[0].causal_lm.prompt"),
        (CausalExample(prompt="x", completion=" "), "training_examples[0].causal_lm.completion"),
        (CausalExample(messages=(ChatTurn("user", "hi"),)), "training_examples[0].causal_lm.messages"),
        (
            CausalExample(messages=(ChatTurn("robot", "hi"), ChatTurn("assistant", "yo"))),
            "training_examples[0].causal_lm.messages[0].role",
        ),
        (CausalExample(prompt="x" * 300, completion="y"), "training_examples[0].causal_lm.prompt"),
        (("text", "label"), "training_examples[0]"),
    ],
)
def test_bad_causal_examples_name_their_field(example, field):
    req = _lm()
    with pytest.raises(InvalidRequest) as err:
        prepare_job(replace(req, train=[example, *req.train[1:]]), LM_LIMITS)
    assert field in {v.field for v in err.value.violations}


def test_a_classification_example_for_a_causal_job_is_refused():
    with pytest.raises(InvalidRequest) as err:
        prepare_job(_input(train=[CausalExample(prompt="a", completion="b")] * 4), LIMITS)
    assert err.value.violations[0].field == "training_examples[0]"
    assert "classification example" in err.value.violations[0].description


def test_causal_jobs_get_defaults_for_their_family_unless_set():
    spec, _ = prepare_job(_lm(), LM_LIMITS)
    opt, lora = spec.hyperparameters.optimizer, spec.hyperparameters.lora
    assert (opt.batch_size, opt.epochs, opt.max_seq_length, lora.rank) == (8, 3, 256, 8)
    spec, _ = prepare_job(_lm(optimizer={"batch_size": 4}, lora={"rank": 16}), LM_LIMITS)
    assert spec.hyperparameters.optimizer.batch_size == 4 and spec.hyperparameters.lora.rank == 16
    classification, _ = prepare_job(_input(train=[(f"text {i}", "ab"[i % 2]) for i in range(20)]), LIMITS)
    assert classification.hyperparameters.optimizer.batch_size == 32
