"""The trainer worker's side of an evaluation: a claimed job row of kind "evaluation" is run
here, on the worker's torch (never a serving replica's), with the worker's heartbeat keeping
its lease and carrying cancel requests. The adapter files come from the adapter store by the
versions the evaluation pinned at creation; the results go back to the job store as JSON.

A worker that is stopping gives the evaluation back to the queue (it starts over on the next
claim: evaluations keep no checkpoints, they are short next to training)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from tuneserve_server.domain.errors import LeaseLost
from tuneserve_server.domain.evaluations import BASE_TARGET, EvaluationSpec
from tuneserve_server.domain.jobs import EventType, Job, JobEvent, JobProgress, JobState
from tuneserve_server.training.eval_run import EvalOptions, EvalTarget, evaluate_targets
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted

log = structlog.get_logger("tuneserve.worker")

PROGRESS_EVENT_S = 2.0
# Per target, the metrics the job row's summary (metrics map) repeats from the results.
SUMMARY = (
    "accuracy",
    "macro_f1",
    "nll",
    "ece",
    "eval_loss",
    "perplexity",
    "exact_match",
    "contains_reference",
)


def summary_of(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in results.get("targets", []):
        for k in SUMMARY:
            if k in t["metrics"]:
                out[f"{t['target']}.{k}"] = float(t["metrics"][k])
    for k in ("seconds", "rows_per_second"):
        if k in results:
            out[k] = float(results[k])
    return out


def run_evaluation(
    worker: Any, job: Job, spec: EvaluationSpec, beat: Any, events: Callable[[JobEvent], None]
) -> None:
    """Run one claimed evaluation to its end state. `worker` is the TrainerWorker (settings,
    store, adapters, source, stopping); `beat` its heartbeat for this job (progress, cancel,
    lost); `events` appends to the job's log."""
    store, settings = worker.store, worker.settings
    started = time.monotonic()
    last_event = [0.0]

    def on_progress(done: int, total: int) -> None:
        if worker.stopping.is_set():
            raise JobPreempted()
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else None
        beat.progress = JobProgress(
            step=done,
            total_steps=total,
            examples_per_second=rate,
            eta_seconds=(total - done) / rate if rate else None,
        )
        now = time.monotonic()
        if done == total or now - last_event[0] >= PROGRESS_EVENT_S:
            last_event[0] = now
            events(JobEvent(job.id, EventType.PROGRESS, progress=beat.progress))

    log.info("evaluation claimed", targets=list(spec.targets), rows=len(spec.rows), attempt=job.attempts)
    try:
        targets = []
        for name in spec.targets:
            if name == BASE_TARGET:
                targets.append(EvalTarget(name, None))
                continue
            adapter, _, version = name.partition("@")
            targets.append(EvalTarget(name, worker.adapters.open(spec.namespace, adapter, int(version))))
        options = EvalOptions(
            device=settings.device,
            model_cache_dir=settings.model_cache_path,
            sample_generations=spec.sample_generations,
            resamples=spec.resamples,
            seed=spec.seed,
        )
        outcome = evaluate_targets(
            worker.source, spec.task, targets, spec.rows, options, on_progress=on_progress, cancel=beat.cancel
        )
        seconds = time.monotonic() - started
        results = outcome.to_dict()
        results["seconds"] = seconds
        results["rows_per_second"] = len(spec.rows) * len(targets) / seconds if seconds > 0 else 0.0
        beat.beat()
        if beat.lost.is_set():
            raise LeaseLost(job.id)
        store.complete_evaluation(job.id, worker.worker_id, summary_of(results), results)
        log.info(
            "evaluation succeeded", seconds=round(seconds, 2), rows_per_second=results["rows_per_second"]
        )
    except JobPreempted:
        _settle(store.release_job, job.id, worker.worker_id)
        log.info("evaluation released to the queue on shutdown")
    except JobCancelled:
        if beat.lost.is_set():
            log.warning("lease lost; another worker owns the evaluation now")
        else:
            _settle(store.finish_job, job.id, worker.worker_id, JobState.CANCELLED, "cancelled by request")
            log.info("evaluation cancelled")
    except LeaseLost:
        log.warning("lease lost; another worker owns the evaluation now")
    except Exception as exc:
        log.error("evaluation failed", error=repr(exc), traceback=traceback.format_exc())
        _settle(
            store.finish_job,
            job.id,
            worker.worker_id,
            JobState.FAILED,
            f"evaluation failed: {type(exc).__name__}: {exc}",
        )


def _settle(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except LeaseLost:
        log.warning("lease lost before the evaluation could be marked")
