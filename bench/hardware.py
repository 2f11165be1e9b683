"""What the hardware can do, for the benchmarks' "fraction of the compute bound" lines:
the measured matmul rate of this machine (float32, bfloat16; CPU or CUDA) and the FLOPs a
token costs through an encoder (every Linear, the LoRA products, attention).

    python bench/hardware.py                 # print the rates here
    python bench/hardware.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable


def matmul_rate(
    dtype_name: str = "float32", device: str = "cpu", size: int = 1024, seconds: float = 1.0
) -> float:
    """FLOP/s of one (size x size) @ (size x size) product in `dtype_name` on `device`, best of
    rounds over about `seconds` (torch's own intra-op threads as set by the caller)."""
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up (and the first-call allocations / kernel selection)
        torch.mm(a, b, out=out)
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 1 if device == "cpu" else 20
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * size**3 / best


def encoder_flops_per_token(
    model, mean_tokens: float, lora_rank: int = 0, lora_targets: Iterable[str] = ()
) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) one real token costs in a forward through `model`'s
    encoder layers: every nn.Linear (2*in*out), a LoRA product on the named targets
    (2*r*(in+out)), and attention's two products (2 * 2 * mean_tokens * hidden per layer, the
    sequence attending to itself). Embeddings, LayerNorm and activations are not counted."""
    import torch

    targets = set(lora_targets)
    linear = lora = 0.0
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "pooler" in path:  # the pooler: not on the token path
            continue
        name = path.removesuffix(".base").rsplit(".", 1)[-1]  # .base: a layer the LoRA bank wraps
        linear += 2 * module.in_features * module.out_features
        if lora_rank and name in targets:
            lora += 2 * lora_rank * (module.in_features + module.out_features)
    config = model.config
    attention = 2 * 2 * mean_tokens * config.hidden_size * config.num_hidden_layers
    return {"linear": linear, "lora": lora, "attention": attention, "total": linear + lora + attention}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for dtype in ("float32", "bfloat16"):
        print(f"{dtype} matmul on {args.device}: {matmul_rate(dtype, args.device) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
