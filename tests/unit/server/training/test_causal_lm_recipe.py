"""CausalLMRecipe on a tiny random Llama saved as a model directory (with the byte-level chat
tokenizer): prompt masking and the end-of-turn marker, counted truncation, what run() returns
and writes, and a preempted job resumed from its checkpoint ends with exactly the weights of
an uninterrupted run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from generation_fixtures import EOS, byte_tokenizer
from safetensors.torch import load_file

from tuneserve_server.domain.jobs import (
    CausalExample,
    CausalLMSettings,
    ChatTurn,
    Hyperparameters,
    JobSpec,
    LoraSettings,
    OptimizerSettings,
    TaskType,
)
from tuneserve_server.modeling import AdapterMeta, BaseModelSource
from tuneserve_server.training.causal_lm import IGNORE, CausalLMRecipe, encode_example
from tuneserve_server.training.outcomes import JobPreempted
from tuneserve_server.training.recipe import RecipeContext

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
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
        )
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def spec(n: int = 12, *, max_len: int = 96, steps: int = 6, train_on_prompt: bool = False) -> JobSpec:
    train = tuple(CausalExample(prompt=f"question {i}?", completion=f"Answer: {i % 3}.") for i in range(n))
    val = (
        CausalExample(
            messages=(
                ChatTurn("system", "Be brief."),
                ChatTurn("user", "question 99?"),
                ChatTurn("assistant", "Answer: 0."),
            )
        ),
        CausalExample(prompt="question 7?", completion="Answer: 1."),
    )
    return JobSpec(
        "default",
        "tiny-lm",
        TaskType.CAUSAL_LM,
        "req",
        train,
        val,
        Hyperparameters(
            lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
            optimizer=OptimizerSettings(
                learning_rate=5e-3,
                batch_size=4,
                epochs=3,
                max_steps=steps,
                warmup_ratio=0.0,
                max_seq_length=max_len,
            ),
            causal_lm=CausalLMSettings(train_on_prompt=train_on_prompt, sample_generations=2),
        ),
    )


def test_only_the_reply_and_its_end_marker_carry_loss() -> None:
    tok = byte_tokenizer()
    ex = CausalExample(prompt="hi", completion="Hello!")
    enc = encode_example(tok, ex, 512, train_on_prompt=False, suffix=EOS)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert enc.prompt_len == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert enc.labels[: enc.prompt_len] == [IGNORE] * enc.prompt_len
    assert tok.decode(enc.labels[enc.prompt_len :]) == "Hello!" + EOS
    assert not enc.truncated
    everything = encode_example(tok, ex, 512, train_on_prompt=True, suffix=EOS)
    assert everything.labels == everything.input_ids
    cut = encode_example(
        tok, CausalExample(prompt="x" * 100, completion="y" * 100), 60, train_on_prompt=False, suffix=EOS
    )
    assert cut.truncated and len(cut.input_ids) == 60 and cut.prompt_len == 30


def test_run_trains_evaluates_samples_and_saves(base_dir: Path, tmp_path: Path) -> None:
    source = BaseModelSource(str(base_dir), "tiny-llama")
    recipe = CausalLMRecipe(RecipeContext(spec(max_len=96), source, job_id="j1"))
    result = recipe.run(tmp_path)
    m = result.metrics
    assert m["validation_examples"] == 2 and m["truncated_rows"] == 0
    assert m["perplexity"] == pytest.approx(torch.exp(torch.tensor(m["eval_loss"])).item(), rel=1e-5)
    assert m["eval_loss"] < m["base_eval_loss"]  # six steps on a tiny pattern already help
    assert [s["prompt"] for s in result.sample_generations] == ["question 99?", "question 7?"]
    assert result.sample_generations[1]["reference"] == "Answer: 1."
    meta = AdapterMeta.read(tmp_path)
    assert (meta.task, meta.labels, meta.lora_rank) == (TaskType.CAUSAL_LM, (), 4)
    assert meta.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (tmp_path / "adapter_model.safetensors").is_file() and not (tmp_path / "head.safetensors").exists()
    short = CausalLMRecipe(RecipeContext(spec(max_len=12, steps=1), source))
    assert short.run(tmp_path / "short").metrics["truncated_rows"] == 14


def test_preempted_job_resumes_to_the_same_weights(base_dir: Path, tmp_path: Path) -> None:
    source = BaseModelSource(str(base_dir), "tiny-llama")
    whole = CausalLMRecipe(RecipeContext(spec(), source))
    whole.run(tmp_path / "whole")

    preempt = threading.Event()
    steps: list[int] = []

    def progress(p) -> None:
        steps.append(p.step)
        if p.step == 3:
            preempt.set()

    ckpt = tmp_path / "ckpt"
    first = CausalLMRecipe(
        RecipeContext(
            spec(), source, preempt=preempt, on_progress=progress, checkpoint_dir=ckpt, checkpoint_every=2
        )
    )
    with pytest.raises(JobPreempted):
        first.run(tmp_path / "first")
    resumed = CausalLMRecipe(RecipeContext(spec(), source, checkpoint_dir=ckpt))
    result = resumed.run(tmp_path / "resumed")
    assert resumed.resumed_from_step == 3 and result.metrics["resumed_from_step"] == 3
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
