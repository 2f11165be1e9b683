"""Protobuf <-> domain conversion for EvaluationService (beside convert.py, which it reuses)."""

from __future__ import annotations

from typing import Any

from tuneserve.v1 import evaluations_pb2, training_pb2
from tuneserve_server.api import convert
from tuneserve_server.domain.evaluations import Evaluation
from tuneserve_server.services.evaluations import EvaluationInput


def evaluation_input(req: evaluations_pb2.CreateEvaluationRequest) -> EvaluationInput:
    return EvaluationInput(
        namespace=req.namespace,
        request_id=req.request_id,
        versions=list(req.versions),
        include_base=req.include_base,
        examples=[convert._example(e) for e in req.examples],
        dataset_id=req.dataset_id,
        resamples=req.bootstrap_resamples if req.HasField("bootstrap_resamples") else None,
        seed=req.seed if req.HasField("seed") else None,
        sample_generations=req.sample_generations if req.HasField("sample_generations") else None,
    )


def _target_pb(t: dict[str, Any], detail: bool) -> evaluations_pb2.EvaluationTargetResult:
    out = evaluations_pb2.EvaluationTargetResult(target=t["target"], metrics=t["metrics"])
    if not detail:
        return out
    out.per_label.extend(evaluations_pb2.LabelMetrics(**row) for row in t.get("per_label", []))
    if "labels" in t:
        out.confusion.labels.extend(t["labels"])
        out.confusion.counts.extend(c for row in t["confusion"] for c in row)
    out.reliability.extend(evaluations_pb2.ReliabilityBin(**b) for b in t.get("reliability", []))
    out.samples.extend(training_pb2.SampleGeneration(**s) for s in t.get("samples", []))
    return out


def _comparison_pb(c: dict[str, Any]) -> evaluations_pb2.EvaluationComparison:
    return evaluations_pb2.EvaluationComparison(
        a=c["a"],
        b=c["b"],
        rows=c["rows"],
        mcnemar=evaluations_pb2.McNemarTest(**c["mcnemar"]),
        bootstrap=[evaluations_pb2.BootstrapInterval(**b) for b in c["bootstrap"]],
    )


def evaluation_pb(e: Evaluation, *, detail: bool = True) -> evaluations_pb2.Evaluation:
    results = e.results or {}
    return evaluations_pb2.Evaluation(
        id=e.id,
        namespace=e.namespace,
        task=convert.TASK_TO_PB[e.task],
        state=convert.STATE_TO_PB[e.state],
        request_id=e.request_id,
        targets=list(e.targets),
        requested=list(e.requested),
        rows=e.rows,
        dataset_id=e.dataset_id,
        created_at=convert._ts(e.created_at),
        updated_at=convert._ts(e.updated_at),
        started_at=convert._ts(e.started_at),
        finished_at=convert._ts(e.finished_at),
        progress=convert.progress_pb(e.progress),
        error=e.error,
        attempts=e.attempts,
        bootstrap_resamples=e.resamples,
        seed=e.seed,
        results=[_target_pb(t, detail) for t in results.get("targets", [])],
        comparisons=[_comparison_pb(c) for c in results.get("comparisons", [])],
        seconds=float(results.get("seconds", 0.0)),
        rows_per_second=float(results.get("rows_per_second", 0.0)),
    )
