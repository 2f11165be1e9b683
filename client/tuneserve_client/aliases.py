"""Client types for aliases and promotion (AliasMove, PromotionResult) and their conversion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuneserve.v1 import adapters_pb2, training_pb2
from tuneserve_client._pb import time_of

POLICIES = ("always", "manual", "if_better")


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: from_version 0 = the alias was new, to_version 0 = removed;
    `actor` is the API key id (or "job:<id>" for a training job's promotion); sequence 0:
    nothing moved (it pointed there already)."""

    alias: str
    from_version: int
    to_version: int
    time: datetime | None
    actor: str
    tenant: str
    reason: str
    sequence: int


@dataclass(frozen=True)
class PromotionResult:
    """What a job's success did to `default`; for if_better, both scores."""

    promoted: bool
    reason: str
    metric: str = ""
    new_score: float | None = None
    current_score: float | None = None
    compared_version: int = 0
    from_version: int = 0
    eval_dataset_id: str = ""
    eval_examples: int = 0


def move_from_pb(pb: adapters_pb2.AliasMove) -> AliasMove:
    return AliasMove(
        pb.alias,
        pb.from_version,
        pb.to_version,
        time_of(pb, "time"),
        pb.actor,
        pb.tenant,
        pb.reason,
        pb.sequence,
    )


def promotion_result_from_pb(pb: training_pb2.Job) -> PromotionResult | None:
    if not pb.HasField("promotion_result"):
        return None
    r = pb.promotion_result
    return PromotionResult(
        promoted=r.promoted,
        reason=r.reason,
        metric=r.metric,
        new_score=r.new_score if r.HasField("new_score") else None,
        current_score=r.current_score if r.HasField("current_score") else None,
        compared_version=r.compared_version,
        from_version=r.from_version,
        eval_dataset_id=r.eval_dataset_id,
        eval_examples=r.eval_examples,
    )


def policy_from_pb(pb: training_pb2.Job) -> str:
    value = pb.promotion.policy if pb.HasField("promotion") else 0
    return {2: "manual", 3: "if_better"}.get(value, "always")


def promotion_pb(
    policy: str | None, metric: str | None, tolerance: float | None, eval_dataset: str | None
) -> training_pb2.Promotion | None:
    """Train's promotion setting (None: the server's default, always)."""
    if policy is None and metric is None and tolerance is None and not eval_dataset:
        return None
    name = (policy or "always").strip().lower()
    if name not in POLICIES:
        raise ValueError(f"unknown promotion policy {policy!r}: expected one of {', '.join(POLICIES)}")
    return training_pb2.Promotion(
        policy=training_pb2.PromotionPolicy.Value(f"PROMOTION_POLICY_{name.upper()}"),
        metric=metric or "",
        tolerance=tolerance or 0.0,
        eval_dataset_id=eval_dataset or "",
    )
