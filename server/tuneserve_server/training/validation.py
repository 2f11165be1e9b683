"""Turns a caller's Train request into a JobSpec, or an InvalidRequest naming every bad field.

Runs at submit time, before anything is queued. Field paths follow the proto
(`training_examples[3].classification.label`, `hyperparameters.lora.rank`)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneserve_server.errors import FailedPrecondition, FieldViolation, InvalidRequest
from tuneserve_server.naming import is_valid_name, namespace_of
from tuneserve_server.training.jobs import (
    Hyperparameters,
    JobSpec,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    TaskType,
)

DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class TrainLimits:
    """What the serving deployment accepts; built from Settings and the loaded base model."""

    served_task: TaskType
    base_model: str
    max_train_examples: int
    max_text_chars: int
    max_lora_rank: int
    linear_modules: frozenset[str]
    default_targets: tuple[str, ...]
    max_positions: int = 512


@dataclass
class TrainInput:
    """The request as the servicer hands it over: plain values, proto types stripped.
    An example is (text, label), or None where the example is not a classification one."""

    namespace: str
    adapter_name: str
    task: TaskType | None
    request_id: str
    train: Sequence[tuple[str, str] | None]
    validation: Sequence[tuple[str, str] | None]
    validation_fraction: float | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)


# name -> (low, high, low inclusive, high inclusive, description)
_OPTIMIZER_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, 1.0, False, True),
    "batch_size": (1, 1024, True, True),
    "epochs": (1, 100, True, True),
    "max_steps": (0, 1_000_000, True, True),
    "warmup_ratio": (0.0, 0.5, True, True),
    "weight_decay": (0.0, 1.0, True, True),
    "seed": (0, 2**32 - 1, True, True),
    "max_seq_length": (8, 8192, True, True),
}
_LORA_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "alpha": (0.0, 4096.0, False, True),
    "dropout": (0.0, 1.0, True, False),
}


def _in_range(value: float, rng: tuple[float, float, bool, bool]) -> bool:
    low, high, low_inc, high_inc = rng
    return (value >= low if low_inc else value > low) and (value <= high if high_inc else value < high)


def _range_text(rng: tuple[float, float, bool, bool]) -> str:
    low, high, low_inc, high_inc = rng
    return f"must be in {'[' if low_inc else '('}{low:g}, {high:g}{']' if high_inc else ')'}"


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def raise_if_any(self, summary: str) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise InvalidRequest(f"{summary}: {first.field}: {first.description}{more}", self.items)


def _examples(
    rows: Sequence[tuple[str, str] | None], field_name: str, limits: TrainLimits, v: _Violations
) -> list[LabelledText]:
    out = []
    for i, row in enumerate(rows):
        path = f"{field_name}[{i}]"
        if row is None:
            v.add(path, "must be a classification example (text and label)")
            continue
        text, label = row
        bad = False
        if not text.strip():
            v.add(f"{path}.classification.text", "must not be empty")
            bad = True
        elif len(text) > limits.max_text_chars:
            v.add(f"{path}.classification.text", f"longer than {limits.max_text_chars} characters")
            bad = True
        if not label.strip():
            v.add(f"{path}.classification.label", "must not be empty")
            bad = True
        if len(v.items) >= 20:  # enough to act on; do not build a megabyte error
            break
        if not bad:
            out.append(LabelledText(text, label.strip()))
    return out


def stratified_split(
    examples: Sequence[LabelledText], fraction: float, seed: int
) -> tuple[list[LabelledText], list[LabelledText]]:
    """Hold out about `fraction` of each label; a label with one example stays in training."""
    by_label: dict[str, list[LabelledText]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rng = random.Random(seed)
    train, held = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = round(len(group) * fraction)
        k = min(max(k, 1), len(group) - 1) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    rng.shuffle(train)
    return train, held


def _hyperparameters(req: TrainInput, limits: TrainLimits, v: _Violations) -> Hyperparameters:
    lora_kw: dict[str, Any] = {}
    rank = req.lora.get("rank")
    if rank is not None:
        if not 1 <= rank <= limits.max_lora_rank:
            v.add("hyperparameters.lora.rank", f"must be in [1, {limits.max_lora_rank}]")
        lora_kw["rank"] = int(rank)
    for name, rng in _LORA_RANGES.items():
        value = req.lora.get(name)
        if value is not None:
            if not _in_range(value, rng):
                v.add(f"hyperparameters.lora.{name}", _range_text(rng))
            lora_kw[name] = float(value)
    targets = tuple(req.lora.get("target_modules") or ())
    unknown = [t for t in targets if t not in limits.linear_modules]
    if unknown:
        v.add(
            "hyperparameters.lora.target_modules",
            f"{', '.join(unknown)} not in the base model (has {', '.join(sorted(limits.linear_modules))})",
        )
    lora_kw["target_modules"] = targets or limits.default_targets

    opt_kw: dict[str, Any] = {}
    for name, rng in _OPTIMIZER_RANGES.items():
        value = req.optimizer.get(name)
        if value is not None:
            if not _in_range(value, rng):
                v.add(f"hyperparameters.optimizer.{name}", _range_text(rng))
            opt_kw[name] = value
    max_len = opt_kw.get("max_seq_length")
    if max_len is not None and max_len > limits.max_positions:
        v.add(
            "hyperparameters.optimizer.max_seq_length",
            f"the base model takes at most {limits.max_positions} tokens",
        )
    return Hyperparameters(LoraSettings(**lora_kw), OptimizerSettings(**opt_kw))


def build_job_spec(req: TrainInput, limits: TrainLimits) -> JobSpec:
    v = _Violations()
    namespace = namespace_of(req.namespace)
    if not req.request_id:
        v.add("request_id", "is required (a unique key per Train call, e.g. a UUID)")
    elif len(req.request_id) > 128:
        v.add("request_id", "longer than 128 characters")
    if not is_valid_name(req.adapter_name):
        v.add("adapter_name", "use 1-63 of a-z 0-9 . _ -, starting with a letter or digit")
    if req.task is None:
        v.add("task", "is required (TASK_TYPE_CLASSIFICATION or TASK_TYPE_CAUSAL_LM)")
    elif req.task is not limits.served_task:
        raise FailedPrecondition(
            f"this server serves {limits.base_model}, a {limits.served_task.value} model; "
            f"it cannot train a {req.task.value} adapter"
        )
    if not req.train:
        v.add("training_examples", "must not be empty")
    elif len(req.train) > limits.max_train_examples:
        v.add("training_examples", f"more than {limits.max_train_examples} examples")
    train = _examples(req.train, "training_examples", limits, v)
    validation = _examples(req.validation, "validation_examples", limits, v)
    hyper = _hyperparameters(req, limits, v)

    fraction = req.validation_fraction
    if fraction is not None:
        if req.validation:
            v.add("validation_fraction", "give validation_examples or validation_fraction, not both")
        elif not 0.0 < fraction <= 0.5:
            v.add("validation_fraction", "must be in (0, 0.5]")
    v.raise_if_any("invalid Train request")

    labels = Counter(ex.label for ex in train)
    if len(labels) < 2:
        v.add("training_examples", f"needs at least 2 distinct labels, found {len(labels)}")
    if req.validation:
        unseen = sorted({ex.label for ex in validation} - set(labels))
        if unseen:
            v.add("validation_examples", f"labels never seen in training: {', '.join(unseen[:5])}")
    else:
        train, validation = stratified_split(
            train, fraction or DEFAULT_VALIDATION_FRACTION, hyper.optimizer.seed
        )
        if not validation:
            v.add("training_examples", "too few examples to hold out a validation split")
    v.raise_if_any("invalid training data")
    return JobSpec(
        namespace=namespace,
        adapter_name=req.adapter_name,
        task=req.task,
        request_id=req.request_id,
        train=tuple(train),
        validation=tuple(validation),
        hyperparameters=hyper,
    )
