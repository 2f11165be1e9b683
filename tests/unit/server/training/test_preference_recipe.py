"""PreferenceRecipe on a tiny random Llama model directory: only reply tokens carry the
log-probability, truncation is counted, a run learns the preferred format (its rewards and
preference accuracy on held-out pairs beat the reference's), the adapter is a causal-LM
adapter with no second model copy, a preempted job resumes to exactly the weights of an
uninterrupted run without recomputing cached reference log-probs, and a cancel stops it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from generation_fixtures import EOS, byte_tokenizer
from preference_fixtures import preference_spec, save_tiny_llama, train_sft_adapter
from safetensors.torch import load_file

from tuneserve_server.domain.jobs import EventType, PreferenceExample, PreferenceSettings, TaskType
from tuneserve_server.modeling import AdapterMeta, BaseModelSource
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted
from tuneserve_server.training.preference import (
    PreferenceRecipe,
    collate_pairs,
    encode_pair,
    preference_loss,
    sequence_logps,
)
from tuneserve_server.training.recipe import RecipeContext
from tuneserve_server.warm_start import read_init

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-pref"))


def test_only_reply_tokens_are_scored_and_truncation_is_counted() -> None:
    tok = byte_tokenizer()
    pair = PreferenceExample(prompt="hi", chosen="Hello!", rejected="yo")
    enc = encode_pair(tok, pair, 512, suffix=EOS)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert enc.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc.chosen_ids) == "Hello!" + EOS and tok.decode(enc.rejected_ids) == "yo" + EOS
    batch = collate_pairs([enc], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2  # chosen row, then rejected row
    assert batch["completion_mask"][0].sum() == len(enc.chosen_ids)
    assert batch["completion_mask"][1].sum() == len(enc.rejected_ids)
    assert batch["completion_mask"][1, : len(enc.prompt_ids)].sum() == 0
    cut = encode_pair(
        tok, PreferenceExample(prompt="x" * 100, chosen="y" * 100, rejected="z"), 60, suffix=EOS
    )
    assert cut.truncated and len(cut.prompt_ids) == 30 and len(cut.prompt_ids) + len(cut.chosen_ids) == 60


def test_losses_by_their_formulas() -> None:
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -3.0])
    d = (pc - rc) - (pr - rr)  # [1.0, -2.0]
    out = preference_loss(pc, pr, rc, rr, PreferenceSettings(beta=0.5))
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(0.5 * d))
    torch.testing.assert_close(out.chosen_rewards, 0.5 * (pc - rc))
    smooth = preference_loss(pc, pr, rc, rr, PreferenceSettings(beta=0.5, label_smoothing=0.25))
    expect = -0.75 * torch.nn.functional.logsigmoid(0.5 * d) - 0.25 * torch.nn.functional.logsigmoid(-0.5 * d)
    torch.testing.assert_close(smooth.losses, expect)
    nc, nr = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])
    ipo = preference_loss(pc, pr, rc, rr, PreferenceSettings(beta=0.25, loss_type="ipo"), nc, nr)
    dn = (pc - rc) / nc - (pr - rr) / nr
    torch.testing.assert_close(ipo.losses, (dn - 2.0) ** 2)


def test_run_learns_the_preference_and_saves_a_causal_lm_adapter(base_dir: Path, tmp_path: Path) -> None:
    events = []
    source = BaseModelSource(str(base_dir), "tiny-llama")
    spec = preference_spec(steps=9, lr=2e-2, settings=PreferenceSettings(beta=0.5))
    recipe = PreferenceRecipe(RecipeContext(spec, source, job_id="j1", on_event=events.append))
    result = recipe.run(tmp_path)
    m = result.metrics
    assert m["validation_examples"] == 4 and m["truncated_rows"] == 0
    assert m["eval_loss"] < m["ref_eval_loss"]  # below log 2: the policy moved the right way
    assert m["rewards/accuracy"] == 1.0 and m["rewards/margin"] > 0
    assert m["rewards/chosen"] > m["rewards/rejected"]
    assert m["preference_accuracy"] >= m["ref_preference_accuracy"]
    assert m["logps/chosen"] - m["ref_logps/chosen"] == pytest.approx(m["rewards/chosen"] / 0.5, rel=1e-4)
    # each of the 12 training and 4 validation pairs met the reference exactly once
    assert m["reference_forwards"] == 16
    assert [e.type for e in events] == [EventType.EVALUATION]
    meta = AdapterMeta.read(tmp_path)
    assert (meta.task, meta.labels, meta.lora_rank) == (TaskType.CAUSAL_LM, (), 4)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    # one model in memory: the peft model wraps the base; no other copy of the weights
    assert len([m for m in recipe.model.modules() if type(m).__name__ == "LlamaForCausalLM"]) == 1


def test_preempted_job_resumes_to_the_same_weights_reusing_the_reference_cache(
    base_dir: Path, tmp_path: Path
) -> None:
    source = BaseModelSource(str(base_dir), "tiny-llama")
    whole = PreferenceRecipe(RecipeContext(preference_spec(), source))
    whole.run(tmp_path / "whole")

    preempt = threading.Event()

    def progress(p) -> None:
        if p.step == 3:
            preempt.set()

    ckpt = tmp_path / "ckpt"
    first = PreferenceRecipe(
        RecipeContext(
            preference_spec(),
            source,
            preempt=preempt,
            on_progress=progress,
            checkpoint_dir=ckpt,
            checkpoint_every=2,
        )
    )
    with pytest.raises(JobPreempted):
        first.run(tmp_path / "first")
    assert first.reference_forwards == 12  # three batches of four pairs
    resumed = PreferenceRecipe(RecipeContext(preference_spec(), source, checkpoint_dir=ckpt))
    result = resumed.run(tmp_path / "resumed")
    assert resumed.resumed_from_step == 3 and result.metrics["resumed_from_step"] == 3
    assert result.metrics["reference_forwards"] == 4  # only the validation pairs: training ones came cached
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_cancel_stops_between_steps(base_dir: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    steps = []

    def progress(p) -> None:
        steps.append(p.step)
        if p.step == 2:
            cancel.set()

    recipe = PreferenceRecipe(
        RecipeContext(
            preference_spec(), BaseModelSource(str(base_dir), "tiny"), cancel=cancel, on_progress=progress
        )
    )
    with pytest.raises(JobCancelled):
        recipe.run(tmp_path)
    assert max(steps) == 2


def test_warm_start_policy_and_reference_are_the_sft_adapter(base_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft_dir = train_sft_adapter(base_dir, tmp_path / "sft")
    source = BaseModelSource(str(base_dir), "tiny-llama")
    spec = preference_spec(steps=3, lr=2e-2)
    recipe = PreferenceRecipe(RecipeContext(spec, source, init=read_init(sft_dir)))
    recipe.setup()
    rows, idx = recipe.train_rows, [0, 1, 2, 3]
    batch = collate_pairs([rows[i] for i in idx], recipe.pad_id)
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(sft_dir)).eval()
    with torch.no_grad():
        expect, _ = sequence_logps(sft, batch)
        with sft.disable_adapter():
            base, _ = sequence_logps(sft, batch)
    ref_c, ref_r = recipe.reference_logps("t", rows, idx)
    torch.testing.assert_close(torch.cat([ref_c, ref_r]), expect)  # the reference is the SFT adapter
    assert not torch.allclose(expect, base, atol=1e-3)  # ... which is not the base
    recipe.model.eval()
    with torch.no_grad():
        policy, _ = sequence_logps(recipe.model, batch)
    torch.testing.assert_close(policy, expect)  # the policy starts as the SFT adapter
    trainable = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)

    recipe.train()
    result = recipe.finalize(tmp_path / "dpo")
    assert result.metrics["eval_loss"] < result.metrics["ref_eval_loss"]
    with torch.no_grad():  # training moved the policy, never the reference
        recipe.reference_forwards, recipe.ref_cache = 0, {}
        again_c, again_r = recipe.reference_logps("t", rows, idx)
    torch.testing.assert_close(torch.cat([again_c, again_r]), expect)
    saved = load_file(str(tmp_path / "dpo" / "adapter_model.safetensors"))
    assert saved.keys() == load_file(str(sft_dir / "adapter_model.safetensors")).keys()
    assert not (tmp_path / "dpo" / "reference").exists()  # only the policy is saved
    assert AdapterMeta.read(tmp_path / "dpo").lora_rank == 4
