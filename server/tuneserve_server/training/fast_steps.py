"""Cheaper training steps that compute what the plain ones compute.

- `adamw`: torch's fused AdamW (one kernel over every parameter instead of a Python loop of
  small ops per tensor) where this torch has it for the device; the same update rule.
- `FrozenWeights`: under autocast, every forward casts each frozen base Linear weight to the
  autocast dtype again (autocast caches casts of trainable leaves only). Holding a cast copy
  of those weights for the whole training loop gives the very same products (the cast is the
  same rounding) without re-casting the ~22M frozen weights of the base every step. Evaluation
  swaps the float32 weights back in (`full()`), so the logits it reports stay float32 ones.
  Measured in docs/benchmarks.md (bench/training.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


def adamw(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where supported (float32 parameters on CPU or CUDA), plain otherwise."""
    params = list(params)
    fusable = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch or an unsupported device
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class FrozenWeights:
    """The frozen (requires_grad=False) weights of a model's Linear layers, held both in
    float32 and in `dtype`; `low()` / `full()` swap which one the layers use (no copy)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        self._weights = [
            m.weight
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad and m.weight.is_floating_point()
        ]
        self._full = [w.data for w in self._weights]
        self._low = [w.data.to(dtype) for w in self._weights]
        self.is_low = False

    def __len__(self) -> int:
        return len(self._weights)

    def low(self) -> None:
        for weight, data in zip(self._weights, self._low, strict=True):
            weight.data = data
        self.is_low = True

    def full(self) -> None:
        for weight, data in zip(self._weights, self._full, strict=True):
            weight.data = data
        self.is_low = False

    @contextmanager
    def in_full(self) -> Iterator[None]:
        """Float32 weights within the block, whatever was in use before."""
        was_low = self.is_low
        self.full()
        try:
            yield
        finally:
            if was_low:
                self.low()

    def release(self) -> None:
        """Back to float32 for good; the cast copies are dropped."""
        self.full()
        self._low = []
