"""One description of the hyperparameters (the proto's `Hyperparameters` message): every field
has a `tuneserve train` flag, every flag lands in its own field, and the server's conversion
(api/convert.py) walks the same fields into the domain's settings and back."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from google.protobuf.descriptor import FieldDescriptor

from tuneserve.v1 import common_pb2
from tuneserve_client.cli import build_parser, main
from tuneserve_client.hyperparameters import BY_PATH, HYPERPARAMETERS


def proto_leaves() -> list[tuple[str, FieldDescriptor]]:
    """(path, field) for every leaf of Hyperparameters, read here from the descriptor itself."""
    return [
        (f"{section.name}.{field.name}", field)
        for section in common_pb2.Hyperparameters.DESCRIPTOR.fields
        for field in section.message_type.fields
    ]


PATHS = [path for path, _ in proto_leaves()]


def train_options() -> dict[str, argparse.Action]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag: action for action in commands.choices["train"]._actions for flag in action.option_strings}


def value_for(field: FieldDescriptor, action: argparse.Action) -> tuple[list[str], object]:
    """Command-line words for the field's flag, and the value the field must then hold."""
    if field.is_repeated:
        return ["q_proj", "v_proj"], ["q_proj", "v_proj"]
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return [], True
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return [action.choices[-1]], action.choices[-1]
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return ["0.375"], 0.375  # exact in float32
    return ["7"], 7


def set_fields(hp: common_pb2.Hyperparameters) -> dict[str, object]:
    return {
        f"{section.name}.{field.name}": value
        for section, message in hp.ListFields()
        for field, value in message.ListFields()
    }


def plain(value: object) -> object:
    return value if isinstance(value, (bool, int, float, str)) else list(value)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\nhello,greet\nbye,leave\n")
    return str(path)


def test_every_proto_field_has_a_train_flag_and_a_help_line():
    options = train_options()
    missing = []
    for path, _ in proto_leaves():
        entry = BY_PATH.get(path)
        if entry is None or entry.flag not in options or options[entry.flag].dest != entry.kwarg:
            missing.append(path)
        elif not entry.help:
            missing.append(f"{path} (no help line in hyperparameters._NOTES)")
    assert not missing, f"Hyperparameters fields without a `tuneserve train` flag: {missing}"
    assert len(HYPERPARAMETERS) == len(PATHS)


@pytest.mark.parametrize("path", PATHS)
def test_each_flag_sets_its_field_and_nothing_else(path, data_file, server_target, training_service, capsys):
    field = dict(proto_leaves())[path]
    flag = BY_PATH[path].flag
    words, expected = value_for(field, train_options()[flag])

    rc = main(["--target", server_target, "train", "--adapter", "a", "--data", data_file, flag, *words])

    assert rc == 0, capsys.readouterr().err
    (request,) = training_service.train_requests
    section, name = path.split(".")
    assert plain(getattr(getattr(request.hyperparameters, section), name)) == expected
    assert list(set_fields(request.hyperparameters)) == [path]


def test_every_flag_at_once_round_trips(data_file, server_target, training_service, capsys):
    options = train_options()
    argv, expected = [], {}
    for path, field in proto_leaves():
        flag = BY_PATH[path].flag
        words, expected[path] = value_for(field, options[flag])
        argv += [flag, *words]

    assert main(["--target", server_target, "train", "--adapter", "a", "--data", data_file, *argv]) == 0
    (request,) = training_service.train_requests
    assert {p: plain(v) for p, v in set_fields(request.hyperparameters).items()} == expected


def test_older_flag_names_and_the_negative_forms(data_file, server_target, training_service):
    assert (
        main(
            [
                "--target",
                server_target,
                "train",
                "--adapter",
                "a",
                "--data",
                data_file,
                "--grad-accum",
                "4",
                "--eval-every",
                "10",
                "--no-calibrate",
                "--no-train-on-prompt",
            ]
        )
        == 0
    )
    hp = training_service.train_requests[0].hyperparameters
    assert hp.optimizer.gradient_accumulation_steps == 4 and hp.evaluation.eval_every_steps == 10
    assert hp.evaluation.HasField("calibrate") and hp.evaluation.calibrate is False  # off, not unset
    assert not hp.causal_lm.train_on_prompt


@pytest.mark.parametrize(
    "words",
    [
        ["--lora-rank", "0"],
        ["--epochs", "0"],
        ["--learning-rate", "0"],
        ["--lora-alpha", "-1"],
        ["--lora-dropout", "nan"],
        ["--seed", "-1"],
        ["--max-steps", "x"],
        ["--metric-for-best", "f1"],
        ["--calibrate", "--no-calibrate"],
    ],
)
def test_bad_values_are_usage_errors(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--adapter", "a", "--data", "d.csv", *words])
    assert info.value.code == 2
    assert words[0] in capsys.readouterr().err


def test_zero_is_sent_where_it_means_something(data_file, server_target, training_service):
    assert (
        main(
            [
                "--target",
                server_target,
                "train",
                "--adapter",
                "a",
                "--data",
                data_file,
                "--max-steps",
                "0",
                "--seed",
                "0",
                "--sample-generations",
                "0",
            ]
        )
        == 0
    )
    hp = training_service.train_requests[0].hyperparameters
    assert hp.optimizer.HasField("max_steps") and hp.optimizer.HasField("seed")
    assert hp.causal_lm.HasField("sample_generations") and hp.causal_lm.sample_generations == 0


def test_client_train_takes_each_keyword_and_refuses_unknown_ones(client, training_service):
    sample = {"strs": ["query"], "bool": True, "str": "accuracy", "float": 0.125, "int": 3}
    values = {h.kwarg: sample[h.kind] for h in HYPERPARAMETERS}
    client.train("a", [("x", "y")], **values)
    got = set_fields(training_service.train_requests[0].hyperparameters)
    assert {h.kwarg: plain(got[h.path]) for h in HYPERPARAMETERS} == values

    with pytest.raises(TypeError, match="lora_rnk"):
        client.train("a", [("x", "y")], lora_rnk=8)
    with pytest.raises(ValueError, match="epochs"):
        client.train("a", [("x", "y")], epochs=-1)
    assert len(training_service.train_requests) == 1  # nothing sent for the refused calls


# --- the server's side of the same description --------------------------------------------


def test_server_domain_settings_have_exactly_the_proto_fields():
    from tuneserve_server.domain.jobs import Hyperparameters

    sections = {f.name: f for f in dataclasses.fields(Hyperparameters)}
    proto = {
        s.name: [f.name for f in s.message_type.fields] for s in common_pb2.Hyperparameters.DESCRIPTOR.fields
    }
    assert sorted(sections) == sorted(proto)
    defaults = Hyperparameters()
    for section, names in proto.items():
        assert [f.name for f in dataclasses.fields(getattr(defaults, section))] == names, section


def test_server_conversion_keeps_unset_as_server_default():
    from tuneserve_server.api.convert import hyperparameter_values

    # Fields with presence appear only when set; the plain ones always (their zero: the default).
    assert hyperparameter_values(common_pb2.Hyperparameters()) == {
        "lora": {"target_modules": []},
        "optimizer": {},
        "evaluation": {"metric_for_best": "", "validation_scheme": ""},
        "causal_lm": {"train_on_prompt": False},
        "preference": {"loss_type": ""},
        "search": {"parameters": []},
    }
    given = common_pb2.Hyperparameters(
        optimizer=common_pb2.OptimizerConfig(seed=0, max_steps=0),
        evaluation=common_pb2.EvaluationConfig(calibrate=False),
    )
    values = hyperparameter_values(given)
    assert values["optimizer"] == {"seed": 0, "max_steps": 0}
    assert values["evaluation"] == {"metric_for_best": "", "validation_scheme": "", "calibrate": False}


def test_server_round_trip_of_every_field():
    from tuneserve.v1 import training_pb2
    from tuneserve_server.api.convert import hyperparameters_pb, train_input
    from tuneserve_server.domain.jobs import TaskType
    from tuneserve_server.domain.limits import TrainLimits
    from tuneserve_server.training.validation import build_job_spec

    limits = TrainLimits(
        served_task=TaskType.CLASSIFICATION,
        base_model="tiny-bert",
        max_train_examples=1000,
        max_text_chars=100,
        max_lora_rank=64,
        linear_modules=frozenset({"query", "value", "key"}),
        default_targets=("query", "value"),
    )
    # Each a valid value that differs from the default.
    given = {
        "lora.rank": 4,
        "lora.alpha": 8.0,
        "lora.dropout": 0.25,
        "lora.target_modules": ["key"],
        "optimizer.learning_rate": 0.0625,
        "optimizer.batch_size": 3,
        "optimizer.epochs": 2,
        "optimizer.max_steps": 9,
        "optimizer.warmup_ratio": 0.125,
        "optimizer.weight_decay": 0.5,
        "optimizer.seed": 5,
        "optimizer.max_seq_length": 64,
        "optimizer.gradient_accumulation_steps": 2,
        "evaluation.eval_every_steps": 3,
        "evaluation.metric_for_best": "accuracy",
        "evaluation.early_stopping_patience": 2,
        "evaluation.calibrate": False,
        "evaluation.fit_uncertainty": False,
        "evaluation.abstain_target_precision": 0.0,  # a coverage target instead
        "evaluation.abstain_target_coverage": 0.75,
        "evaluation.ood_false_positive_rate": 0.125,
        "evaluation.baseline": False,
        "evaluation.validation_scheme": "holdout",
        "evaluation.folds": 3,
        "evaluation.min_holdout_rows": 50,
        "causal_lm.train_on_prompt": True,
        "causal_lm.sample_generations": 1,
        "preference.beta": 0.25,
        "preference.loss_type": "sigmoid",
        "preference.label_smoothing": 0.25,
        "search.trials": 3,
        "search.budget_seconds": 30.0,
        "search.parameters": ["steps", "lora_rank"],
    }
    assert sorted(given) == sorted(PATHS)  # a new field needs a value here
    request = training_pb2.TrainRequest(
        adapter_name="a",
        task=common_pb2.TASK_TYPE_CLASSIFICATION,
        request_id="r",
        training_examples=[
            common_pb2.Example(
                classification=common_pb2.ClassificationExample(text=f"t {i}", label="ab"[i % 2])
            )
            for i in range(20)
        ],
    )
    for path, value in given.items():
        BY_PATH[path].set(request.hyperparameters, value)

    spec = build_job_spec(train_input(request), limits)
    for path, value in given.items():
        section, name = path.split(".")
        domain = getattr(getattr(spec.hyperparameters, section), name)
        assert (list(domain) if isinstance(domain, tuple) else domain) == value, path
    back = hyperparameters_pb(spec.hyperparameters)
    assert {p: BY_PATH[p].get(back) for p in PATHS} == given
