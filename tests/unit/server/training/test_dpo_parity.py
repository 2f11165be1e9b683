"""The preference recipe's loss and LoRA gradients against TRL's DPOTrainer (the oracle) on
one batch of a tiny random Llama in float32: the same token ids go through our
`PreferenceRecipe` (policy = base + LoRA, reference = adapter disabled, cached) and through
TRL's `DPOTrainer.compute_loss` (its collator, its forward, its reference via the disabled
adapter, its loss). Sigmoid (DPO) at two betas, IPO, and the conservative (label-smoothed)
sigmoid loss; TRL 1.x's sigmoid loss has no smoothing term, so for that one the oracle is
(1 - eps) * TRL(batch) + eps * TRL(batch with chosen and rejected swapped), which is the
cDPO loss by its definition."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from preference_fixtures import preference_spec, save_tiny_llama

from tuneserve_server.domain.jobs import PreferenceSettings
from tuneserve_server.modeling import BaseModelSource
from tuneserve_server.training.preference import PreferenceRecipe
from tuneserve_server.training.recipe import RecipeContext
from tuneserve_server.warm_start import read_init

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-dpo"))


def _recipe(
    base_dir: Path, settings: PreferenceSettings, trl_beta: float | None = None, init: Path | None = None
):
    """The recipe after setup, its LoRA weights moved away from zero (so policy != reference);
    with `trl_beta`, also a TRL DPOTrainer on the same model, built before the move: TRL keeps a
    frozen copy of the adapter as it finds it ("ref") as its reference: from scratch B = 0,
    exactly the base model, which is what our reference (the adapter disabled) is; warm-started
    (`init`, an SFT adapter) the SFT adapter, which is what our "reference" adapter is."""
    recipe = PreferenceRecipe(
        RecipeContext(
            preference_spec(settings=settings),
            BaseModelSource(str(base_dir), "tiny"),
            init=None if init is None else read_init(init),
        )
    )
    recipe.setup()
    assert (init is not None) == ("reference" in recipe.model.peft_config)
    trainer = None if trl_beta is None else _trl_trainer(recipe, settings, trl_beta)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a policy away from the reference: random A and B of the trained adapter
        for name, p in recipe.model.named_parameters():
            if "lora_" in name and ".default." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    recipe.model.train()
    return recipe, trainer


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _trl_trainer(recipe: PreferenceRecipe, settings: PreferenceSettings, beta: float):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        beta=beta,
        loss_type=[settings.loss_type or "sigmoid"],
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
    )
    placeholder = Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])
    trainer = DPOTrainer(
        model=recipe.model, args=args, train_dataset=placeholder, processing_class=recipe.tokenizer
    )
    assert "ref" in recipe.model.peft_config  # TRL's frozen reference adapter
    return trainer


def _trl_loss(trainer, recipe: PreferenceRecipe, idx: list[int], swap: bool) -> torch.Tensor:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows = [recipe.train_rows[i] for i in idx]
    batch = DataCollatorForPreference(pad_token_id=recipe.pad_id)(
        [
            {
                "prompt_ids": r.prompt_ids,
                "chosen_ids": r.rejected_ids if swap else r.chosen_ids,
                "rejected_ids": r.chosen_ids if swap else r.rejected_ids,
            }
            for r in rows
        ]
    )
    recipe.model.train()
    return trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize(
    "settings",
    [
        PreferenceSettings(beta=0.1),
        PreferenceSettings(beta=0.5),
        PreferenceSettings(beta=0.1, loss_type="ipo"),
        PreferenceSettings(beta=0.1, label_smoothing=0.2),
    ],
    ids=["sigmoid-0.1", "sigmoid-0.5", "ipo", "label-smoothing"],
)
def test_loss_and_lora_gradients_equal_trl(base_dir: Path, settings: PreferenceSettings) -> None:
    recipe, trainer = _recipe(base_dir, settings, trl_beta=settings.beta)
    idx = [0, 1, 2, 3]
    ours, _, _ = recipe._batch_loss("t", recipe.train_rows, idx)
    loss = ours.losses.mean()
    loss.backward()
    our_grads = {n: g for n, g in _grads(recipe.model).items() if ".default." in n}
    assert len(our_grads) == 2 * 2 * 4  # 2 layers x 4 target modules x (A, B)

    eps = settings.label_smoothing
    oracle = _trl_loss(trainer, recipe, idx, swap=False)
    if eps:
        oracle = (1 - eps) * oracle + eps * _trl_loss(trainer, recipe, idx, swap=True)
    oracle.backward()
    trl_grads = {n: g for n, g in _grads(recipe.model).items() if ".default." in n}

    assert abs(float(loss) - float(oracle)) < 1e-5, (float(loss), float(oracle))
    assert float(loss) != pytest.approx(float(recipe._reference_loss()), abs=1e-3)  # not the trivial start
    assert trl_grads.keys() == our_grads.keys()
    for name, g in our_grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, trl_grads[name], rtol=0, atol=1e-5, msg=name)


def test_reference_log_probs_are_computed_once_per_pair(base_dir: Path) -> None:
    recipe, _ = _recipe(base_dir, PreferenceSettings())
    first = recipe.reference_logps("t", recipe.train_rows, [0, 1, 2])
    assert recipe.reference_forwards == 3
    again = recipe.reference_logps("t", recipe.train_rows, [2, 1, 0, 3])
    assert recipe.reference_forwards == 4  # only pair 3 was new
    torch.testing.assert_close(again[0][:3], first[0].flip(0))
    # the cached values are the base model's: the same as running it with the adapter off
    with torch.no_grad(), recipe.model.disable_adapter():
        from tuneserve_server.training.preference import collate_pairs, sequence_logps

        recipe.model.eval()
        direct, _ = sequence_logps(recipe.model, collate_pairs([recipe.train_rows[3]], recipe.pad_id))
    torch.testing.assert_close(again[0][3], direct[0])
    torch.testing.assert_close(again[1][3], direct[1])


def test_warm_started_loss_and_gradients_equal_trl_retraining_an_adapter(
    base_dir: Path, tmp_path: Path
) -> None:
    """SFT -> DPO: given a model with a trained adapter, TRL keeps a frozen copy of it as the
    reference ("ref"); ours loads the SFT adapter once more, frozen ("reference")."""
    from preference_fixtures import train_sft_adapter

    sft_dir = train_sft_adapter(base_dir, tmp_path / "sft")
    settings = PreferenceSettings(beta=0.1)
    recipe, trainer = _recipe(base_dir, settings, trl_beta=0.1, init=sft_dir)
    idx = [4, 5, 6, 7]
    ours, _, _ = recipe._batch_loss("t", recipe.train_rows, idx)
    loss = ours.losses.mean()
    loss.backward()
    our_grads = {n: g for n, g in _grads(recipe.model).items() if ".default." in n}
    oracle = _trl_loss(trainer, recipe, idx, swap=False)
    oracle.backward()
    trl_grads = {n: g for n, g in _grads(recipe.model).items() if ".default." in n}
    assert abs(float(loss) - float(oracle)) < 1e-5, (float(loss), float(oracle))
    assert trl_grads.keys() == our_grads.keys() and len(our_grads) == 16
    for name, g in our_grads.items():
        torch.testing.assert_close(g, trl_grads[name], rtol=0, atol=1e-5, msg=name)
