"""Preference-tuning test data: a tiny random Llama model directory (float32, the byte-level
chat tokenizer) and a JobSpec of preference pairs that teach a reply format."""

from __future__ import annotations

from pathlib import Path

import torch
from generation_fixtures import byte_tokenizer

from tuneserve_server.domain.jobs import (
    ChatTurn,
    Hyperparameters,
    JobSpec,
    LoraSettings,
    OptimizerSettings,
    PreferenceExample,
    PreferenceSettings,
    TaskType,
)


def save_tiny_llama(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(seed)
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
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pairs(n: int, start: int = 0) -> tuple[PreferenceExample, ...]:
    """Chosen replies in the house format ("Answer: N."), rejected ones without it; every
    third pair has its prompt as chat turns with a system message."""
    out = []
    for i in range(start, start + n):
        chosen, rejected = f"Answer: {i % 3}.", f"it is {i % 3} i think"
        if i % 3 == 0:
            turns = (ChatTurn("system", "Be brief."), ChatTurn("user", f"question {i}?"))
            out.append(PreferenceExample(chosen=chosen, rejected=rejected, messages=turns))
        else:
            out.append(PreferenceExample(prompt=f"question {i}?", chosen=chosen, rejected=rejected))
    return tuple(out)


def preference_spec(
    n: int = 12,
    *,
    max_len: int = 96,
    steps: int = 6,
    lr: float = 5e-3,
    settings: PreferenceSettings = PreferenceSettings(),
) -> JobSpec:
    return JobSpec(
        "default",
        "tiny-dpo",
        TaskType.PREFERENCE,
        "req",
        pairs(n),
        pairs(4, start=100),
        Hyperparameters(
            lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
            optimizer=OptimizerSettings(
                learning_rate=lr,
                batch_size=4,
                epochs=3,
                max_steps=steps,
                warmup_ratio=0.0,
                max_seq_length=max_len,
            ),
            preference=settings,
        ),
    )


def train_sft_adapter(base_dir: Path, out: Path, steps: int = 3) -> Path:
    """A causal-LM (SFT) adapter of the tiny base on the chosen replies of `pairs(12)`, with
    random-looking LoRA B (a few steps at a high rate), for warm-starting preference runs."""
    from tuneserve_server.domain.jobs import CausalExample
    from tuneserve_server.modeling import BaseModelSource
    from tuneserve_server.training.causal_lm import CausalLMRecipe
    from tuneserve_server.training.recipe import RecipeContext

    train = tuple(
        CausalExample(messages=(*p.prompt_turns(), ChatTurn("assistant", p.chosen))) for p in pairs(12)
    )
    spec = JobSpec(
        "default",
        "tiny-sft",
        TaskType.CAUSAL_LM,
        "req",
        train,
        train[:2],
        Hyperparameters(
            lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
            optimizer=OptimizerSettings(
                learning_rate=2e-2,
                batch_size=4,
                epochs=1,
                max_steps=steps,
                warmup_ratio=0.0,
                max_seq_length=96,
            ),
        ),
    )
    CausalLMRecipe(RecipeContext(spec, BaseModelSource(str(base_dir), "tiny-llama"))).run(out)
    return out
