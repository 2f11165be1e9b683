"""hyperparameters.search at submit (training/validation.py): trials within the server's cap, a
finite budget, known parameters, classification only, enough rows for a kfold job's inner
hold-out; every refusal names its field; the settings survive the protobuf round trip."""

from __future__ import annotations

import math

import pytest

from tuneserve.v1 import common_pb2, training_pb2
from tuneserve_server.api.convert import hyperparameters_pb, train_input
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.jobs import SearchSettings, TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training.validation import build_job_spec, search_split

LIMITS = TrainLimits(
    served_task=TaskType.CLASSIFICATION,
    base_model="tiny-bert",
    max_train_examples=1000,
    max_text_chars=100,
    max_lora_rank=64,
    linear_modules=frozenset({"query", "value"}),
    default_targets=("query", "value"),
    max_search_trials=8,
)


def request(
    n: int = 40, task=common_pb2.TASK_TYPE_CLASSIFICATION, **search: object
) -> training_pb2.TrainRequest:
    examples = [
        common_pb2.Example(classification=common_pb2.ClassificationExample(text=f"t {i}", label="ab"[i % 2]))
        for i in range(n)
    ]
    return training_pb2.TrainRequest(
        adapter_name="a",
        task=task,
        request_id="r",
        training_examples=examples,
        hyperparameters=common_pb2.Hyperparameters(search=common_pb2.SearchConfig(**search)),
    )


def violations(req: training_pb2.TrainRequest, limits: TrainLimits = LIMITS) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as err:
        build_job_spec(train_input(req), limits)
    return {v.field: v.description for v in err.value.violations}


def test_unset_means_no_search():
    spec = build_job_spec(train_input(request()), LIMITS)
    assert spec.hyperparameters.search == SearchSettings()
    assert spec.hyperparameters.search.searched == ("learning_rate", "steps")


def test_given_values_survive_the_round_trip():
    req = request(trials=5, budget_seconds=90.5, parameters=["lora_rank", "learning_rate"])
    hp = build_job_spec(train_input(req), LIMITS).hyperparameters
    assert hp.search == SearchSettings(5, 90.5, ("lora_rank", "learning_rate"))
    back = hyperparameters_pb(hp).search
    assert (back.trials, back.budget_seconds, list(back.parameters)) == (
        5,
        90.5,
        ["lora_rank", "learning_rate"],
    )
    # The server's echo (every field set, a search off included) is accepted back as it is.
    off = hyperparameters_pb(build_job_spec(train_input(request()), LIMITS).hyperparameters)
    again = request()
    again.hyperparameters.CopyFrom(off)
    assert build_job_spec(train_input(again), LIMITS).hyperparameters.search == SearchSettings()


@pytest.mark.parametrize(
    ("search", "field", "text"),
    [
        (
            {"trials": 9},
            "hyperparameters.search.trials",
            "must be in [0, 8] (the server's max_search_trials)",
        ),
        (
            {"trials": 2, "budget_seconds": -1.0},
            "hyperparameters.search.budget_seconds",
            "must be in [0, 86400]",
        ),
        ({"trials": 2, "budget_seconds": math.nan}, "hyperparameters.search.budget_seconds", "must be in"),
        ({"trials": 2, "budget_seconds": 1e6}, "hyperparameters.search.budget_seconds", "must be in"),
        ({"trials": 2, "parameters": ["rank"]}, "hyperparameters.search.parameters", "rank unknown; use"),
        ({"trials": 2, "parameters": ["steps", "steps"]}, "hyperparameters.search.parameters", "twice"),
    ],
)
def test_bad_search_settings_name_their_field(search, field, text):
    found = violations(request(**search))
    assert text in found.get(field, ""), found


def test_budget_and_parameters_without_trials_search_nothing():
    req = request(budget_seconds=60.0, parameters=["steps"])
    search = build_job_spec(train_input(req), LIMITS).hyperparameters.search
    assert search == SearchSettings(0, 60.0, ("steps",)) and not search.trials


def test_a_server_may_allow_no_search():
    none = TrainLimits(**{**LIMITS.__dict__, "max_search_trials": 0})
    assert "must be in [0, 0]" in violations(request(trials=1), none)["hyperparameters.search.trials"]


def test_the_search_is_for_classification_only():
    causal = TrainLimits(**{**LIMITS.__dict__, "served_task": TaskType.CAUSAL_LM})
    req = training_pb2.TrainRequest(
        adapter_name="a",
        task=common_pb2.TASK_TYPE_CAUSAL_LM,
        request_id="r",
        training_examples=[
            common_pb2.Example(causal_lm=common_pb2.CausalLMExample(prompt=f"p {i}", completion="c"))
            for i in range(20)
        ],
        hyperparameters=common_pb2.Hyperparameters(search=common_pb2.SearchConfig(trials=2)),
    )
    assert "classification jobs only" in violations(req, causal)["hyperparameters.search.trials"]


def test_a_kfold_job_needs_rows_for_the_search_holdout():
    spec = build_job_spec(train_input(request(40, trials=3)), LIMITS)  # 40 rows: kfold
    assert spec.hyperparameters.evaluation.validation_scheme == "kfold"
    train, held = search_split(spec.train, spec.hyperparameters.optimizer.seed)
    assert len(held) == 8 and len(train) == 32  # 20% of each label, stratified
    assert {ex.label for ex in held} == {"a", "b"}
    # Two rows of each label: a hold-out would leave a label with one training row.
    assert "too few examples to hold out" in violations(request(4, trials=3))["hyperparameters.search.trials"]
