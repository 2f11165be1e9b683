"""Which evaluation was best, and when to stop: the bookkeeping behind best-checkpoint
selection and early stopping, kept apart from the training loop so it can be checkpointed
and tested on its own."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tuneserve_server.domain.jobs import TaskType

METRICS = ("accuracy", "macro_f1", "eval_loss")
MINIMISED = frozenset({"eval_loss"})
DEFAULT_METRIC = {
    TaskType.CLASSIFICATION: "macro_f1",
    TaskType.CAUSAL_LM: "eval_loss",
    TaskType.PREFERENCE: "eval_loss",
}


def resolve_metric(name: str, task: TaskType) -> str:
    """The metric that picks the best checkpoint; "" means the task's default."""
    return name or DEFAULT_METRIC[task]


@dataclass
class BestTracker:
    """Follows one metric across evaluations. `update` says whether the new value is the best
    so far; `should_stop` turns true after `patience` evaluations in a row without one
    (never when patience is 0)."""

    metric: str
    patience: int = 0
    best_value: float | None = None
    best_step: int = 0
    best_epoch: int = 0
    evaluations: int = 0
    since_best: int = 0

    @property
    def minimise(self) -> bool:
        return self.metric in MINIMISED

    def improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.minimise else value > self.best_value

    def update(self, metrics: dict[str, float], step: int, epoch: int) -> bool:
        value = metrics[self.metric]
        self.evaluations += 1
        if self.improves(value):
            self.best_value, self.best_step, self.best_epoch, self.since_best = value, step, epoch, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BestTracker:
        return cls(**data)  # type: ignore[arg-type]
