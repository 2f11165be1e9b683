"""How a training run ends, shared by every recipe and the worker: the result it publishes,
or one of the two stops raised between optimiser steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneserve_server.modeling import AdapterMeta


class JobCancelled(Exception):
    """Raised inside the loop when the job's cancel flag is set."""


class JobPreempted(Exception):
    """Raised inside the loop when the worker is shutting down; a checkpoint was saved."""


@dataclass
class TrainResult:
    metrics: dict[str, float]
    meta: AdapterMeta
    # Causal LM: [{"prompt", "reference", "generated"}, ...] for the worker to store on the job.
    sample_generations: list[dict[str, str]] = field(default_factory=list)

    def job_outputs(self) -> dict[str, object] | None:
        """What the job record keeps besides the metrics (None: nothing)."""
        return {"sample_generations": list(self.sample_generations)} if self.sample_generations else None
