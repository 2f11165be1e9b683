"""Cheaper training steps that compute what the plain ones compute.

- `adamw`: torch's fused AdamW (one kernel over every parameter instead of a Python loop of
  small ops per tensor) where this torch has it for the device; the same update rule.
- `FrozenWeights`: under autocast, every forward casts each frozen base Linear weight to the
  autocast dtype again (autocast caches casts of trainable leaves only). Holding a cast copy
  of those weights for the whole training loop gives the very same products (the cast is the
  same rounding) without re-casting the ~22M frozen weights of the base every step. Evaluation
  swaps the float32 weights back in (`full()`), so the logits it reports stay float32 ones.
  Measured in docs/benchmarks.md (bench/training.py).
- `FastDropout` / `use_fast_dropout`: nn.Dropout draws its CPU mask with `bernoulli_`, one
  generator call per element: on a MiniLM training step that was ~40% of the CPU time (the
  LoRA dropouts on every adapted layer's input, BERT's hidden dropouts). The same Bernoulli
  mask from four 16-bit lanes of each 64-bit draw of the same generator is ~4x cheaper
  (mask, scaling and backward); the drop probability is rounded to a multiple of 2**-16
  (0.1 -> 0.100006) and the kept values are scaled by 1 / (1 - that), so the expectation is
  exact. Off the CPU torch's own fused dropout is kept.
- `inference_weights`: for a forward pass that needs no gradients (the end-of-job passes over
  the training rows), every LoRA layer's product folded into a temporary copy of its base
  weight (W + scaling * B @ A, peft's `get_delta_weight`) and every frozen Linear weight held in
  the pass dtype, so each adapted Linear is one matmul instead of three plus an add; the
  model's own weights are put back untouched on exit (no merge / unmerge round trip)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


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


_LANES = 65536  # one int16 lane of a 64-bit draw: 2**16 equally likely values


class FastDropout(torch.nn.Module):
    """nn.Dropout(p) with the cheaper CPU mask described in the module docstring; identity in
    eval mode, torch's dropout on other devices. `p` stays readable (BERT's attention passes
    its dropout module's `p` to scaled_dot_product_attention)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        dropped = round(p * _LANES)
        self.effective_p = dropped / _LANES
        self._threshold = dropped - _LANES // 2  # int16 lanes >= this are kept
        self._scale = 1.0 / (1.0 - self.effective_p)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """The scaled keep mask (0 or 1 / (1 - effective_p)) in `like`'s shape and dtype."""
        n = like.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every bit random
        lanes = draws.view(torch.int16)[:n].view(like.shape)
        return (lanes >= self._threshold).to(like.dtype).mul_(self._scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.effective_p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * self.mask(x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Replace every nn.Dropout with p > 0 inside `model` by a FastDropout of the same p (in
    place; state dicts are unchanged, dropout has no parameters). Returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout and child.p > 0:
                replacement = FastDropout(child.p)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped += 1
    return swapped


@contextmanager
def inference_weights(
    model: torch.nn.Module, dtype: torch.dtype | None, adapter: bool = True
) -> Iterator[None]:
    """Within the block `model` (a peft model in eval mode, under no_grad) computes with the
    LoRA products merged into its base weights (`adapter`) or with the base weights alone
    (not `adapter`), every frozen Linear weight in `dtype` (None: as it is; the cast is
    FrozenWeights'). For passes only: the trainable parameters are not used inside. Restores
    every weight on exit."""
    from peft.tuners.lora import LoraLayer

    folded: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module in model.modules() if adapter else ():
                if not isinstance(module, LoraLayer):
                    continue
                base = module.get_base_layer()
                merged = base.weight.data
                for name in module.active_adapters:
                    # An adapter peft has merged already is in the weight (and
                    # disable_adapter below would unmerge it in place): not supported.
                    if name in getattr(module, "merged_adapters", ()):
                        raise ValueError(f"adapter {name!r} is merged into the base weights")
                    if name in module.lora_A:
                        merged = merged + module.get_delta_weight(name).to(merged.dtype)
                folded.append((base.weight, base.weight.data))
                base.weight.data = merged
        cast = FrozenWeights(model, dtype) if dtype is not None else None
        if cast is not None:
            cast.low()
        try:
            with model.disable_adapter():  # the LoRA branch is off: its product is in the weights
                yield
        finally:
            if cast is not None:
                cast.release()  # back to the (folded) float32 weights
    finally:
        for weight, data in reversed(folded):
            weight.data = data
