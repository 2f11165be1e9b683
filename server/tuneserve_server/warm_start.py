"""Continued training: start a new version from a stored one (issue 13 item 3).

Neutral like modeling.py (training uses it, and so may any recipe: classification, causal
LM, preference tuning warm-started from an SFT adapter); it reads only the on-disk adapter
format, never the engine.

* `read_init(directory)` reads what a stored version was trained with (task, base model,
  labels, rank, alpha, target modules) from its files, so the services can check a Train
  request against it before queueing, and the worker can load it.
* `load_lora_weights(peft_model, directory)` copies the stored LoRA factors into a freshly
  built peft model with the same rank and targets (refuses a mismatch).
* `warm_head(head, labels, init)` copies the stored head's rows into a new head by label
  name: labels the init version had keep their rows, new labels keep the fresh rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.modeling import HEAD_FILE, AdapterMeta

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class InitAdapter:
    """A stored version as continued training needs it."""

    directory: Path
    task: TaskType
    base_model: str
    labels: tuple[str, ...]
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


def read_init(directory: Path) -> InitAdapter:
    meta = AdapterMeta.read(directory)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    targets = config.get("target_modules") or meta.target_modules
    if isinstance(targets, str):  # peft allows a regex string; ours are always lists
        targets = [targets]
    return InitAdapter(
        directory=directory,
        task=meta.task,
        base_model=meta.base_model,
        labels=tuple(meta.labels),
        rank=int(config.get("r", meta.lora_rank)),
        alpha=float(config.get("lora_alpha", 2 * meta.lora_rank)),
        target_modules=tuple(sorted(targets)),
    )


def load_lora_weights(model: torch.nn.Module, init: InitAdapter) -> int:
    """Copy the stored LoRA factors into `model` (a peft model built with the same rank and
    targets). Returns how many tensors were loaded; FailedPrecondition when the stored
    factors do not cover the model's LoRA layers or their shapes differ."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    stored = load_file(str(init.directory / ADAPTER_WEIGHTS), device="cpu")
    wanted = get_peft_model_state_dict(model)

    def canon(key: str) -> str:  # peft saves without the adapter name; the live dict may have it
        return key.replace(".default.", ".").replace(".default", "")

    by_canon = {canon(k): v for k, v in stored.items()}
    missing = [k for k in wanted if canon(k) not in by_canon]
    extra = sorted(set(by_canon) - {canon(k) for k in wanted})
    if missing or extra:
        first = missing[0] if missing else extra[0]
        raise FailedPrecondition(
            f"the init_from adapter's LoRA factors do not match the new adapter's ({len(missing)} "
            f"missing, {len(extra)} extra; first: {first}): its target modules differ"
        )
    for key, value in wanted.items():
        if by_canon[canon(key)].shape != value.shape:
            raise FailedPrecondition(
                f"the init_from adapter's {key} has shape {tuple(by_canon[canon(key)].shape)}, "
                f"the new adapter's {tuple(value.shape)}: its rank differs"
            )
    state = {k: by_canon[canon(k)].to(value.dtype) for k, value in wanted.items()}
    set_peft_model_state_dict(model, state)
    return len(state)


def warm_head(head: torch.nn.Linear, labels: tuple[str, ...], init: InitAdapter) -> list[str]:
    """Copy the init head's rows into `head` (output order `labels`) by label name; returns
    the labels that kept a fresh row (new in this version)."""
    tensors = load_file(str(init.directory / HEAD_FILE), device="cpu")
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.shape[1] != head.in_features or weight.shape[0] != len(init.labels):
        raise FailedPrecondition("the init_from adapter's head does not fit its labels or this base model")
    row = {label: i for i, label in enumerate(init.labels)}
    fresh = []
    with torch.no_grad():
        for i, label in enumerate(labels):
            j = row.get(label)
            if j is None:
                fresh.append(label)
                continue
            head.weight[i].copy_(weight[j].to(head.weight.dtype))
            head.bias[i].copy_(bias[j].to(head.bias.dtype))
    return fresh
