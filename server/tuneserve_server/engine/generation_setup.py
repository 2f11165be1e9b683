"""Serving a causal LM: load the base (through the GGUF cache), give it the gathered LoRA bank
(engine/lora_batched.py: each row of a decode step through its own adapter, one gathered
product per layer, as classification serving does), build the registry and the decoding
loop. Runs on the engine's torch thread at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneserve_server.config import Settings
from tuneserve_server.engine.generation_runner import GenerationRunner
from tuneserve_server.engine.lora_batched import LoraBank
from tuneserve_server.engine.registry import AdapterRegistry
from tuneserve_server.modeling import (
    BaseModelSource,
    default_target_modules,
    module_names,
)
from tuneserve_server.modeling_lm import eos_token_ids, load_causal_lm
from tuneserve_server.storage.adapter_store import AdapterStore


@dataclass
class CausalServing:
    tokenizer: Any
    registry: AdapterRegistry
    runner: GenerationRunner
    dtype: torch.dtype
    linear_modules: set[str]
    default_targets: tuple[str, ...]
    max_positions: int


def load_causal_serving(
    settings: Settings, source: BaseModelSource, adapter_store: AdapterStore
) -> CausalServing:
    dtype = getattr(torch, settings.serving_dtype)
    tokenizer, lm = load_causal_lm(source.path, settings.device, settings.model_cache_path, dtype)
    linear = module_names(lm) - {"lm_head"}
    targets = default_target_modules(lm)
    max_positions = int(getattr(lm.config, "max_position_embeddings", 2048))
    eos = eos_token_ids(tokenizer, lm)
    bank = LoraBank(lm, linear, capacity=settings.max_resident_adapters, dtype=dtype)
    registry = AdapterRegistry(
        lm,
        base_model_id=source.model_id,
        linear_modules=linear,
        hidden_size=lm.config.hidden_size,
        max_resident=settings.max_resident_adapters,
        max_rank=settings.max_lora_rank,
        device=settings.device,
        dtype=dtype,
        bank=bank,
    )
    runner = GenerationRunner(
        tokenizer,
        registry,
        adapter_store,
        device=settings.device,
        eos_ids=eos,
        max_rows=settings.generation_batch_rows,
        max_positions=max_positions,
    )
    with torch.inference_mode():  # warm-up: first-call allocations happen now, not on a user
        enc = tokenizer(["warm up"], return_tensors="pt").to(settings.device)
        with bank.selecting([None], settings.device):
            lm(**enc)
    return CausalServing(tokenizer, registry, runner, dtype, linear, targets, max_positions)
