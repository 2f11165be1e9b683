"""The evaluation, accumulation and causal-LM hyperparameters: range checks with field paths,
defaults, and the protobuf round trip (TrainRequest -> JobSpec -> Job.hyperparameters)."""

from __future__ import annotations

import pytest

from tuneserve.v1 import common_pb2, training_pb2
from tuneserve_server.api.convert import hyperparameters_pb, train_input
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.jobs import (
    CausalLMSettings,
    EvaluationSettings,
    TaskType,
)
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training.validation import build_job_spec

LIMITS = TrainLimits(
    served_task=TaskType.CLASSIFICATION,
    base_model="tiny-bert",
    max_train_examples=1000,
    max_text_chars=100,
    max_lora_rank=64,
    linear_modules=frozenset({"query", "value"}),
    default_targets=("query", "value"),
)


def request(**sections: object) -> training_pb2.TrainRequest:
    examples = [
        common_pb2.Example(classification=common_pb2.ClassificationExample(text=f"t {i}", label="ab"[i % 2]))
        for i in range(20)
    ]
    return training_pb2.TrainRequest(
        adapter_name="a",
        task=common_pb2.TASK_TYPE_CLASSIFICATION,
        request_id="r",
        training_examples=examples,
        hyperparameters=common_pb2.Hyperparameters(**sections),
    )


def violations(req: training_pb2.TrainRequest) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as err:
        build_job_spec(train_input(req), LIMITS)
    return {v.field: v.description for v in err.value.violations}


def test_unset_sections_take_the_defaults():
    hp = build_job_spec(train_input(request()), LIMITS).hyperparameters
    # Few rows and no validation: "auto" chose k-fold (the spec holds the scheme chosen).
    assert hp.evaluation == EvaluationSettings(validation_scheme="kfold")
    assert hp.causal_lm == CausalLMSettings()
    assert hp.optimizer.gradient_accumulation_steps == 1
    assert hp.evaluation.calibrate is True  # unset means calibrate


def test_given_values_survive_the_round_trip():
    req = request(
        optimizer=common_pb2.OptimizerConfig(gradient_accumulation_steps=4),
        evaluation=common_pb2.EvaluationConfig(
            eval_every_steps=25, metric_for_best="eval_loss", early_stopping_patience=3, calibrate=False
        ),
        causal_lm=common_pb2.CausalLMConfig(train_on_prompt=True, sample_generations=0),
    )
    hp = build_job_spec(train_input(req), LIMITS).hyperparameters
    assert hp.optimizer.gradient_accumulation_steps == 4
    assert hp.evaluation == EvaluationSettings(25, "eval_loss", 3, False, validation_scheme="kfold")
    assert hp.causal_lm == CausalLMSettings(train_on_prompt=True, sample_generations=0)
    back = hyperparameters_pb(hp)
    assert back.optimizer.gradient_accumulation_steps == 4
    assert (back.evaluation.eval_every_steps, back.evaluation.metric_for_best) == (25, "eval_loss")
    assert (back.evaluation.early_stopping_patience, back.evaluation.calibrate) == (3, False)
    assert back.causal_lm.train_on_prompt and back.causal_lm.sample_generations == 0


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        (
            {"optimizer": common_pb2.OptimizerConfig(gradient_accumulation_steps=0)},
            "hyperparameters.optimizer.gradient_accumulation_steps",
        ),
        (
            {"optimizer": common_pb2.OptimizerConfig(gradient_accumulation_steps=1025)},
            "hyperparameters.optimizer.gradient_accumulation_steps",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(eval_every_steps=2_000_000)},
            "hyperparameters.evaluation.eval_every_steps",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(early_stopping_patience=5000)},
            "hyperparameters.evaluation.early_stopping_patience",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(metric_for_best="f1")},
            "hyperparameters.evaluation.metric_for_best",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(abstain_target_precision=1.0)},
            "hyperparameters.evaluation.abstain_target_precision",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(abstain_target_coverage=1.5)},
            "hyperparameters.evaluation.abstain_target_coverage",
        ),
        (
            {
                "evaluation": common_pb2.EvaluationConfig(
                    abstain_target_precision=0.9, abstain_target_coverage=0.8
                )
            },
            "hyperparameters.evaluation.abstain_target_coverage",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(ood_false_positive_rate=0.0)},
            "hyperparameters.evaluation.ood_false_positive_rate",
        ),
        (
            {"evaluation": common_pb2.EvaluationConfig(ood_false_positive_rate=0.6)},
            "hyperparameters.evaluation.ood_false_positive_rate",
        ),
        (
            {"causal_lm": common_pb2.CausalLMConfig(sample_generations=101)},
            "hyperparameters.causal_lm.sample_generations",
        ),
    ],
)
def test_out_of_range_values_name_their_field(sections, field):
    found = violations(request(**sections))
    assert field in found, found


def test_a_coverage_target_replaces_the_default_precision_target():
    hp = build_job_spec(train_input(request()), LIMITS).hyperparameters.evaluation
    assert (hp.abstain_target_precision, hp.abstain_target_coverage, hp.fit_uncertainty) == (0.95, 0.0, True)
    req = request(evaluation=common_pb2.EvaluationConfig(abstain_target_coverage=0.8))
    hp = build_job_spec(train_input(req), LIMITS).hyperparameters.evaluation
    assert hp.abstain_target_precision == 0.0 and hp.abstain_target_coverage == pytest.approx(0.8)
    # The server's echo (both fields set, one of them 0) is accepted back as it is.
    again = request(
        evaluation=hyperparameters_pb(build_job_spec(train_input(req), LIMITS).hyperparameters).evaluation
    )
    echoed = build_job_spec(train_input(again), LIMITS).hyperparameters.evaluation
    assert (echoed.abstain_target_precision, echoed.abstain_target_coverage) == (0.0, pytest.approx(0.8))


def test_the_metric_description_lists_the_choices():
    found = violations(request(evaluation=common_pb2.EvaluationConfig(metric_for_best="f1")))
    assert found["hyperparameters.evaluation.metric_for_best"] == (
        "must be one of accuracy, macro_f1, eval_loss, or empty for the task's default"
    )
