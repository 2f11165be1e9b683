"""Continued training (warm_start.py) on a tiny random BERT: a recipe given a stored version
starts from exactly its LoRA factors and head rows (by label name), new labels get fresh
rows, labels the new data lacks are kept, and a rank or target mismatch is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from test_classification_recipe import make_spec, recipe_for, rows, source  # noqa: F401 (fixture)

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.jobs import EventType, LoraSettings
from tuneserve_server.modeling import HEAD_FILE
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.warm_start import ADAPTER_WEIGHTS, load_lora_weights, read_init


@pytest.fixture(scope="module")
def v1(source, tmp_path_factory):  # noqa: F811
    """A stored version trained on the labels card and fx only."""
    spec = make_spec(epochs=1)
    spec = replace(spec, train=tuple(r for r in spec.train if r.label != "topup"))
    spec = replace(spec, validation=tuple(r for r in spec.validation if r.label != "topup"))
    ctx = RecipeContext(spec, source, precision="float32")
    directory = tmp_path_factory.mktemp("v1")
    run_recipe(ClassificationRecipe(ctx), directory)
    return read_init(directory)


def test_the_init_versions_factors_and_head_rows_are_where_training_starts(source, v1):  # noqa: F811
    from peft import get_peft_model_state_dict

    assert v1.labels == ("card", "fx") and v1.rank == 4
    # New data: fx and topup only; card is kept from v1.
    spec = replace(make_spec(), train=tuple(r for r in rows(8, 5) if r.label != "card"), init_from="tiny@1")
    recipe, events = recipe_for(spec, source, init=v1)
    assert recipe.labels == ("card", "fx", "topup")
    stored = load_file(str(v1.directory / ADAPTER_WEIGHTS))
    live = get_peft_model_state_dict(recipe.model)
    assert len(live) == len(stored) > 0
    for key, value in live.items():
        match = [v for k, v in stored.items() if k.replace(".default", "") == key.replace(".default", "")]
        assert len(match) == 1 and torch.equal(value, match[0]), key
    head = load_file(str(v1.directory / HEAD_FILE))
    assert torch.equal(recipe.head.weight[0], head["weight"][0])  # card
    assert torch.equal(recipe.head.weight[1], head["weight"][1])  # fx
    assert torch.equal(recipe.head.bias[:2], head["bias"])
    assert not any(torch.allclose(recipe.head.weight[2], head["weight"][j]) for j in range(2))  # fresh
    started = [e.message for e in events if e.type is EventType.CHECKPOINT]
    assert started == ["started from tiny@1; new labels with fresh head rows: topup"]


def test_a_rank_or_target_mismatch_is_refused(source, v1):  # noqa: F811
    for lora, why in (
        (LoraSettings(rank=8, alpha=16, target_modules=("query", "value", "dense")), "rank"),
        (LoraSettings(rank=4, alpha=8, target_modules=("query", "value")), "target"),
    ):
        spec = replace(make_spec(), hyperparameters=replace(make_spec().hyperparameters, lora=lora))
        recipe, _ = recipe_for(spec, source)
        with pytest.raises(FailedPrecondition, match=why):
            load_lora_weights(recipe.model, v1)
