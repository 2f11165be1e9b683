"""The optimiser-step loop the causal-LM and preference recipes share: epochs of shuffled
batches, gradient accumulation, clipping, the LR schedule, the loss EMA, progress, periodic
checkpoints and the interruption points, resuming from a TrainPosition.

A recipe supplies what differs: the loss of one batch (`batch_loss`, called with the row
indices; the loop runs backward on it), how a checkpoint is saved (`save_checkpoint`, given
the position to record), and optional hooks at the start of each epoch it trains in
(`on_epoch`) and after each optimiser step (`after_step`, e.g. a periodic evaluation).

The batches of every epoch are drawn from `random.Random(opt.seed)`, skipped epochs
included, so a resumed job sees exactly the batches the interrupted one would have; the loop
stops or checkpoints only between optimiser steps (never inside an accumulation group)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from functools import partial

import torch

from tuneserve_server.domain.jobs import JobProgress, OptimizerSettings
from tuneserve_server.observability.metrics import (
    TRAIN_EXAMPLES_PER_SECOND,
    TRAIN_LOSS,
    TRAIN_STEP,
    TRAIN_TOTAL_STEPS,
)
from tuneserve_server.training.batching import shuffled_batches
from tuneserve_server.training.checkpoint import TrainPosition
from tuneserve_server.training.recipe import RecipeContext

MAX_GRAD_NORM = 1.0


def total_steps(opt: OptimizerSettings, n_rows: int) -> int:
    """Optimiser steps of a run over `n_rows` training rows: epochs x steps per epoch (an
    epoch's last accumulation group may be short), capped by max_steps when set."""
    accum = max(1, opt.gradient_accumulation_steps)
    batches_per_epoch = math.ceil(n_rows / opt.batch_size)
    total = math.ceil(batches_per_epoch / accum) * opt.epochs
    return min(total, opt.max_steps) if opt.max_steps else total


def make_optimizer(params: list[torch.nn.Parameter], opt: OptimizerSettings, total: int):
    """AdamW over `params` and a linear schedule with warmup over `total` steps."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(total * opt.warmup_ratio), total)
    return optimizer, schedule


def _nothing(*_: object) -> None:
    return None


class OptimiserLoop:
    """One run of the loop (see the module docstring). `examples_this_run` counts the rows
    trained on since this run started (not before a resume)."""

    def __init__(
        self,
        ctx: RecipeContext,
        opt: OptimizerSettings,
        n_rows: int,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        total: int,
        resumed_from_step: int = 0,
    ) -> None:
        self.ctx = ctx
        self.opt = opt
        self.n_rows = n_rows
        self.params = params
        self.optimizer = optimizer
        self.schedule = schedule
        self.total = total
        self.resumed_from_step = resumed_from_step
        self.examples_this_run = 0

    def run(
        self,
        pos: TrainPosition,
        *,
        batch_loss: Callable[[list[int]], torch.Tensor],
        save_checkpoint: Callable[[TrainPosition], None],
        on_epoch: Callable[[int], None] = _nothing,
        after_step: Callable[[TrainPosition], None] = _nothing,
    ) -> TrainPosition:
        """Train from `pos` to `total` steps; returns the final position."""
        opt, total, ctx = self.opt, self.total, self.ctx
        accum = max(1, opt.gradient_accumulation_steps)
        rng = random.Random(opt.seed)
        TRAIN_STEP.set(pos.step)
        TRAIN_TOTAL_STEPS.set(total)
        TRAIN_LOSS.set(math.nan if pos.loss_ema is None else pos.loss_ema)
        TRAIN_EXAMPLES_PER_SECOND.set(0)
        ctx.on_progress(JobProgress(pos.step, total, pos.epoch, pos.loss_ema))
        started, seen_at_start = time.monotonic(), pos.examples_seen
        pending, pending_loss, pending_rows = 0, 0.0, 0
        for epoch in range(1, opt.epochs + 1):
            batches = shuffled_batches(self.n_rows, opt.batch_size, rng)  # drawn even when skipped
            if epoch < pos.epoch:
                continue
            on_epoch(epoch)
            for number, idx in enumerate(batches):
                if epoch == pos.epoch and number < pos.batches_done:
                    continue
                if pos.step >= total:
                    break
                if pending == 0:  # between optimiser steps: the only place to stop or checkpoint
                    ctx.interruption_point(partial(save_checkpoint, pos))
                loss = batch_loss(idx)
                (loss / accum).backward()
                pending += 1
                pending_loss += float(loss.detach()) / accum
                pending_rows += len(idx)
                if pending < accum and number + 1 < len(batches):
                    continue
                torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                value = pending_loss * accum / pending
                pos = TrainPosition(
                    step=pos.step + 1,
                    epoch=epoch,
                    batches_done=number + 1,
                    loss_ema=value if pos.loss_ema is None else 0.9 * pos.loss_ema + 0.1 * value,
                    examples_seen=pos.examples_seen + pending_rows,
                )
                pending, pending_loss, pending_rows = 0, 0.0, 0
                self._report(pos, epoch, started, seen_at_start)
                every = ctx.checkpoint_every
                if every and pos.step % every == 0 and pos.step < total:
                    save_checkpoint(pos)
                after_step(pos)
        return pos

    def _report(self, pos: TrainPosition, epoch: int, started: float, seen_at_start: int) -> None:
        self.examples_this_run = pos.examples_seen - seen_at_start
        elapsed = time.monotonic() - started
        rate = self.examples_this_run / elapsed if elapsed > 0 else None
        steps_done_here = pos.step - self.resumed_from_step
        eta = elapsed / steps_done_here * (self.total - pos.step) if steps_done_here > 0 else None
        TRAIN_STEP.set(pos.step)
        TRAIN_LOSS.set(pos.loss_ema)
        if rate:
            TRAIN_EXAMPLES_PER_SECOND.set(rate)
        lr = self.schedule.get_last_lr()[0]
        self.ctx.on_progress(JobProgress(pos.step, self.total, epoch, pos.loss_ema, lr, rate, eta))
