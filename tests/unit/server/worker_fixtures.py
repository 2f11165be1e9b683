"""For driving the real trainer worker through a real SqliteStore in milliseconds: a recipe
that trains no model, and a job store wrapper that counts (and can fail) the worker's calls."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneserve_server.domain.jobs import EventType, JobProgress
from tuneserve_server.modeling import ADAPTER_META, AdapterMeta
from tuneserve_server.training.outcomes import TrainResult
from tuneserve_server.training.recipe import RecipeContext


class StepRecipe:
    """A Recipe with no model: `steps` optimiser steps that report progress and stop where
    the context says, then an adapter directory holding only its metadata. `before_step(n)`
    runs before step n (to wait, or to cancel the job from outside); `resume_from` makes
    train() report a resume from that step, as a recipe that found a checkpoint does."""

    def __init__(
        self,
        ctx: RecipeContext,
        *,
        steps: int = 3,
        resume_from: int = 0,
        before_step: Callable[[int], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.steps = steps
        self.resume_from = resume_from
        self.before_step = before_step
        self.phases: list[str] = []

    def setup(self) -> None:
        self.phases.append("setup")

    def train(self) -> None:
        self.phases.append("train")
        if self.resume_from:
            self.ctx.on_resume(self.resume_from)
        for step in range(self.resume_from + 1, self.steps + 1):
            self.ctx.interruption_point(lambda: self.ctx.emit(EventType.CHECKPOINT, message="saved"))
            if self.before_step is not None:
                self.before_step(step)
            progress = JobProgress(step=step, total_steps=self.steps, epoch=1, train_loss=1.0 / step)
            self.ctx.on_progress(progress)
            self.ctx.emit(EventType.PROGRESS, progress=progress)

    def finalize(self, directory: Path) -> TrainResult:
        self.phases.append("finalize")
        metrics = {"eval_loss": 0.25, "total_steps": float(self.steps)}
        spec = self.ctx.spec
        meta = AdapterMeta(
            task=spec.task,
            base_model=self.ctx.source.model_id,
            labels=tuple(sorted({getattr(r, "label", "") for r in spec.train} - {""})),
            lora_rank=spec.hyperparameters.lora.rank,
            target_modules=(),
            metrics=metrics,
            job_id=self.ctx.job_id,
        )
        (directory / ADAPTER_META).write_text(meta.to_json())
        self.ctx.emit(EventType.EVALUATION, metrics=metrics)
        samples = [{"prompt": "p", "reference": "r", "generated": f"from {self.ctx.job_id}"}]
        return TrainResult(metrics, meta, sample_generations=samples)


class CountingStore:
    """A real job store behind a wrapper that counts each method's calls (and when they came)
    and, while `down` is set or `fail[name]` is above zero, raises what an unreachable SQLite
    file raises instead of calling the store."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.fail: Counter[str] = Counter()
        self.down = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
                self.times[name].append(time.monotonic())
                failing = self.down or self.fail[name] > 0
                if failing:
                    self.fail[name] = max(self.fail[name] - 1, 0)
                    self.failed[name] += 1
            if failing:
                raise sqlite3.OperationalError("unable to open database file")
            return attr(*args, **kwargs)

        return call


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
