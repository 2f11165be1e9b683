"""The padding-free encoder forward of classification serving. It lives in
tuneserve_server/modeling_packed.py, a shared base module, so the training recipe's
evaluation passes run the same code (training/ never imports engine/)."""

from tuneserve_server.modeling_packed import (
    Packing,
    packed_forward,
    packed_inputs,
    packed_mean_pool,
    supports_packed,
)

__all__ = ["Packing", "packed_forward", "packed_inputs", "packed_mean_pool", "supports_packed"]
