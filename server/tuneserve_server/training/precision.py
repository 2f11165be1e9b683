"""Which dtype a recipe's training forward pass autocasts to (the `train_precision` setting)."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): only then is
    bfloat16 autocast faster than float32 here (without it, it is several times slower)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def training_autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype for the training forward pass: "float32" never autocasts,
    "bfloat16" always does, "auto" does where it pays (CUDA with bf16, a CPU with native bf16)."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16() else None
