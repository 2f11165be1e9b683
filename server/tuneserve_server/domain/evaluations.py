"""Evaluations: stored adapter versions (and the bare base model, for a causal LM) measured on
a fixed set of rows, compared pairwise. An evaluation is a kind of job: a row of the same job
table with kind "evaluation", so the queue, claim, lease, heartbeat, cancel and event log are
the jobs' own; it publishes no adapter, its result is a JSON document (the results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneserve_server.domain.jobs import (
    Example,
    JobProgress,
    JobState,
    TaskType,
    _example_from_json,
    _example_json,
)

KIND_TRAIN = "train"
KIND_EVALUATION = "evaluation"
BASE_TARGET = "base"  # the target name of the bare base model


@dataclass(frozen=True)
class EvaluationSpec:
    """What a caller asked for, validated: `targets` are resolved ("name@3", or "base"), so
    the evaluation measures exactly those versions whatever moves afterwards; `requested`
    keeps what the caller wrote ("name", "name@stable")."""

    namespace: str
    request_id: str
    task: TaskType
    targets: tuple[str, ...]
    requested: tuple[str, ...]
    rows: tuple[Example, ...]
    dataset_id: str = ""
    resamples: int = 1000
    seed: int = 0
    sample_generations: int = 3
    kind: str = KIND_EVALUATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "request_id": self.request_id,
            "task": self.task.value,
            "targets": list(self.targets),
            "requested": list(self.requested),
            "rows": [_example_json(e) for e in self.rows],
            "dataset_id": self.dataset_id,
            "resamples": self.resamples,
            "seed": self.seed,
            "sample_generations": self.sample_generations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationSpec:
        return cls(
            namespace=data["namespace"],
            request_id=data["request_id"],
            task=TaskType(data["task"]),
            targets=tuple(data["targets"]),
            requested=tuple(data.get("requested", data["targets"])),
            rows=tuple(_example_from_json(e) for e in data["rows"]),
            dataset_id=data.get("dataset_id", ""),
            resamples=int(data.get("resamples", 1000)),
            seed=int(data.get("seed", 0)),
            sample_generations=int(data.get("sample_generations", 3)),
        )

    @property
    def adapter_name(self) -> str:
        """The first adapter target's name (what the job row's adapter_name column holds)."""
        for t in self.targets:
            if t != BASE_TARGET:
                return t.partition("@")[0]
        return ""


@dataclass(frozen=True)
class Evaluation:
    id: str
    namespace: str
    task: TaskType
    state: JobState
    request_id: str
    targets: tuple[str, ...]
    requested: tuple[str, ...]
    rows: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = field(default_factory=JobProgress)  # step = rows done (x passes)
    dataset_id: str = ""
    error: str = ""
    attempts: int = 0
    cancel_requested: bool = False
    resamples: int = 1000
    seed: int = 0
    # EvaluationOutcome.to_dict() (training/eval_run.py) once SUCCEEDED: {"task", "targets":
    # [{"target", "metrics", per_label / labels / confusion / reliability | samples}],
    # "comparisons": [{"a", "b", "rows", "mcnemar": {...}, "bootstrap": [...]}]}
    results: dict[str, Any] = field(default_factory=dict)
