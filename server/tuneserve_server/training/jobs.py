"""Job domain types: the spec a caller submits, the job record and its state machine."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any


class TaskType(str, enum.Enum):
    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# Allowed transitions; the stores enforce them in their UPDATE ... WHERE state IN (...).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # RUNNING -> QUEUED happens when a worker's lease expires and the job is retried.
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float = 2e-3
    batch_size: int = 32
    epochs: int = 4
    max_steps: int = 0
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    max_seq_length: int = 128


@dataclass(frozen=True)
class Hyperparameters:
    lora: LoraSettings = field(default_factory=LoraSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparameters:
        lora = dict(data.get("lora", {}))
        lora["target_modules"] = tuple(lora.get("target_modules", ()))
        return cls(LoraSettings(**lora), OptimizerSettings(**data.get("optimizer", {})))


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str


@dataclass(frozen=True)
class JobSpec:
    """What a caller asked for, validated, with defaults resolved."""

    namespace: str
    adapter_name: str
    task: TaskType
    request_id: str
    train: tuple[LabelledText, ...]
    validation: tuple[LabelledText, ...]
    hyperparameters: Hyperparameters

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "adapter_name": self.adapter_name,
            "task": self.task.value,
            "request_id": self.request_id,
            "train": [[e.text, e.label] for e in self.train],
            "validation": [[e.text, e.label] for e in self.validation],
            "hyperparameters": self.hyperparameters.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            namespace=data["namespace"],
            adapter_name=data["adapter_name"],
            task=TaskType(data["task"]),
            request_id=data["request_id"],
            train=tuple(LabelledText(t, lab) for t, lab in data["train"]),
            validation=tuple(LabelledText(t, lab) for t, lab in data["validation"]),
            hyperparameters=Hyperparameters.from_dict(data["hyperparameters"]),
        )


@dataclass(frozen=True)
class JobProgress:
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None


@dataclass(frozen=True)
class Job:
    id: str
    namespace: str
    adapter_name: str
    task: TaskType
    state: JobState
    request_id: str
    hyperparameters: Hyperparameters
    train_examples: int
    validation_examples: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = field(default_factory=JobProgress)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    adapter_version: int = 0
    attempts: int = 0
    cancel_requested: bool = False

    def with_(self, **changes: Any) -> Job:
        return replace(self, **changes)
