"""The contract between the trainer worker and a training recipe (one per task type).

The worker builds a `RecipeContext` for the claimed job and hands it to the recipe's
factory (the class itself: `Recipe(ctx)`), then drives the phases through `run_recipe`:

    setup()             load the base model, attach LoRA, tokenize the rows
    train()             the optimiser loop. It resumes from `ctx.checkpoint_dir` when a checkpoint
                        is there (and says so once through `ctx.on_resume`), reports through
                        `ctx.on_progress` / `ctx.emit`, saves a checkpoint every
                        `ctx.checkpoint_every` steps, and stops only between optimiser steps, at
                        `ctx.interruption_point`: JobPreempted after a checkpoint, or JobCancelled
    finalize(directory) the final evaluation (and whatever the task adds: calibration, sample
                        generations), then writes the adapter into `directory`; its TrainResult
                        is what the worker publishes

Checkpointing is no phase of its own: only the loop knows where an optimiser step ends, so
train() saves through `training.checkpoint`. Nor is cleanup: the worker owns the staging and
checkpoint directories and removes them. A recipe never touches the job store; everything it
tells the store goes through the context's callbacks. Recipes never import each other; what
they share lives in outcomes.py, batching.py, precision.py, checkpoint.py, evaluation.py and
optimiser_loop.py (the step loop of the causal-LM and preference recipes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from tuneserve_server.domain.jobs import EventType, JobEvent, JobProgress, JobSpec
from tuneserve_server.modeling import BaseModelSource
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted, TrainResult
from tuneserve_server.warm_start import InitAdapter

log = structlog.get_logger("tuneserve.training")

ProgressSink = Callable[[JobProgress], None]
EventSink = Callable[[JobEvent], None]
ResumeSink = Callable[[int], None]


def _ignore(_: object) -> None:
    return None


@dataclass(frozen=True)
class RecipeContext:
    """Everything a recipe gets from the worker for one job. Outside the worker (tests,
    benchmarks) the defaults give a recipe that trains without checkpoints or a store."""

    spec: JobSpec
    source: BaseModelSource  # the base model the adapter is trained on
    job_id: str = ""
    device: str = "cpu"
    # The training forward pass: "auto", "float32" or "bfloat16" (see precision.py). A recipe
    # that trains in the dtype its model loads in may ignore it.
    precision: str = "auto"
    checkpoint_dir: Path | None = None  # None: never checkpoint, never resume
    checkpoint_every: int = 0  # optimiser steps between checkpoints (0: only when preempted)
    model_cache_dir: Path | None = None  # where converted base models are cached (causal LM)
    cancel: threading.Event = field(default_factory=threading.Event)  # the job was cancelled
    preempt: threading.Event = field(default_factory=threading.Event)  # the worker is stopping
    on_progress: ProgressSink = _ignore  # every optimiser step (the heartbeat pushes the latest)
    on_event: EventSink = _ignore  # appended to the job's event log
    on_resume: ResumeSink = _ignore  # the step train() resumed from, once, when it did
    # Continued training: the stored version spec.init_from names (warm_start.read_init), or
    # None from scratch. Any recipe warm-starts its LoRA with warm_start.load_lora_weights.
    init: InitAdapter | None = None

    def emit(self, type_: EventType, **fields: object) -> None:
        """Append an event to the job's log; a broken sink loses the event, never the job."""
        try:
            self.on_event(JobEvent(job_id=self.job_id, type=type_, **fields))  # type: ignore[arg-type]
        except Exception:
            log.warning("event sink failed", event_type=type_.value, exc_info=True)

    def interruption_point(self, save_checkpoint: Callable[[], None]) -> None:
        """Call between optimiser steps: when the worker is stopping, save a checkpoint and
        raise JobPreempted (the job goes back to the queue); when the job was cancelled,
        raise JobCancelled."""
        if self.preempt.is_set():
            save_checkpoint()
            raise JobPreempted()
        if self.cancel.is_set():
            raise JobCancelled()


@runtime_checkable
class Recipe(Protocol):
    """One job's training run, built by `factory(ctx)`; the worker calls each phase once,
    in order (see `run_recipe`)."""

    def setup(self) -> None: ...

    def train(self) -> None: ...

    def finalize(self, directory: Path) -> TrainResult: ...


RecipeFactory = Callable[[RecipeContext], Recipe]


def run_recipe(recipe: Recipe, directory: Path) -> TrainResult:
    """Drive a recipe through its phases; the adapter lands in `directory`."""
    recipe.setup()
    recipe.train()
    return recipe.finalize(directory)
