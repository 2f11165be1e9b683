"""A job interrupted at any step and resumed from its checkpoint ends with exactly the
weights of an uninterrupted run: same batches, same dropout draws, same schedule."""

from __future__ import annotations

import threading

import pytest
import torch

from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.modeling import resolve_base_model
from tuneserve_server.training import checkpoint
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.outcomes import JobPreempted
from tuneserve_server.training.recipe import RecipeContext
from tuneserve_server.training.validation import TrainInput, build_job_spec

_TEXTS = [
    ("my card has not arrived", "card"),
    ("where is my new card", "card"),
    ("card still missing", "card"),
    ("card delivery is late", "card"),
    ("exchange rate for euros", "fx"),
    ("what rate do you use", "fx"),
    ("currency conversion fee", "fx"),
    ("dollar to pound rate", "fx"),
    ("top up failed", "topup"),
    ("my top-up did not work", "topup"),
    ("could not add money", "topup"),
    ("top up declined", "topup"),
]
# Two phrasings of each (not exact copies: the data report refuses a validation split that
# leaks into training).
TEXTS = _TEXTS + [(f"{text} again", label) for text, label in _TEXTS]


@pytest.fixture(scope="module")
def spec():
    limits = TrainLimits(
        TaskType.CLASSIFICATION,
        "m",
        1000,
        1000,
        64,
        frozenset({"query", "key", "value", "dense"}),
        ("query", "key", "value", "dense"),
    )
    return build_job_spec(
        TrainInput(
            "",
            "ckpt",
            TaskType.CLASSIFICATION,
            "r",
            TEXTS,
            [],
            0.25,
            {"rank": 4},
            {"epochs": 3, "batch_size": 4, "learning_rate": 1e-2},
        ),
        limits,
    )


def trained_weights(spec, tmp_path, *, stop_at: int | None, directory) -> dict[str, torch.Tensor]:
    preempt = threading.Event()

    def progress(p):
        if stop_at is not None and p.step == stop_at:
            preempt.set()

    ctx = RecipeContext(
        spec,
        resolve_base_model("minilm"),
        preempt=preempt,
        on_progress=progress,
        checkpoint_dir=directory,
        checkpoint_every=4,
    )
    recipe = ClassificationRecipe(ctx)
    recipe.setup()
    if stop_at is not None:
        with pytest.raises(JobPreempted):
            recipe.train()
        ctx = RecipeContext(spec, resolve_base_model("minilm"), checkpoint_dir=directory, checkpoint_every=4)
        recipe = ClassificationRecipe(ctx)
        recipe.setup()
    recipe.train()
    state = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
    state.update({f"head.{n}": p.detach().clone() for n, p in recipe.head.named_parameters()})
    return state, recipe


def test_resume_reproduces_an_uninterrupted_run(spec, tmp_path):
    straight, _ = trained_weights(spec, tmp_path, stop_at=None, directory=None)
    resumed, recipe = trained_weights(spec, tmp_path, stop_at=7, directory=tmp_path / "ckpt")
    assert recipe.resumed_from_step == 7  # preemption checkpoints at the exact step
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_remove_clears_every_trace(tmp_path):
    d = tmp_path / "job"
    (tmp_path / "job.old").mkdir()
    (tmp_path / "job.tmp-abc").mkdir()
    d.mkdir()
    checkpoint.remove(d)
    assert list(tmp_path.iterdir()) == []
