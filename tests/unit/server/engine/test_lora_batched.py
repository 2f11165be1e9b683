"""The gathered batched LoRA bank (engine/lora_batched.py) on a tiny random BERT: a mixed
batch over adapters of different ranks (and base rows) gives what peft's `adapter_names=`
gives and what each adapter alone gives, in float32 and bfloat16; the bank's rows and ranks
grow and shrink with the resident set; unsupported adapters are refused."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest
import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.engine.lora_batched import LoraBank, read_lora
from tuneserve_server.modeling import module_names

# peft calls a transformers API that transformers has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

# name -> (rank, targets, seed): different ranks and target sets on purpose
ADAPTERS = {
    "r2": (2, ("query", "value"), 1),
    "r4": (4, ("query", "value", "dense"), 2),
    "r8": (8, ("query", "key", "value", "dense"), 3),
    "r3": (3, ("dense",), 4),
}
# each input row's adapter; None: the base model
ROW_ADAPTERS = ["r2", None, "r8", "r4", "r2", "r3", None, "r8", "r4"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("lora")
    return {
        name: tiny_base.write_adapter(root / name, rank=rank, targets=targets, seed=seed)
        for name, (rank, targets, seed) in ADAPTERS.items()
    }


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 100, (len(ROW_ADAPTERS), 6), generator=gen)
    mask = torch.ones_like(ids)
    for row, length in enumerate([6, 3, 5, 6, 2, 4, 6, 1, 5]):  # padded rows, as in a real batch
        mask[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def bank_model(base, dirs, names, dtype=torch.float32):
    encoder = base.fresh_encoder().to(dtype)
    bank = LoraBank(encoder, module_names(encoder), capacity=8, dtype=dtype)
    for name in names:
        bank.install(name, read_lora(dirs[name], dtype=dtype, module_paths=bank.module_paths()))
    return encoder, bank


def peft_mixed(base, dirs, inputs, dtype=torch.float32) -> torch.Tensor:
    model = base.peft_model().to(dtype)
    for name in ADAPTERS:
        model.load_adapter(str(dirs[name]), adapter_name=name, autocast_adapter_dtype=False)
        for pname, param in model.named_parameters():
            if f".{name}." in pname:
                param.data = param.data.to(dtype)
    model.eval()
    names = ["__base__" if a is None else a for a in ROW_ADAPTERS]
    with torch.inference_mode():
        return model(**inputs, adapter_names=names).last_hidden_state


def bank_mixed(encoder, bank, inputs, rows=ROW_ADAPTERS) -> torch.Tensor:
    with torch.inference_mode(), bank.selecting(rows):
        return encoder(**inputs).last_hidden_state


def test_a_mixed_batch_equals_peft_adapter_names(tiny_base, dirs, inputs):
    encoder, bank = bank_model(tiny_base, dirs, ADAPTERS)
    got = bank_mixed(encoder, bank, inputs)
    want = peft_mixed(tiny_base, dirs, inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The adapters do change the output: the comparison is not between two base passes.
    base_rows = bank_mixed(encoder, bank, inputs, [None] * len(ROW_ADAPTERS))
    assert not torch.allclose(got[0], base_rows[0], atol=1e-3)


def test_each_row_equals_its_adapter_alone_and_base_rows_the_base(tiny_base, dirs, inputs):
    from peft import PeftModel

    encoder, bank = bank_model(tiny_base, dirs, ADAPTERS)
    got = bank_mixed(encoder, bank, inputs)
    with torch.inference_mode():
        plain = tiny_base.fresh_encoder()(**inputs).last_hidden_state
    for name in ADAPTERS:
        alone = PeftModel.from_pretrained(tiny_base.fresh_encoder(), str(dirs[name])).eval()
        with torch.inference_mode():
            want = alone(**inputs).last_hidden_state
        rows = [i for i, a in enumerate(ROW_ADAPTERS) if a == name]
        torch.testing.assert_close(got[rows], want[rows], rtol=1e-5, atol=1e-5)
    base_rows = [i for i, a in enumerate(ROW_ADAPTERS) if a is None]
    torch.testing.assert_close(got[base_rows], plain[base_rows], rtol=1e-5, atol=1e-5)


def test_one_adapter_for_every_row_takes_the_same_result(tiny_base, dirs, inputs):
    encoder, bank = bank_model(tiny_base, dirs, ADAPTERS)
    everyone = ["r8"] * len(ROW_ADAPTERS)
    uniform = bank_mixed(encoder, bank, inputs, everyone)  # the no-gather path
    mixed = bank_mixed(encoder, bank, inputs, ROW_ADAPTERS)  # the gathered path
    rows = [i for i, a in enumerate(ROW_ADAPTERS) if a == "r8"]
    torch.testing.assert_close(uniform[rows], mixed[rows], rtol=1e-5, atol=1e-5)


def test_bfloat16_mixed_batch_matches_peft_in_bfloat16(tiny_base, dirs, inputs):
    encoder, bank = bank_model(tiny_base, dirs, ADAPTERS, dtype=torch.bfloat16)
    got = bank_mixed(encoder, bank, inputs)
    assert got.dtype == torch.bfloat16
    want = peft_mixed(tiny_base, dirs, inputs, dtype=torch.bfloat16)
    want32 = peft_mixed(tiny_base, dirs, inputs)
    # bfloat16 keeps 8 bits of mantissa: compare at its resolution, and against float32.
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
    torch.testing.assert_close(got.float(), want32, rtol=0.05, atol=0.05)


# ---------------------------------------------------------------- bookkeeping
def test_rows_and_ranks_follow_the_resident_set(tiny_base, dirs, inputs):
    encoder, bank = bank_model(tiny_base, dirs, [])
    query = next(layer for path, layer in bank.layers.items() if path.endswith("self.query"))
    key_layer = next(layer for path, layer in bank.layers.items() if path.endswith("self.key"))
    assert bank.nbytes == 0 and query.A is None
    for name in ("r2", "r4"):
        bank.install(name, read_lora(dirs[name], dtype=torch.float32, module_paths=bank.module_paths()))
    assert query.rank() == 4 and key_layer.A is None  # neither targets `key`
    bank.install("r8", read_lora(dirs["r8"], dtype=torch.float32, module_paths=bank.module_paths()))
    assert query.rank() == 8 and key_layer.rank() == 8
    assert bank.remove("r8") is True and bank.remove("r8") is False
    assert query.rank() == 4 and key_layer.A is None  # padding shrinks with the widest adapter
    # What is left still computes as before r8 came and went.
    rows = ["r2", "r4", None, "r2", "r4", None, "r2", "r4", None]
    after = bank_mixed(encoder, bank, inputs, rows)
    fresh_encoder, fresh = bank_model(tiny_base, dirs, ["r2", "r4"])
    torch.testing.assert_close(after, bank_mixed(fresh_encoder, fresh, inputs, rows), rtol=1e-6, atol=1e-6)
    bank.remove("r2")
    bank.remove("r4")
    assert bank.nbytes == 0 and len(bank) == 0 and bank.allocated_rows == 1


def test_rows_grow_to_capacity_and_compact_when_adapters_leave(tiny_base, dirs, inputs):
    encoder, bank = bank_model(tiny_base, dirs, [])
    weights = read_lora(dirs["r4"], dtype=torch.float32, module_paths=bank.module_paths())
    for i in range(8):
        bank.install(f"s{i}", weights)
    assert bank.allocated_rows == 9
    with pytest.raises(FailedPrecondition, match="full"):
        bank.install("s8", weights)
    full_rows = bank_mixed(encoder, bank, inputs, ["s7"] * len(ROW_ADAPTERS))
    for i in range(7):
        bank.remove(f"s{i}")
    assert bank.allocated_rows < 9  # compacted: s7 moved to a low row
    torch.testing.assert_close(
        bank_mixed(encoder, bank, inputs, ["s7"] * len(ROW_ADAPTERS)), full_rows, rtol=0, atol=0
    )


def test_many_install_remove_cycles_keep_memory_flat_and_free_at_once(tiny_base, dirs):
    encoder, bank = bank_model(tiny_base, dirs, [])
    weights = {n: read_lora(dirs[n], dtype=torch.float32, module_paths=bank.module_paths()) for n in ADAPTERS}
    bank.install("warm", weights["r8"])
    peak = bank.nbytes
    bank.remove("warm")
    for i in range(300):
        bank.install(f"a{i}", weights[list(ADAPTERS)[i % 4]])
        bank.install(f"b{i}", weights["r8"])
        assert bank.nbytes <= 4 * peak
        bank.remove(f"a{i}")
        bank.remove(f"b{i}")
    assert bank.nbytes == 0 and len(bank) == 0 and bank.allocated_rows == 1
    assert all(layer.A is None and not layer.ranks for layer in bank.layers.values())
    assert sum(p.numel() for p in encoder.parameters()) == sum(
        p.numel() for p in tiny_base.fresh_encoder().parameters()
    )  # the base is held once, never copied
    # The stacked tensors go as soon as the last adapter leaves (reference counting, no gc pass).
    bank.install("x", weights["r4"])
    stacked = [weakref.ref(layer.A) for layer in bank.layers.values() if layer.A is not None]
    assert stacked
    gc.disable()
    try:
        bank.remove("x")
        assert [r for r in stacked if r() is not None] == []
    finally:
        gc.enable()


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "biases"),
        ({"alpha_pattern": {"query": 3}}, "alpha_pattern"),
        ({"modules_to_save": ["classifier"]}, "modules_to_save"),
    ],
)
def test_adapters_the_product_cannot_reproduce_are_refused(dirs, tmp_path, tiny_base, change, reason):
    directory = tmp_path / "odd"
    shutil.copytree(dirs["r4"], directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    config.update(change)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    _, bank = bank_model(tiny_base, dirs, [])
    with pytest.raises(FailedPrecondition, match=reason):
        read_lora(directory, dtype=torch.float32, module_paths=bank.module_paths())


def test_weights_for_a_layer_the_model_lacks_are_refused(dirs, tiny_base):
    _, bank = bank_model(tiny_base, dirs, [])
    paths = {p for p in bank.module_paths() if not p.endswith("self.value")}
    with pytest.raises(FailedPrecondition, match="lacks"):
        read_lora(dirs["r4"], dtype=torch.float32, module_paths=paths)


def _rss_mib() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_removing_every_adapter_hands_the_memory_back():
    """~120 MiB of stacked factors: after the last adapter leaves, RSS is back near where it
    started (the bank frees its tensors and asks the allocator to return the pages)."""
    from tuneserve_server.engine.lora_batched import LoraWeights

    layers = torch.nn.Sequential(
        *[torch.nn.Linear(384, 384) for _ in range(24)], *[torch.nn.Linear(384, 1536) for _ in range(6)]
    )
    gc.collect()
    start = _rss_mib()
    bank = LoraBank(layers, {str(i) for i in range(30)}, capacity=64, dtype=torch.float32)
    weights = LoraWeights(
        {
            path: (torch.randn(layer.in_features, 16), torch.randn(16, layer.out_features))
            for path, layer in bank.layers.items()
        }
    )
    for i in range(64):
        bank.install(f"s{i}", weights)
    assert bank.nbytes > 100 * 2**20 and _rss_mib() - start > 100
    for i in range(64):
        bank.remove(f"s{i}")
    del weights
    gc.collect()
    assert bank.nbytes == 0
    assert _rss_mib() - start < 24


# ---------------------------------------------------------------- packed tokens, many adapters
MANY = 12  # distinct adapters in one packed batch: above every dtype's LOOP_MAX_ADAPTERS


@pytest.fixture(scope="module")
def many_dirs(tmp_path_factory, tiny_base):
    """Twelve adapters of ranks 1..8 on different target sets; some skip whole layers."""
    root = tmp_path_factory.mktemp("many")
    target_sets = [("query", "value"), ("query", "key", "value", "dense"), ("dense",), ("key", "value")]
    return {
        f"m{k}": tiny_base.write_adapter(
            root / f"m{k}", rank=1 + k % 8, targets=target_sets[k % 4], seed=100 + k
        )
        for k in range(MANY)
    }


@pytest.mark.parametrize("loop_max", [None, 0, 10**6], ids=["default", "always-bmm", "always-loop"])
def test_packed_tokens_over_many_adapters_equal_peft(tiny_base, many_dirs, loop_max):
    """A packed forward whose rows name 12 distinct adapters (two rows each, none adjacent to
    its twin, of mixed lengths) plus base rows, through both LoRA strategies (one padded bmm
    pair per layer, one addmm pair per run): each row equals peft's `adapter_names=` row."""
    from tuneserve_server.engine.packed import packed_forward

    gen = torch.Generator().manual_seed(11)
    names = list(many_dirs)
    slots: list[str | None] = [*names, None, *names[::-1], None, None]
    lengths = [1 + int(torch.randint(0, 9, (1,), generator=gen)) for _ in slots]
    ids = [torch.randint(3, 100, (n,), generator=gen).tolist() for n in lengths]

    encoder = tiny_base.fresh_encoder()
    bank = LoraBank(encoder, module_names(encoder), capacity=16, dtype=torch.float32)
    for name in names:
        bank.install(name, read_lora(many_dirs[name], dtype=torch.float32, module_paths=bank.module_paths()))
    if loop_max is not None:
        bank.loop_max_adapters = loop_max
    with torch.inference_mode(), bank.selecting_tokens(slots, lengths):
        assert (bank.groups is not None) == (loop_max != 10**6)
        packed, _ = packed_forward(encoder, ids, "cpu")

    model = tiny_base.peft_model()
    for name in names:
        model.load_adapter(str(many_dirs[name]), adapter_name=name)
    model.eval()
    longest = max(lengths)
    input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.inference_mode():
        want = model(
            input_ids=input_ids,
            attention_mask=mask,
            adapter_names=["__base__" if s is None else s for s in slots],
        ).last_hidden_state
    torch.testing.assert_close(packed, want[mask.bool()], rtol=1e-5, atol=1e-5)
    # The adapters do change the tokens: not a comparison of two base passes.
    with torch.inference_mode(), bank.selecting_tokens([None] * len(slots), lengths):
        bare, _ = packed_forward(encoder, ids, "cpu")
    assert (bare[: lengths[0]] - packed[: lengths[0]]).abs().max() > 1e-3
