"""Training checkpoints: LoRA weights, head, optimiser, schedule, RNG and data position, so
a job that loses its worker (kill -9, preemption, SIGTERM) continues where it stopped.

A checkpoint directory is replaced atomically: the new one is written and fsynced under a
temporary name, the old one is renamed aside, the new one renamed into place, the old one
removed. A crash between the two renames leaves `<dir>.old`, which `load` falls back to."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneserve_server.modeling import load_head, save_head

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "trainer.pt"
BEST_FILE = "best.safetensors"  # the best evaluation's weights (and whatever the recipe adds)


@dataclass
class TrainPosition:
    """Where training stands: `batches_done` batches of `epoch` (1-based) are done. With
    gradient accumulation `step` counts optimiser steps and checkpoints are only taken
    between them, so `batches_done` never ends inside an accumulation group."""

    step: int = 0
    epoch: int = 1
    batches_done: int = 0
    loss_ema: float | None = None
    examples_seen: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Extras:
    """What a recipe keeps besides the training state: its best evaluation's tensors and a
    JSON-able dict (best-metric bookkeeping, timings)."""

    best: dict[str, torch.Tensor] | None = None
    state: dict | None = None


def save(
    directory: Path,
    model: torch.nn.Module,
    head: torch.nn.Linear | None,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    position: TrainPosition,
    extras: Extras | None = None,
) -> None:
    from peft import get_peft_model_state_dict

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / ADAPTER_FILE))
    if head is not None:
        save_head(tmp, head)
    extras = extras or Extras()
    if extras.best:
        save_file({k: v.detach().cpu().contiguous() for k, v in extras.best.items()}, str(tmp / BEST_FILE))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "position": asdict(position),
            "extras": extras.state or {},
            "saved_at": time.time(),
        },
        tmp / STATE_FILE,
    )
    for item in tmp.iterdir():
        with open(item, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def _newest(directory: Path) -> Path | None:
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load(
    directory: Path,
    model: torch.nn.Module,
    head: torch.nn.Linear | None,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> TrainPosition | None:
    """Restore the newest complete checkpoint into the given objects; None if there is none."""
    restored = load_with_extras(directory, model, head, optimizer, schedule)
    return None if restored is None else restored[0]


def load_with_extras(
    directory: Path,
    model: torch.nn.Module,
    head: torch.nn.Linear | None,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainPosition, Extras] | None:
    """`load`, plus the recipe's extras saved with the same checkpoint."""
    from peft import set_peft_model_state_dict

    candidate = _newest(directory)
    if candidate is None:
        return None
    set_peft_model_state_dict(model, load_file(str(candidate / ADAPTER_FILE)))
    if head is not None:
        saved_head = load_head(candidate, str(next(head.parameters()).device))
        with torch.no_grad():
            head.weight.copy_(saved_head.weight)
            head.bias.copy_(saved_head.bias)
    state = torch.load(candidate / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    best = load_file(str(candidate / BEST_FILE)) if (candidate / BEST_FILE).is_file() else None
    return TrainPosition(**state["position"]), Extras(best, dict(state.get("extras") or {}))


def remove(directory: Path) -> None:
    for path in (directory, directory.with_name(directory.name + ".old")):
        shutil.rmtree(path, ignore_errors=True)
    for stale in directory.parent.glob(f"{directory.name}.tmp-*") if directory.parent.exists() else ():
        shutil.rmtree(stale, ignore_errors=True)
