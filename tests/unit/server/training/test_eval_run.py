"""evaluate_targets on tiny random models saved as real model directories: per-version
predictions equal a plain peft forward of each adapter (the oracle), the stored metrics equal
scikit-learn on those predictions, the comparison's McNemar p-value equals statsmodels', the
causal-LM loss equals transformers' own loss row by row; cancellation and refusals."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from generation_fixtures import byte_tokenizer
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from tuneserve_server.domain.jobs import CausalExample, LabelledText, TaskType
from tuneserve_server.modeling import ADAPTER_META, AdapterMeta, BaseModelSource, load_head, mean_pool
from tuneserve_server.training import eval_stats
from tuneserve_server.training.eval_run import (
    BASE,
    EvalOptions,
    EvalTarget,
    EvaluationError,
    evaluate_targets,
)
from tuneserve_server.training.outcomes import JobCancelled

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

WORDS = [f"w{i}" for i in range(95)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, make_tiny_base):
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("eval-base")
    base = make_tiny_base()
    model_dir = root / "tiny-bert"
    base.encoder.save_pretrained(model_dir)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    v1 = base.write_adapter(root / "v1", labels=("neg", "neu", "pos"), seed=1)
    v2 = base.write_adapter(root / "v2", labels=("neg", "neu", "pos"), seed=2)
    v3 = base.write_adapter(root / "v3", labels=("neg", "pos"), seed=3)  # no "neu"
    return BaseModelSource(str(model_dir), "tiny-bert"), base, {"v1": v1, "v2": v2, "v3": v3}


def _rows(n: int, seed: int) -> list[LabelledText]:
    rng = np.random.default_rng(seed)
    labels = ["neg", "neu", "pos"]
    return [
        LabelledText(
            " ".join(rng.choice(WORDS, size=int(rng.integers(2, 14)))), labels[int(rng.integers(0, 3))]
        )
        for _ in range(n)
    ]


def _oracle_probs(source, base, directory: Path, texts: list[str]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.path)
    model = PeftModel.from_pretrained(base.fresh_encoder(), str(directory)).eval()
    head = load_head(directory, "cpu")
    temperature = AdapterMeta.read(directory).temperature
    out = []
    with torch.no_grad():
        for text in texts:  # one row at a time: no padding at all
            enc = tok([text], return_tensors="pt", truncation=True, max_length=128)
            pooled = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
            out.append(torch.softmax(head(pooled).double() / temperature, -1)[0].numpy())
    return np.stack(out)


def test_classification_versions_equal_peft_and_sklearn(encoder_dir):
    source, base, dirs = encoder_dir
    rows = _rows(150, 0)
    targets = [EvalTarget("intents@1", dirs["v1"]), EvalTarget("intents@2", dirs["v2"])]
    seen = []
    outcome = evaluate_targets(
        source,
        TaskType.CLASSIFICATION,
        targets,
        rows,
        EvalOptions(batch_size=16, bins=10, resamples=200, seed=3),
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (300, 300) and len(seen) == 20
    gold = [r.label for r in rows]
    labels = ("neg", "neu", "pos")
    for target, key in zip(targets, ("v1", "v2")):
        probs = _oracle_probs(source, base, dirs[key], [r.text for r in rows])
        pred = [labels[k] for k in probs.argmax(1)]
        result = outcome.target(target.name)
        assert list(result.rows.y_pred) == pred
        np.testing.assert_allclose(result.rows.confidence, probs.max(1), atol=1e-5)
        m = result.metrics
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-12)
        assert m["macro_f1"] == pytest.approx(
            skm.f1_score(gold, pred, average="macro", zero_division=0), abs=1e-12
        )
        assert m["nll"] == pytest.approx(skm.log_loss(gold, probs, labels=list(labels)), abs=1e-5)
        order = sorted(set(gold) | set(pred))
        assert result.detail["labels"] == order
        assert result.detail["confusion"] == skm.confusion_matrix(gold, pred, labels=order).tolist()
        _, _, f1, support = skm.precision_recall_fscore_support(gold, pred, labels=order, zero_division=0)
        assert [x["f1"] for x in result.detail["per_label"]] == pytest.approx(f1.tolist(), abs=1e-12)
        assert [x["support"] for x in result.detail["per_label"]] == support.tolist()
        assert len(result.detail["reliability"]) == 10
    comparison = outcome.compare("intents@1", "intents@2")
    a, b = outcome.target("intents@1").rows.correct, outcome.target("intents@2").rows.correct
    table = [
        [sum(x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))],
        [sum(y and not x for x, y in zip(a, b)), sum(not x and not y for x, y in zip(a, b))],
    ]
    exact = table[0][1] + table[1][0] < eval_stats.MCNEMAR_EXACT_BELOW
    assert comparison["mcnemar"]["p_value"] == pytest.approx(
        sm_mcnemar(table, exact=exact, correction=True).pvalue, rel=1e-9
    )
    assert [t["metric"] for t in comparison["bootstrap"]] == ["macro_f1", "nll"]
    stored = outcome.to_dict()
    assert [t["target"] for t in stored["targets"]] == ["intents@1", "intents@2"]
    assert stored["comparisons"][0]["mcnemar"]["p_value"] == comparison["mcnemar"]["p_value"]


def test_a_version_without_a_gold_label(encoder_dir):
    source, _, dirs = encoder_dir
    rows = _rows(40, 1)
    outcome = evaluate_targets(source, TaskType.CLASSIFICATION, [EvalTarget("x@3", dirs["v3"])], rows)
    m = outcome.target("x@3").metrics
    assert m["rows_with_unseen_label"] == sum(r.label == "neu" for r in rows)
    assert m["accuracy"] <= 1 - m["rows_with_unseen_label"] / len(rows)


def test_cancel_and_refusals(encoder_dir, tmp_path):
    source, base, dirs = encoder_dir
    cancel = threading.Event()
    rows = _rows(64, 2)

    def progress(done, total):
        cancel.set()

    with pytest.raises(JobCancelled):
        evaluate_targets(
            source,
            TaskType.CLASSIFICATION,
            [EvalTarget("a@1", dirs["v1"])],
            rows,
            EvalOptions(batch_size=8),
            on_progress=progress,
            cancel=cancel,
        )
    with pytest.raises(EvaluationError, match="no head"):
        evaluate_targets(source, TaskType.CLASSIFICATION, [EvalTarget(BASE, None)], rows)
    with pytest.raises(EvaluationError, match="no rows"):
        evaluate_targets(source, TaskType.CLASSIFICATION, [EvalTarget("a@1", dirs["v1"])], [])
    other = base.write_adapter(tmp_path / "other", base_model="another-base")
    with pytest.raises(EvaluationError, match="trained on another-base"):
        evaluate_targets(source, TaskType.CLASSIFICATION, [EvalTarget("o@1", other)], rows)


# ---------------------------------------------------------------- causal LM
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    root = tmp_path_factory.mktemp("eval-llama")
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    torch.manual_seed(5)
    peft_model = get_peft_model(
        LlamaForCausalLM.from_pretrained(root / "base"),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(root / "v1")
    meta = AdapterMeta(TaskType.CAUSAL_LM, "tiny-llama", (), 4, ("q_proj", "v_proj"), {}, "job-x")
    (root / "v1" / ADAPTER_META).write_text(meta.to_json())
    return BaseModelSource(str(root / "base"), "tiny-llama"), root


def test_causal_lm_loss_equals_transformers_and_generations(llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneserve_server.modeling_lm import completion_suffix
    from tuneserve_server.training.causal_lm import encode_example

    source, root = llama_dir
    rows = [CausalExample(prompt=f"say {i}", completion=f"number {i}") for i in range(7)]
    outcome = evaluate_targets(
        source,
        TaskType.CAUSAL_LM,
        [EvalTarget(BASE, None), EvalTarget("chat@1", root / "v1")],
        rows,
        EvalOptions(lm_batch_size=3, max_new_tokens=6, sample_generations=2, resamples=100),
    )
    tok = byte_tokenizer()
    suffix = completion_suffix(tok)
    for name in (BASE, "chat@1"):
        model = AutoModelForCausalLM.from_pretrained(root / "base").eval()
        if name != BASE:
            model = PeftModel.from_pretrained(model, str(root / "v1")).eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for r in rows:
                e = encode_example(tok, r, 128, train_on_prompt=False, suffix=suffix)
                n = sum(1 for x in e.labels[1:] if x != -100)
                loss = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss
                total += float(loss) * n
                tokens += n
        m = outcome.target(name).metrics
        assert m["eval_loss"] == pytest.approx(total / tokens, rel=1e-5)
        assert m["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
        assert m["eval_tokens"] == tokens
        assert len(outcome.target(name).detail["samples"]) == 2
        assert 0.0 <= m["exact_match"] <= m["contains_reference"] <= 1.0
    assert outcome.target(BASE).metrics["eval_loss"] != outcome.target("chat@1").metrics["eval_loss"]
    comparison = outcome.compare(BASE, "chat@1")
    assert comparison["mcnemar"]["metric"] == "exact_match"
    assert comparison["bootstrap"][0]["metric"] == "eval_loss"


def test_causal_lm_exact_match_counts_the_generations(llama_dir):
    """A reference set to what the model generates counts as an exact match (and contains)."""
    source, _ = llama_dir
    probe = [CausalExample(prompt="hello", completion="x")]
    first = evaluate_targets(
        source, TaskType.CAUSAL_LM, [EvalTarget(BASE, None)], probe, EvalOptions(max_new_tokens=4)
    )
    generated = first.target(BASE).detail["samples"][0]["generated"]
    assert generated
    rows = [
        CausalExample(prompt="hello", completion=generated),
        CausalExample(prompt="hello", completion="#none#"),
    ]
    m = (
        evaluate_targets(
            source,
            TaskType.CAUSAL_LM,
            [EvalTarget(BASE, None)],
            rows,
            EvalOptions(lm_batch_size=1, max_new_tokens=4),
        )
        .target(BASE)
        .metrics
    )
    assert m["exact_match"] == 0.5 and m["contains_reference"] == 0.5
