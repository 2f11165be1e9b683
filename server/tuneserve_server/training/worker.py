"""The trainer worker: a process of its own that claims queued jobs from the job store,
trains them, publishes the adapter and records the outcome.

A heartbeat thread keeps the job's lease alive, pushes progress and picks up cancel
requests, so a wedged or killed worker loses its lease and the job goes back to the queue."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import structlog

from tuneserve_server.config import Settings
from tuneserve_server.domain.aliases import PromotionPolicy
from tuneserve_server.domain.errors import LeaseLost
from tuneserve_server.domain.evaluations import EvaluationSpec
from tuneserve_server.domain.jobs import (
    EventType,
    Job,
    JobEvent,
    JobProgress,
    JobSpec,
    JobState,
    TaskType,
)
from tuneserve_server.domain.naming import DEFAULT_ALIAS
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.modeling import BaseModelSource, resolve_base_model
from tuneserve_server.observability.metrics import JOBS, TRAIN_RUNNING
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training import checkpoint
from tuneserve_server.training.causal_lm import CausalLMRecipe
from tuneserve_server.training.cross_validation import ClassificationJob
from tuneserve_server.training.eval_run import EvalOptions, EvalTarget, evaluate_targets, gate
from tuneserve_server.training.eval_worker import run_evaluation
from tuneserve_server.training.outcomes import JobCancelled, JobPreempted
from tuneserve_server.training.preference import PreferenceRecipe
from tuneserve_server.training.recipe import RecipeContext, RecipeFactory, run_recipe
from tuneserve_server.warm_start import InitAdapter, read_init

log = structlog.get_logger("tuneserve.worker")


class _Heartbeat(threading.Thread):
    def __init__(self, store: JobStore, job_id: str, worker_id: str, lease_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.store, self.job_id, self.worker_id, self.lease_s = store, job_id, worker_id, lease_s
        self.progress = JobProgress()
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._halt = threading.Event()
        self.interval = min(1.0, lease_s / 4)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            if self.store.heartbeat(self.job_id, self.worker_id, self.lease_s, self.progress):
                self.cancel.set()
        except LeaseLost:
            self.lost.set()
            self.cancel.set()
        except Exception:  # a transient store error must not kill training; the lease decides
            log.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# The training recipe of each task type (training/recipe.py has the contract). A new task's
# recipe is one line here.
RECIPES: Mapping[TaskType, RecipeFactory] = {
    TaskType.CLASSIFICATION: ClassificationJob,  # hold-out or k-fold (cross_validation.py)
    TaskType.CAUSAL_LM: CausalLMRecipe,
    TaskType.PREFERENCE: PreferenceRecipe,
}


class _EventLog:
    """The recipe's events, appended to the job's log. A store error loses that one event
    (logged), never the training run."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str) -> None:
        self.store, self.job_id, self.worker_id = store, job_id, worker_id

    def __call__(self, event: JobEvent) -> None:
        try:
            self.store.append_events(
                self.job_id, [replace(event, job_id=self.job_id)], worker_id=self.worker_id
            )
        except LeaseLost:
            log.warning("lease lost; event not recorded", event_type=event.type.value)
        except Exception:
            log.warning("could not record a job event", event_type=event.type.value, exc_info=True)


class TrainerWorker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        adapters: AdapterStore,
        *,
        worker_id: str | None = None,
        recipes: Mapping[TaskType, RecipeFactory] = RECIPES,
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapters = adapters
        self.recipes = recipes
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()  # stop now: checkpoint the running job, release it
        self.draining = threading.Event()  # stop when idle: finish the running job first
        self._source: BaseModelSource | None = None

    @property
    def source(self) -> BaseModelSource:
        if self._source is None:
            self._source = resolve_base_model(self.settings.base_model)
        return self._source

    def warm_up(self) -> float:
        """Import what every training job needs (peft and transformers' model, tokenizer and
        schedule entry points: ~2.5 s on a 2-core CPU) once, before the first claim, so that no
        job's time pays it; the recipes import them lazily so that the API process and the CLI
        stay light. Returns the seconds it took; an import that fails is left for the job to
        report."""
        started = time.monotonic()
        try:
            import peft  # noqa: F401
            from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup  # noqa: F401
        except Exception:
            log.warning("worker warm-up import failed; the first job will report it", exc_info=True)
        return time.monotonic() - started

    def run_forever(self) -> None:
        log.info("worker started", worker_id=self.worker_id, base_model=self.settings.base_model)
        log.info("worker warmed up", seconds=round(self.warm_up(), 3))
        backoff = self.settings.worker_poll_s
        while not (self.stopping.is_set() or self.draining.is_set()):
            try:
                worked = self.run_once()
                backoff = self.settings.worker_poll_s
            except Exception:  # the store is unreachable: keep trying, do not die
                log.error("job store error; retrying", retry_in_s=backoff, exc_info=True)
                worked = False
                backoff = min(max(backoff, 0.5) * 2, 30.0)
            if not worked:
                self.stopping.wait(backoff)
        log.info("worker stopped", worker_id=self.worker_id)

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue was empty."""
        claimed = self.store.claim_job(self.worker_id, self.settings.worker_lease_s)
        if claimed is None:
            return False
        job, spec = claimed
        with structlog.contextvars.bound_contextvars(job_id=job.id):
            if isinstance(spec, EvaluationSpec):  # an evaluation: a job of the same queue
                self._run_evaluation(job, spec)
            else:
                self._run(job, spec)
        return True

    def _run_evaluation(self, job: Job, spec: EvaluationSpec) -> None:
        beat = _Heartbeat(self.store, job.id, self.worker_id, self.settings.worker_lease_s)
        beat.start()
        TRAIN_RUNNING.set(1)
        try:
            run_evaluation(self, job, spec, beat, _EventLog(self.store, job.id, self.worker_id))
        finally:
            TRAIN_RUNNING.set(0)
            beat.stop()

    def _run(self, job: Job, spec: JobSpec) -> None:
        log.info(
            "job claimed",
            adapter=spec.adapter_name,
            attempt=job.attempts,
            train_examples=len(spec.train),
            validation_examples=len(spec.validation),
        )
        beat = _Heartbeat(self.store, job.id, self.worker_id, self.settings.worker_lease_s)
        beat.start()
        checkpoints = self.settings.checkpoint_path / job.id
        staging = self.adapters.staging_dir()
        TRAIN_RUNNING.set(1)
        events = _EventLog(self.store, job.id, self.worker_id)
        try:
            factory = self.recipes.get(spec.task)
            if factory is None:
                raise ValueError(f"no recipe for task {spec.task.value}")

            def progress(p: JobProgress) -> None:
                beat.progress = p

            ctx = RecipeContext(
                spec=spec,
                source=self.source,
                job_id=job.id,
                device=self.settings.device,
                precision=self.settings.train_precision,
                checkpoint_dir=checkpoints,
                checkpoint_every=self.settings.checkpoint_every_steps,
                # A causal LM loads through the GGUF cache the API process shares (modeling_lm).
                model_cache_dir=self.settings.model_cache_path,
                cancel=beat.cancel,
                preempt=self.stopping,
                on_progress=progress,
                on_event=events,
                on_resume=lambda step: self._note_resume(job.id, step),
                init=self._init_adapter(spec),
            )
            result = run_recipe(factory(ctx), staging)
            beat.beat()  # record the final step before the job is marked done
            if beat.lost.is_set():
                raise LeaseLost(job.id)
            version = self.store.reserve_adapter_version(spec.namespace, spec.adapter_name)
            size = self.adapters.publish(staging, spec.namespace, spec.adapter_name, version)
            record = AdapterVersionRecord(
                namespace=spec.namespace,
                name=spec.adapter_name,
                version=version,
                job_id=job.id,
                task=result.meta.task,  # the adapter's task (a DPO adapter is a causal-LM one)
                base_model=result.meta.base_model,
                labels=result.meta.labels,
                metrics=result.metrics,
                lora_rank=result.meta.lora_rank,
                size_bytes=size,
                created_at=job.created_at,
                lineage={"init_from": spec.init_from, "init_from_requested": spec.init_from_requested}
                if spec.init_from
                else {},
            )
            promote, reason, promotion = self._promotion(spec, version, beat, events)
            outputs = {**(result.job_outputs() or {}), "promotion": promotion}
            self.store.complete_job(
                job.id,
                self.worker_id,
                result.metrics,
                record,
                outputs,
                promote=promote,
                promote_reason=reason,
            )
            JOBS.labels(JobState.SUCCEEDED.value).inc()
            log.info("job succeeded", adapter=f"{spec.adapter_name}@{version}", **result.metrics)
        except JobPreempted:
            beat.beat()
            self.store.release_job(job.id, self.worker_id)
            log.info("job checkpointed and released to the queue on shutdown", step=beat.progress.step)
        except JobCancelled:
            beat.beat()
            self._settle_interrupted(job, beat, checkpoints)
        except LeaseLost:
            log.warning("lease lost; another worker owns the job now")
        except Exception as exc:
            log.error("job failed", error=repr(exc), traceback=traceback.format_exc())
            self._finish(job.id, JobState.FAILED, f"training failed: {type(exc).__name__}: {exc}")
            checkpoint.remove(checkpoints)
        finally:
            TRAIN_RUNNING.set(0)
            beat.stop()
            shutil.rmtree(staging, ignore_errors=True)

    def _init_adapter(self, spec: JobSpec) -> InitAdapter | None:
        """The stored version continued training starts from (pinned as "name@N" when the
        job was queued), read from the adapter store."""
        if not spec.init_from:
            return None
        name, _, version = spec.init_from.partition("@")
        return read_init(self.adapters.open(spec.namespace, name, int(version)))

    def _promotion(
        self, spec: JobSpec, version: int, beat: _Heartbeat, events: _EventLog
    ) -> tuple[bool, str, dict]:
        """Whether `default` should move to the new version, why, and what the job's
        promotion result records (the store adds whether it moved)."""
        policy = spec.promotion.policy
        if policy is PromotionPolicy.IF_BETTER:
            return self._gate(spec, version, beat, events)
        if policy is PromotionPolicy.MANUAL:
            reason = f"promotion policy manual: {spec.adapter_name}@{version} is registered; PromoteVersion moves default"
            return False, reason, {"policy": policy.value, "reason": reason}
        reason = "promotion policy always"
        return True, reason, {"policy": policy.value, "reason": reason}

    def _gate(
        self, spec: JobSpec, version: int, beat: _Heartbeat, events: _EventLog
    ) -> tuple[bool, str, dict]:
        """if_better, here in the worker (never on a serving replica): score the new version
        and the one `default` points at on the pinned evaluation rows with evals-core's
        evaluate_targets, and promote unless the metric regressed by more than the
        tolerance (eval_run.gate). An evaluation that fails promotes nothing."""
        p = spec.promotion
        out: dict = {"policy": p.policy.value, "metric": p.metric, "eval_dataset_id": p.eval_dataset_id}
        aliases = {a.alias: a.version for a in self.store.adapter_aliases(spec.namespace, spec.adapter_name)}
        current = aliases.get(DEFAULT_ALIAS, 0)
        if not current:
            reason = "if_better: the adapter's first version (nothing to compare against)"
            return True, reason, {**out, "reason": reason}
        rows = spec.promotion_eval or spec.validation
        source = spec.promotion_eval_source or "this job's validation set"
        cur_name, new_name = f"{spec.adapter_name}@{current}", f"{spec.adapter_name}@{version}"
        try:
            outcome = evaluate_targets(
                self.source,
                spec.task,
                [
                    EvalTarget(cur_name, self.adapters.open(spec.namespace, spec.adapter_name, current)),
                    EvalTarget(new_name, self.adapters.open(spec.namespace, spec.adapter_name, version)),
                ],
                rows,
                EvalOptions(
                    device=self.settings.device,
                    max_seq_length=spec.hyperparameters.optimizer.max_seq_length,
                    model_cache_dir=self.settings.model_cache_path,
                    sample_generations=0,
                ),
                cancel=beat.cancel,
            )
            decision = gate(outcome, cur_name, new_name, p.metric, p.tolerance)
        except JobCancelled:
            raise
        except Exception as exc:
            log.warning("if_better evaluation failed", exc_info=True)
            reason = f"if_better: the evaluation failed ({type(exc).__name__}: {exc}); default not moved"
            events(JobEvent(spec.adapter_name, EventType.WARNING, message=reason))
            return False, reason, {**out, "reason": reason, "compared_version": current}
        p_value = (decision.comparison.get("mcnemar") or {}).get("p_value")
        reason = f"if_better on {len(rows)} rows of {source}: {decision.reason}" + (
            f" (McNemar p={p_value:.3g})" if isinstance(p_value, float) else ""
        )
        events(
            JobEvent(
                spec.adapter_name,
                EventType.EVALUATION,
                metrics={f"current_{p.metric}": decision.current, f"new_{p.metric}": decision.candidate},
                message=reason,
            )
        )
        return (
            decision.promote,
            reason,
            {
                **out,
                "reason": reason,
                "new_score": decision.candidate,
                "current_score": decision.current,
                "compared_version": current,
                "eval_examples": len(rows),
                "eval_source": source,
            },
        )

    def _note_resume(self, job_id: str, step: int) -> None:
        try:
            self.store.record_resume(job_id, self.worker_id, step)
        except LeaseLost:
            raise
        except Exception:
            log.warning("could not record the resume step", step=step, exc_info=True)

    def _settle_interrupted(self, job: Job, beat: _Heartbeat, checkpoints: Path) -> None:
        if beat.lost.is_set():
            log.warning("lease lost; another worker owns the job now")
        else:
            self._finish(job.id, JobState.CANCELLED, "cancelled by request")
            checkpoint.remove(checkpoints)
            log.info("job cancelled")

    def _finish(self, job_id: str, state: JobState, error: str) -> None:
        try:
            self.store.finish_job(job_id, self.worker_id, state, error)
            JOBS.labels(state.value).inc()
        except LeaseLost:
            log.warning("lease lost before the job could be marked", state=state.value)


def wait_for_parent_exit(worker: TrainerWorker, parent_pid: int, interval: float = 1.0) -> None:
    """In `serve` mode: when the API process goes away, finish the running job, then exit."""

    def watch() -> None:
        while os.getppid() == parent_pid and not worker.stopping.is_set():
            time.sleep(interval)
        if not worker.stopping.is_set():
            log.info("parent process gone; finishing the running job, then exiting")
            worker.draining.set()

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
