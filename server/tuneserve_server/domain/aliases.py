"""Aliases and promotion: named pointers at adapter versions, their history, and the policy a
training job's new version is released under.

Versions are immutable; an alias (`default`, `prod`, `canary`, ...) points at one version and
moves atomically, leaving a history entry (who, when, from, to, why). The bare adapter name
means the alias `default`; `latest` is reserved and always means the newest version (it is
never stored, so it cannot be moved)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneserve_server.domain.errors import Violations

MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Actor:
    """Who moved an alias: the caller's tenant and key id, or a job (`job:<id>`)."""

    tenant: str
    key_id: str = ""

    def __str__(self) -> str:
        return self.key_id or self.tenant


@dataclass(frozen=True)
class AliasRecord:
    """One alias row as the registry change feed carries it; version 0: the alias was removed."""

    namespace: str
    name: str
    alias: str
    version: int
    seq: int
    updated_at: datetime | None = None


@dataclass(frozen=True)
class AliasMove:
    """One entry of an adapter's alias history. from_version 0: the alias was new;
    to_version 0: it was removed."""

    namespace: str
    name: str
    alias: str
    from_version: int
    to_version: int
    actor: str  # key id, or job:<id> for a training job's promotion
    tenant: str
    reason: str
    time: datetime | None = None
    sequence: int = 0  # the registry seq of the move (history order)


def check_reason(reason: str, field: str, v: Violations) -> str:
    if len(reason) > MAX_REASON_CHARS:
        v.add(field, f"longer than {MAX_REASON_CHARS} characters")
    if "\x00" in reason:
        v.add(field, "must not contain NUL characters")
    return reason


class PromotionPolicy(str, enum.Enum):
    ALWAYS = "always"  # a successful job's version becomes `default` at once (the default)
    MANUAL = "manual"  # registered; `default` moves only by PromoteVersion / SetAlias
    IF_BETTER = "if_better"  # evaluated against `default` first; moved only if not worse


# Metrics the if_better gate compares, by task (TaskType's value), and whether higher is better.
GATE_METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True},
    "causal_lm": {"eval_loss": False},
}
DEFAULT_GATE_METRIC = {"classification": "accuracy", "causal_lm": "eval_loss"}
MAX_TOLERANCE = {"accuracy": 1.0, "macro_f1": 1.0, "eval_loss": 100.0}


@dataclass(frozen=True)
class PromotionSettings:
    """How a job's new version is released. `metric`, `tolerance` and `eval_dataset_id`
    matter for if_better only: the new version is promoted unless its metric is worse than
    `default`'s by more than `tolerance` (absolute: 0.01 = one accuracy point) on the pinned
    evaluation set (`eval_dataset_id`, else the adapter's stored evaluation set)."""

    policy: PromotionPolicy = PromotionPolicy.ALWAYS
    metric: str = ""
    tolerance: float = 0.0
    eval_dataset_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.value,
            "metric": self.metric,
            "tolerance": self.tolerance,
            "eval_dataset_id": self.eval_dataset_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PromotionSettings:
        if not data:
            return cls()
        return cls(
            PromotionPolicy(data.get("policy", "always")),
            data.get("metric", ""),
            float(data.get("tolerance", 0.0)),
            data.get("eval_dataset_id", ""),
        )


def check_promotion(
    policy: str, metric: str, tolerance: float | None, eval_dataset_id: str, task: str | None, v: Violations
) -> PromotionSettings:
    """The request's promotion fields, validated (violations under `promotion.*`), with the
    task's default metric filled in for if_better."""
    try:
        chosen = PromotionPolicy(policy or "always")
    except ValueError:
        v.add("promotion.policy", f"{policy!r} is not one of always, manual, if_better")
        return PromotionSettings()
    if chosen is not PromotionPolicy.IF_BETTER:
        for name, given in (
            ("metric", metric),
            ("tolerance", tolerance),
            ("eval_dataset_id", eval_dataset_id),
        ):
            if given:
                v.add(f"promotion.{name}", "only applies to the if_better policy")
        return PromotionSettings(chosen)
    allowed = GATE_METRICS.get(task, {}) if task is not None else {}
    if metric and task is not None and metric not in allowed:
        v.add("promotion.metric", f"{metric!r} is not a gate metric for {task}: use {', '.join(allowed)}")
    chosen_metric = metric or (DEFAULT_GATE_METRIC.get(task, "") if task is not None else "")
    tol = 0.0 if tolerance is None else float(tolerance)
    limit = MAX_TOLERANCE.get(chosen_metric, 1.0)
    if not math.isfinite(tol) or not 0.0 <= tol <= limit:
        v.add("promotion.tolerance", f"must be in [0, {limit:g}] (an absolute difference in {chosen_metric})")
    if len(eval_dataset_id) > 128:
        v.add("promotion.eval_dataset_id", "longer than 128 characters")
    return PromotionSettings(chosen, chosen_metric, tol, eval_dataset_id)
