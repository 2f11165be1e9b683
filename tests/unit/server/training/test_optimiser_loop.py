"""The shared optimiser-step loop (training/optimiser_loop.py) on a tiny linear model: step
counting with gradient accumulation and max_steps, the hooks, and a run preempted between
steps and resumed from its saved position ending with the same weights as one that was not."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneserve_server.domain.jobs import (
    CausalExample,
    Hyperparameters,
    JobSpec,
    OptimizerSettings,
    TaskType,
)
from tuneserve_server.modeling import BaseModelSource
from tuneserve_server.training.checkpoint import TrainPosition
from tuneserve_server.training.optimiser_loop import OptimiserLoop, make_optimizer, total_steps
from tuneserve_server.training.outcomes import JobPreempted
from tuneserve_server.training.recipe import RecipeContext

ROWS = 10
OPT = OptimizerSettings(
    learning_rate=0.05, batch_size=3, epochs=3, warmup_ratio=0.25, gradient_accumulation_steps=2
)


def context(tmp_path, **kw) -> RecipeContext:
    spec = JobSpec(
        "default",
        "a",
        TaskType.CAUSAL_LM,
        "r",
        (CausalExample(prompt="q", completion="a"),),
        (),
        Hyperparameters(),
    )
    return RecipeContext(spec, BaseModelSource(str(tmp_path), "m"), **kw)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(ROWS, generator=g)


def setup(opt: OptimizerSettings):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 1)
    params = list(model.parameters())
    total = total_steps(opt, ROWS)
    optimizer, schedule = make_optimizer(params, opt, total)
    return model, params, optimizer, schedule, total


def loss_fn(model, seen: list[list[int]]):
    x, y = data()

    def batch_loss(idx: list[int]) -> torch.Tensor:
        seen.append(list(idx))
        return torch.nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx])

    return batch_loss


def test_total_steps_counts_accumulation_groups_and_max_steps():
    # 10 rows in batches of 3: 4 batches an epoch, 2 optimiser steps of 2 batches each
    assert total_steps(OPT, ROWS) == 6
    assert total_steps(OptimizerSettings(batch_size=3, epochs=3, gradient_accumulation_steps=3), ROWS) == 6
    assert total_steps(OptimizerSettings(batch_size=4, epochs=2), ROWS) == 6
    assert total_steps(OptimizerSettings(batch_size=4, epochs=2, max_steps=4), ROWS) == 4


def test_a_full_run_steps_every_batch_and_calls_the_hooks(tmp_path):
    model, params, optimizer, schedule, total = setup(OPT)
    progress, epochs, after = [], [], []
    ctx = context(tmp_path, on_progress=progress.append)
    loop = OptimiserLoop(ctx, OPT, ROWS, params, optimizer, schedule, total)
    seen: list[list[int]] = []
    before = copy.deepcopy(model.state_dict())
    pos = loop.run(
        TrainPosition(),
        batch_loss=loss_fn(model, seen),
        save_checkpoint=lambda p: pytest.fail("no checkpoint without checkpoint_every"),
        on_epoch=epochs.append,
        after_step=after.append,
    )
    assert (pos.step, pos.epoch, pos.batches_done, pos.examples_seen) == (6, 3, 4, 30)
    assert loop.examples_this_run == 30
    assert epochs == [1, 2, 3]
    assert [p.step for p in after] == [1, 2, 3, 4, 5, 6]
    assert [p.step for p in progress] == [0, 1, 2, 3, 4, 5, 6]
    assert progress[-1].total_steps == 6
    assert len(seen) == 12 and all(
        sorted(i for b in seen[e : e + 4] for i in b) == list(range(ROWS)) for e in (0, 4, 8)
    )
    assert not torch.equal(model.weight, before["weight"])
    assert schedule.get_last_lr()[0] == pytest.approx(0.0)


def test_a_preempted_run_resumed_from_its_position_matches_an_uninterrupted_one(tmp_path):
    model, params, optimizer, schedule, total = setup(OPT)
    whole: list[list[int]] = []
    OptimiserLoop(context(tmp_path), OPT, ROWS, params, optimizer, schedule, total).run(
        TrainPosition(), batch_loss=loss_fn(model, whole), save_checkpoint=lambda p: None
    )
    expected = copy.deepcopy(model.state_dict())

    # Preempted after step 3 (mid-epoch 2): the position and states it saves at the next
    # interruption point are what a checkpoint holds.
    model, params, optimizer, schedule, total = setup(OPT)
    ctx = context(tmp_path, checkpoint_every=2)
    saved: dict[int, tuple] = {}

    def save(pos: TrainPosition) -> None:
        saved[pos.step] = (
            pos,
            copy.deepcopy(model.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(schedule.state_dict()),
        )

    def stop_after_three(pos: TrainPosition) -> None:
        if pos.step == 3:
            ctx.preempt.set()

    first: list[list[int]] = []
    with pytest.raises(JobPreempted):
        OptimiserLoop(ctx, OPT, ROWS, params, optimizer, schedule, total).run(
            TrainPosition(),
            batch_loss=loss_fn(model, first),
            save_checkpoint=save,
            after_step=stop_after_three,
        )
    assert sorted(saved) == [2, 3]  # every 2 steps, then the preemption's
    pos, weights, opt_state, sched_state = saved[3]
    assert (pos.step, pos.epoch, pos.batches_done) == (3, 2, 2)

    model, params, optimizer, schedule, total = setup(OPT)
    model.load_state_dict(weights)
    optimizer.load_state_dict(opt_state)
    schedule.load_state_dict(sched_state)
    rest: list[list[int]] = []
    loop = OptimiserLoop(
        context(tmp_path), OPT, ROWS, params, optimizer, schedule, total, resumed_from_step=3
    )
    end = loop.run(pos, batch_loss=loss_fn(model, rest), save_checkpoint=lambda p: None)
    assert end.step == 6 and loop.examples_this_run == 30 - pos.examples_seen == 14
    assert first + rest == whole  # the same batches in the same order
    for name, value in expected.items():
        torch.testing.assert_close(model.state_dict()[name], value)
