"""pb <-> domain for aliases and promotion (AdapterService alias RPCs, Train's promotion,
Job's promotion result). Beside convert.py, which it extends."""

from __future__ import annotations

from typing import Any

from tuneserve.v1 import adapters_pb2, training_pb2
from tuneserve_server.api.convert import _ts, adapter_pb
from tuneserve_server.domain.aliases import AliasMove, AliasRecord, PromotionPolicy, PromotionSettings
from tuneserve_server.domain.naming import DEFAULT_ALIAS
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.services.adapters import Residency

POLICY_FROM_PB = {
    training_pb2.PROMOTION_POLICY_UNSPECIFIED: "",
    training_pb2.PROMOTION_POLICY_ALWAYS: "always",
    training_pb2.PROMOTION_POLICY_MANUAL: "manual",
    training_pb2.PROMOTION_POLICY_IF_BETTER: "if_better",
}
POLICY_TO_PB = {
    PromotionPolicy.ALWAYS: training_pb2.PROMOTION_POLICY_ALWAYS,
    PromotionPolicy.MANUAL: training_pb2.PROMOTION_POLICY_MANUAL,
    PromotionPolicy.IF_BETTER: training_pb2.PROMOTION_POLICY_IF_BETTER,
}


def promotion_values(req: training_pb2.TrainRequest) -> dict[str, Any]:
    """The request's promotion fields as TrainInput takes them (an unknown enum value is
    passed on as its number, for the field-level error)."""
    if not req.HasField("promotion"):
        return {}
    p = req.promotion
    return {
        "policy": POLICY_FROM_PB.get(p.policy, str(p.policy)),
        "metric": p.metric,
        "tolerance": p.tolerance if p.tolerance else None,
        "eval_dataset_id": p.eval_dataset_id,
    }


def promotion_pb(p: PromotionSettings) -> training_pb2.Promotion:
    return training_pb2.Promotion(
        policy=POLICY_TO_PB[p.policy],
        metric=p.metric,
        tolerance=p.tolerance,
        eval_dataset_id=p.eval_dataset_id,
    )


def promotion_result_pb(result: dict[str, Any]) -> training_pb2.PromotionResult | None:
    if not result:
        return None
    out = training_pb2.PromotionResult(
        promoted=bool(result.get("promoted")),
        reason=str(result.get("reason", "")),
        metric=str(result.get("metric", "")),
        compared_version=int(result.get("compared_version", 0) or 0),
        from_version=int(result.get("from_version", 0) or 0),
        eval_dataset_id=str(result.get("eval_dataset_id", "")),
        eval_examples=int(result.get("eval_examples", 0) or 0),
    )
    for name in ("new_score", "current_score"):
        if result.get(name) is not None:
            setattr(out, name, float(result[name]))
    return out


def move_pb(m: AliasMove) -> adapters_pb2.AliasMove:
    return adapters_pb2.AliasMove(
        alias=m.alias,
        from_version=m.from_version,
        to_version=m.to_version,
        time=_ts(m.time),
        actor=m.actor,
        tenant=m.tenant,
        reason=m.reason,
        sequence=m.sequence,
    )


def adapter_with_aliases_pb(
    records: list[AdapterVersionRecord], residency: Residency, aliases: list[AliasRecord]
) -> adapters_pb2.Adapter:
    """adapter_pb plus the aliases, the version `default` points at, and each version's
    aliases and lineage."""
    out = adapter_pb(records, residency)
    mine = [a for a in aliases if a.name == out.name and a.version]
    out.aliases.extend(
        adapters_pb2.AdapterAlias(alias=a.alias, version=a.version, updated_at=_ts(a.updated_at))
        for a in mine
    )
    by_version: dict[int, list[str]] = {}
    for a in mine:
        by_version.setdefault(a.version, []).append(a.alias)
        if a.alias == DEFAULT_ALIAS:
            out.default_version = a.version
    if not out.default_version:  # an adapter without `default` (written before aliases)
        out.default_version = out.latest_version
    lineage = {r.version: r.lineage for r in records}
    for v in out.versions:
        v.aliases.extend(sorted(by_version.get(v.version, [])))
        trained_from = lineage.get(v.version) or {}
        if trained_from:
            v.lineage.init_from = str(trained_from.get("init_from", ""))
            v.lineage.init_from_requested = str(trained_from.get("init_from_requested", ""))
    return out
