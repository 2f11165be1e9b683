"""Training defaults that follow the data size (issue #17), for a classification job whose caller
left the step budget unset (neither `epochs` nor `max_steps`).

The rule is a step budget with a floor and a cap on epochs: as many epochs as it takes to reach
MIN_STEPS optimiser steps, never fewer than BASE_EPOCHS (today's default: 4 epochs of 9000
Banking77 rows are 1128 steps, far above the floor, so large sets train exactly as before) and
never more than MAX_EPOCHS (so 100 rows do not loop for hundreds of epochs). When that takes
more than BASE_EPOCHS, the learning rate the caller left unset is SMALL_DATA_LR (many passes
over few rows overfit at the large-data rate). Batch size and warmup ratio keep their defaults:
the sweep behind the rule (bench/small_data.py, docs/benchmarks.md) held them fixed.

`resolve` is pure: the submit path (training/validation.py) calls it with the number of rows the
adapter trains on, the chosen values go into the job's hyperparameters, and the job's first
event names them."""

from __future__ import annotations

import math

from tuneserve_server.domain.jobs import OptimizerSettings

BASE_EPOCHS = OptimizerSettings.epochs  # 4
MIN_STEPS = 220
MAX_EPOCHS = 40
SMALL_DATA_LR = 2e-3
AUTO_FIELDS = ("epochs", "learning_rate", "batch_size", "warmup_ratio")


def resolve(train_rows: int, batch_size: int | None = None, accumulation: int = 1) -> dict[str, float | int]:
    """The optimizer settings for `train_rows` training rows: epochs, learning_rate, batch_size,
    warmup_ratio (`batch_size` when the caller set it: the steps follow it)."""
    batch = batch_size or OptimizerSettings.batch_size
    steps_per_epoch = max(1, math.ceil(math.ceil(max(train_rows, 1) / batch) / max(1, accumulation)))
    epochs = min(MAX_EPOCHS, max(BASE_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))
    return {
        "epochs": epochs,
        "learning_rate": SMALL_DATA_LR if epochs > BASE_EPOCHS else OptimizerSettings.learning_rate,
        "batch_size": batch,
        "warmup_ratio": OptimizerSettings.warmup_ratio,
    }
