"""AdapterRegistry on a tiny random BERT with its LoRA bank, as InferenceEngine._load serves
the base: loading, LRU eviction, pins, in-use keys, compatibility checks, and unloading for
real (the bank's rows and tensors follow)."""

from __future__ import annotations

import gc
import json
import os
import weakref

import pytest
import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry
from tuneserve_server.modeling import ADAPTER_META

# peft calls a transformers API that transformers has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"


def key(name: str, version: int = 1) -> AdapterKey:
    return AdapterKey("default", name, version)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, make_tiny_base):
    """Four adapters for the default tiny base, written once for the module."""
    base = make_tiny_base()
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: base.write_adapter(root / name, labels=labels, seed=seed)
        for name, labels, seed in [
            ("a", ("neg", "pos"), 1),
            ("b", ("x", "y", "z"), 2),
            ("c", ("neg", "pos"), 3),
            ("d", ("p", "q"), 4),
        ]
    }


def make_registry(base, max_resident: int = 2, max_rank: int = 8) -> AdapterRegistry:
    return base.serving_registry(max_resident=max_resident, max_rank=max_rank)


def slots(registry: AdapterRegistry) -> set[str]:
    """The slot ids that hold a row of the LoRA bank."""
    return set(registry.bank._row_of)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ensure_loads_once_and_reuses(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base)
    entry = reg.ensure(key("a"), adapter_dirs["a"])
    assert reg.loads == 1
    assert entry.slot in reg.bank and slots(reg) == {entry.slot}
    assert entry.meta.labels == ("neg", "pos")
    assert entry.head.out_features == 2 and entry.size_bytes > 0
    assert reg.bank.nbytes > 0
    assert "default" not in entry.slot and entry.slot != "a"  # user names never reach the model

    again = reg.ensure(key("a"), adapter_dirs["a"])
    assert again is entry
    assert reg.loads == 1
    assert reg.resident_keys() == [key("a")]

    # Another version of the same name is another adapter with its own slot.
    v2 = reg.ensure(key("a", 2), adapter_dirs["c"])
    assert v2.slot != entry.slot and reg.loads == 2


def test_lru_eviction_at_max_resident(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base, max_resident=2)
    a = reg.ensure(key("a"), adapter_dirs["a"])
    b = reg.ensure(key("b"), adapter_dirs["b"])
    reg.ensure(key("a"), adapter_dirs["a"])  # touch a: b is now least recently used
    c = reg.ensure(key("c"), adapter_dirs["c"])
    assert set(reg.resident_keys()) == {key("a"), key("c")}
    assert reg.evictions == 1
    assert slots(reg) == {a.slot, c.slot}
    assert b.slot not in reg.bank
    # An evicted adapter comes back on demand, under a fresh slot.
    b2 = reg.ensure(key("b"), adapter_dirs["b"])
    assert b2.slot not in (a.slot, b.slot, c.slot)
    assert set(reg.resident_keys()) == {key("c"), key("b")}
    assert len(reg) == 2 == len(slots(reg))


def test_pinned_adapters_are_not_evicted(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base, max_resident=2)
    reg.ensure(key("a"), adapter_dirs["a"]).pinned = True
    reg.ensure(key("b"), adapter_dirs["b"])
    reg.ensure(key("c"), adapter_dirs["c"])  # a is the LRU but pinned: b goes
    assert set(reg.resident_keys()) == {key("a"), key("c")}
    assert reg.unload_where(lambda k: True) == [key("c")]  # unload_where skips pins too
    assert reg.resident_keys() == [key("a")]

    reg1 = make_registry(tiny_base, max_resident=1)
    reg1.ensure(key("a"), adapter_dirs["a"]).pinned = True
    with pytest.raises(FailedPrecondition, match="pinned or in use"):
        reg1.ensure(key("b"), adapter_dirs["b"])
    assert reg1.resident_keys() == [key("a")]
    assert len(slots(reg1)) == 1


def test_keep_protects_adapters_in_use_by_the_batch(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base, max_resident=2)
    reg.ensure(key("a"), adapter_dirs["a"])
    reg.ensure(key("b"), adapter_dirs["b"])
    before = slots(reg)
    in_use = {key("a"), key("b"), key("c")}
    with pytest.raises(FailedPrecondition):
        reg.ensure(key("c"), adapter_dirs["c"], keep=in_use)
    assert set(reg.resident_keys()) == {key("a"), key("b")}
    assert slots(reg) == before  # nothing was loaded for c
    reg.ensure(key("c"), adapter_dirs["c"], keep={key("a")})  # a is in use: b goes
    assert set(reg.resident_keys()) == {key("a"), key("c")}


def _write_meta(directory, **changes) -> None:
    meta = json.loads((directory / ADAPTER_META).read_text())
    meta.update(changes)
    (directory / ADAPTER_META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"base_model": "sentence-transformers/other"}, "trained on sentence-transformers/other"),
        ({"target_modules": ["query", "q_proj"]}, "q_proj"),
        ({"lora_rank": 16}, "rank 16"),
    ],
)
def test_incompatible_adapters_are_refused_before_any_weights_load(
    tiny_base, adapter_dirs, tmp_path, changes, reason
):
    # Only the metadata: if the registry touched the weights it would fail differently.
    directory = tmp_path / "meta-only"
    directory.mkdir()
    (directory / ADAPTER_META).write_text((adapter_dirs["a"] / ADAPTER_META).read_text())
    _write_meta(directory, **changes)
    reg = make_registry(tiny_base, max_rank=8)
    with pytest.raises(FailedPrecondition, match=reason):
        reg.ensure(key("bad"), directory)
    assert reg.loads == 0 and len(reg) == 0 and slots(reg) == set()


def test_a_head_that_does_not_fit_is_refused(tiny_base, adapter_dirs, tmp_path):
    import shutil

    directory = tmp_path / "mismatch"
    shutil.copytree(adapter_dirs["a"], directory)
    _write_meta(directory, labels=["one", "two", "three"])  # the head has 2 outputs
    reg = make_registry(tiny_base)
    with pytest.raises(FailedPrecondition, match="head"):
        reg.ensure(key("bad"), directory)
    assert slots(reg) == set()


def test_unload_removes_the_bank_row(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base, max_resident=4)
    start_params = param_count(reg.model)
    a = reg.ensure(key("a"), adapter_dirs["a"])
    b = reg.ensure(key("b"), adapter_dirs["b"])
    assert reg.bank.nbytes > 0 and len(reg.bank) == 2
    assert reg.unload(key("a")) is True
    assert a.slot not in reg.bank
    assert b.slot in reg.bank and len(reg.bank) == 1
    assert reg.unload(key("a")) is False
    assert reg.resident_keys() == [key("b")]
    reg.unload(key("b"))
    assert len(reg.bank) == 0 and reg.bank.nbytes == 0 and reg.bank.allocated_rows == 1
    assert param_count(reg.model) == start_params  # the bank never adds parameters to the base

    # The model still runs for the base after unloads, and gives the bare base's output.
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.inference_mode():
        with reg.bank.selecting([None]):
            out = reg.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        bare = tiny_base.fresh_encoder()(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.last_hidden_state.shape == (1, 4, 32)
    torch.testing.assert_close(out.last_hidden_state, bare.last_hidden_state, rtol=0, atol=0)


def test_unload_frees_the_adapter_tensors_at_once(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base)
    entry = reg.ensure(key("a"), adapter_dirs["a"])
    layers = reg.bank.layers.values()
    slot_tensors = [weakref.ref(t) for layer in layers for t in (layer.A, layer.B) if t is not None]
    head = weakref.ref(entry.head.weight)
    assert slot_tensors
    del entry
    gc.disable()  # freed by reference counting, without waiting for a collection
    try:
        reg.unload(key("a"))
        assert [r for r in slot_tensors if r() is not None] == []
        assert head() is None
    finally:
        gc.enable()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_loading_and_unloading_500_adapters_does_not_grow_the_model(tiny_base, adapter_dirs):
    reg = make_registry(tiny_base, max_resident=2)
    # Warm up once so one-time allocations (module wrappers, caches) are not counted.
    reg.ensure(key("a"), adapter_dirs["a"])
    reg.unload(key("a"))
    gc.collect()
    params, n_modules = param_count(reg.model), len(list(reg.model.modules()))
    rss = _rss_bytes()
    for i in range(500):  # half unloaded explicitly, half pushed out by the LRU bound
        reg.ensure(key("a", i + 1), adapter_dirs["a"])
        if i % 2 == 0:
            assert reg.unload(key("a", i + 1))
    for k in reg.resident_keys():
        reg.unload(k)
    gc.collect()
    assert param_count(reg.model) == params
    assert len(reg.bank) == 0 and reg.bank.nbytes == 0 and reg.bank.allocated_rows == 1
    assert len(list(reg.model.modules())) == n_modules
    assert len(reg) == 0 and reg.loads == 501 and reg.evictions > 0
    # A coarse backstop (measured growth here: ~0.2 MiB). The counts above catch leaked
    # slots; this catches a leak of something big per load (a model copy, file buffers).
    assert _rss_bytes() - rss < 16 * 1024 * 1024
