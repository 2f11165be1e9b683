"""Hyperparameter search inside one classification job (issue #17): `hyperparameters.search =
{trials, budget_seconds, parameters}` runs up to `trials` ClassificationRecipe trainings with
settings Optuna proposes, and publishes the best.

    space    around the job's own settings (auto-chosen or given): learning_rate log-uniform in
             [lr/8, 2 lr]; steps, a factor log-uniform in [0.5, 2] on the job's epochs (and on
             max_steps when set); lora_rank one of 4, 8, 16, 32 up to the job's rank, alpha
             keeping the job's alpha / rank ratio. `parameters` picks which (default: the first
             two); what is not searched keeps the job's value.
    sampler  Optuna's TPE (multivariate: learning rate and length go together), seeded with the
             job's seed; the first trial is the job's own settings, so the search publishes
             nothing worse on validation than the job without it would have. Every trial trains
             with the job's seed (same initialisation and batch order): the trials differ only
             in the settings searched.
    pruning  each evaluation (every epoch, or eval_every_steps) of a trial is reported to a
             MedianPruner: after half the job's planned steps, a trial whose validation metric is
             below the median of the earlier trials at the same step stops at its next optimiser
             step (pruned; never published). The job's own early_stopping_patience applies in
             every trial as well.
    budget   budget_seconds counts from the first trial's start: no trial starts after it is
             spent, and a running trial stops at its next optimiser step, scored by its best
             evaluation so far. The first trial always runs to its end.
    scoring  a trial's score is its best evaluation of evaluation.metric_for_best on the
             validation split, the checkpoint the recipe would publish. Trials skip temperature
             scaling, uncertainty and the baseline; the published adapter gets them.
    publish  hold-out jobs: the best trial's adapter itself (its best checkpoint, not retrained),
             calibrated, uncertainty-fitted and baselined on the validation split as any job.
             Its validation metrics are those the trial was picked by, so they read somewhat
             optimistic (selection on the same rows). kfold jobs: the trials train on 80% of the
             training rows and are scored on the other 20% (validation.search_split); the best
             settings are then cross-validated and the adapter trained on every row, as any kfold
             job (cross_validation.py): its metrics are the folds'.

Each trial is one EVALUATION event (metrics trial, learning_rate, epochs, max_steps, lora_rank,
steps, score, pruned, budget_stopped, best_step, accuracy, macro_f1); the trial's own progress and
evaluation events carry "trial i/N: " in their messages. Progress runs over every trial as one
step count (total_steps: the steps run so far plus an estimate of the rest). The job's metrics
record the search (search_*; see `search_metrics`). Cancel works between optimiser steps of any
trial. A preempted job starts its search over when it resumes, except a kfold job preempted
after its search: the search's outcome is kept in the checkpoint directory (search.json) and the
cross-validation resumes from its own checkpoints."""

from __future__ import annotations

import gc
import json
import math
import os
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from tuneserve_server.domain.jobs import (
    EventType,
    JobEvent,
    JobProgress,
    JobSpec,
    SearchSettings,
    TaskType,
)
from tuneserve_server.modeling import ADAPTER_META
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.cross_validation import CrossValidatedClassification, _plan
from tuneserve_server.training.evaluation import MINIMISED, resolve_metric
from tuneserve_server.training.outcomes import JobCancelled, TrainResult
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.training.validation import search_split

log = structlog.get_logger("tuneserve.training")

LR_RANGE = (1 / 8, 2.0)  # times the job's learning rate
STEPS_RANGE = (0.5, 2.0)  # times the job's epochs (and max_steps)
RANKS = (4, 8, 16, 32)
MAX_EPOCHS = 100  # validation's bound on optimizer.epochs
PRUNE_AFTER = 0.5  # of the job's planned steps: no trial is pruned before
RESULT_FILE = "search.json"


class _TrialStop(threading.Event):
    """The cancel flag one trial's recipe sees (RecipeContext.cancel): set when the job is
    cancelled, when the pruner stops the trial, or when the search's time budget is spent."""

    def __init__(self, job_cancel: threading.Event, deadline: float | None) -> None:
        super().__init__()
        self.job_cancel = job_cancel
        self.deadline = deadline
        self.pruned = False
        self.trial: Any = None  # the optuna trial it stops

    @property
    def over_budget(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def is_set(self) -> bool:
        return self.job_cancel.is_set() or self.pruned or self.over_budget


def _fmt_params(record: dict[str, float]) -> str:
    text = f"lr {record['learning_rate']:.3g}, {int(record['epochs'])} epochs"
    if record["max_steps"]:
        text += f" (max {int(record['max_steps'])} steps)"
    return text + f", rank {int(record['lora_rank'])}"


class HyperparameterSearch:
    """The Recipe of a classification job with `hyperparameters.search.trials` (see the module
    docstring)."""

    def __init__(self, ctx: RecipeContext, **recipe_kw: object) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.recipe_kw = recipe_kw
        hp = self.spec.hyperparameters
        self.settings: SearchSettings = hp.search
        self.kfold = hp.evaluation.validation_scheme == "kfold"
        if self.kfold:
            train, held = search_split(self.spec.train, hp.optimizer.seed)
            self.trial_base = replace(self.spec, train=train, validation=held)
        else:
            self.trial_base = self.spec
        self.metric = resolve_metric(hp.evaluation.metric_for_best, TaskType.CLASSIFICATION)
        self.minimise = self.metric in MINIMISED
        self.job_plan = _plan(self._trial_spec({}))[1]  # the job's own settings' steps
        self.records: list[dict[str, float]] = []
        self.best: ClassificationRecipe | None = None
        self.best_record: dict[str, float] | None = None
        self.cv: CrossValidatedClassification | None = None
        self.step_offset = 0  # optimiser steps run by the trials (and phases) before this one
        self.current_total = 0
        self.examples_seen = 0
        self.budget_stopped = False
        self.search_seconds = 0.0
        self.searched = False  # every trial has run
        self.best_phase: dict[str, str] = {"name": ""}
        self._started = time.monotonic()

    # ---------------------------------------------------------------- the space
    def _ranks(self) -> list[int]:
        rank = self.spec.hyperparameters.lora.rank
        return sorted({r for r in RANKS if r <= rank} | {rank})

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        lr = self.spec.hyperparameters.optimizer.learning_rate
        space = {
            "learning_rate": FloatDistribution(lr * LR_RANGE[0], lr * LR_RANGE[1], log=True),
            "steps": FloatDistribution(*STEPS_RANGE, log=True),
            "lora_rank": CategoricalDistribution(self._ranks()),
        }
        return {name: space[name] for name in self.settings.searched}

    def own_params(self) -> dict[str, Any]:
        """The job's own settings as a point of the space (the first trial)."""
        hp = self.spec.hyperparameters
        own = {"learning_rate": hp.optimizer.learning_rate, "steps": 1.0, "lora_rank": hp.lora.rank}
        return {name: own[name] for name in self.settings.searched}

    def _trial_spec(self, params: dict[str, Any]) -> JobSpec:
        hp = self.spec.hyperparameters
        opt, lora = hp.optimizer, hp.lora
        factor = float(params.get("steps", 1.0))
        opt = replace(
            opt,
            learning_rate=float(params.get("learning_rate", opt.learning_rate)),
            epochs=min(MAX_EPOCHS, max(1, round(opt.epochs * factor))),
            max_steps=max(1, round(opt.max_steps * factor)) if opt.max_steps else 0,
        )
        rank = int(params.get("lora_rank", lora.rank))
        lora = replace(lora, rank=rank, alpha=lora.alpha * rank / lora.rank)
        ev = replace(hp.evaluation, calibrate=False, fit_uncertainty=False, baseline=False)
        return replace(
            self.trial_base,
            hyperparameters=replace(hp, optimizer=opt, lora=lora, evaluation=ev, search=SearchSettings()),
        )

    def _record(self, n: int, spec: JobSpec, params: dict[str, Any]) -> dict[str, float]:
        hp = spec.hyperparameters
        return {
            "trial": float(n + 1),
            "learning_rate": hp.optimizer.learning_rate,
            "epochs": float(hp.optimizer.epochs),
            "max_steps": float(hp.optimizer.max_steps),
            "lora_rank": float(hp.lora.rank),
            "steps": float(_plan(spec)[1]),
            "steps_factor": float(params.get("steps", 1.0)),
        }

    # ---------------------------------------------------------------- events
    def _total(self, step: int) -> int:
        """The job's total steps as known now: the steps run, the running training's plan, and
        an estimate of what is left (each trial to come as long as the job's own settings; a
        kfold job's cross-validation as folds + 1 such trainings)."""
        if self.cv is not None:
            return max(step, self.step_offset + self.cv.total_steps)
        left = 0
        if not self.searched:
            left = max(0, self.settings.trials - len(self.records) - (1 if self.current_total else 0))
            left *= self.job_plan
        if self.kfold:
            left += (self.spec.hyperparameters.evaluation.folds + 1) * self.job_plan
        return max(step, self.step_offset + self.current_total + left)

    def _global(self, p: JobProgress | None) -> JobProgress | None:
        if p is None:
            return None
        step = self.step_offset + p.step
        total = self._total(step)
        elapsed = time.monotonic() - self._started
        eta = (total - step) * elapsed / step if step > 0 else None
        return replace(p, step=step, total_steps=total, eta_seconds=eta)

    def _sub_ctx(self, spec: JobSpec, phase: dict[str, str], stop: _TrialStop | None = None) -> RecipeContext:
        """A context for one training inside the search: its progress offset into the job's, its
        messages prefixed with phase["name"]; a trial's has its own cancel flag (`stop`), reports
        its evaluations to the pruner, and never checkpoints."""

        def on_progress(p: JobProgress) -> None:
            self.ctx.on_progress(self._global(p))  # type: ignore[arg-type]

        def on_event(e: JobEvent) -> None:
            if e.type is EventType.EVALUATION and stop is not None:
                self._report(e, stop)
            label = phase["name"]
            self.ctx.on_event(
                replace(
                    e,
                    progress=self._global(e.progress),
                    message=f"{label}: {e.message}" if e.message else label,
                )
            )

        def on_resume(step: int) -> None:
            self.ctx.on_resume(self.step_offset + step)

        return replace(
            self.ctx,
            spec=spec,
            checkpoint_dir=self.ctx.checkpoint_dir if stop is None else None,
            cancel=stop if stop is not None else self.ctx.cancel,
            on_progress=on_progress,
            on_event=on_event,
            on_resume=on_resume,
        )

    def _emit(self, type_: EventType, message: str, metrics: dict[str, float] | None = None) -> None:
        progress = JobProgress(step=self.step_offset, total_steps=self._total(self.step_offset))
        self.ctx.emit(type_, progress=progress, message=message, metrics=metrics or {})

    # ---------------------------------------------------------------- pruning
    def _report(self, e: JobEvent, stop: _TrialStop) -> None:
        """A trial's evaluation (the recipe's event, its step the trial's own): tell the pruner;
        stop the trial when it says so."""
        value = e.metrics.get(self.metric)
        if stop.trial is None or value is None or e.progress is None or not math.isfinite(value):
            return
        stop.trial.report(value, e.progress.step)
        if stop.trial.should_prune():
            stop.pruned = True

    # ---------------------------------------------------------------- phases
    def setup(self) -> None:
        self._started = time.monotonic()
        s = self.settings
        where = (
            f"{len(self.trial_base.train)} of the training rows, scored on the other "
            f"{len(self.trial_base.validation)} (kfold job: the best settings are then cross-validated)"
            if self.kfold
            else f"the {len(self.spec.train)} training rows, scored on the {len(self.spec.validation)} validation rows"
        )
        self._emit(
            EventType.PROGRESS,
            f"hyperparameter search: up to {s.trials} trials of {', '.join(s.searched)} "
            f"(Optuna TPE, median pruning, by {self.metric})"
            + (f" within {s.budget_seconds:g} s" if s.budget_seconds else "")
            + f", each trained on {where}; trial 1 is the job's own settings",
        )

    def train(self) -> None:
        done = self._load_result()
        if done is None:
            self._search()
            self._save_result()
        else:
            self.records, self.best_record, self.step_offset = done["records"], done["best"], done["steps"]
            self.search_seconds = done["seconds"]
            self._emit(
                EventType.PROGRESS,
                f"search already done before the job was interrupted: best trial "
                f"{int(self.best_record['trial'])} ({_fmt_params(self.best_record)})",
            )
        self.searched = True
        if self.kfold:
            spec = self._published_spec()
            self._emit(
                EventType.PROGRESS,
                f"cross-validating the best trial's settings ({_fmt_params(self.best_record)}) "  # type: ignore[arg-type]
                "and training the published adapter on every row",
            )
            self.cv = CrossValidatedClassification(
                self._sub_ctx(spec, {"name": "best settings"}), **self.recipe_kw
            )
            self.cv.setup()
            self.cv.train()

    def _published_spec(self) -> JobSpec:
        """The job's spec with the best trial's settings (its own evaluation settings, no search)."""
        assert self.best_record is not None
        params = {
            "learning_rate": self.best_record["learning_rate"],
            "steps": self.best_record["steps_factor"],
        }
        params["lora_rank"] = int(self.best_record["lora_rank"])
        hp = self._trial_spec(params).hyperparameters
        hp = replace(hp, evaluation=self.spec.hyperparameters.evaluation)
        return replace(self.spec, hyperparameters=hp)

    def _search(self) -> None:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.settings
        seed = self.spec.hyperparameters.optimizer.seed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(2, s.trials // 3), multivariate=True
            )
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=int(self.job_plan * PRUNE_AFTER)
        )
        study = optuna.create_study(
            direction="minimize" if self.minimise else "maximize", sampler=sampler, pruner=pruner
        )
        study.enqueue_trial(self.own_params())
        space = self.distributions()
        started = time.monotonic()
        deadline = started + s.budget_seconds if s.budget_seconds else None
        for n in range(s.trials):
            if n and deadline is not None and time.monotonic() >= deadline:
                self.budget_stopped = True
                self._emit(
                    EventType.PROGRESS,
                    f"search budget of {s.budget_seconds:g} s spent after {n} trials; no more trials",
                )
                break
            self.ctx.interruption_point(lambda: None)  # cancel / preempt between trials
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial = study.ask(space)
            spec = self._trial_spec(trial.params)
            record = self._record(n, spec, trial.params)
            stop = _TrialStop(self.ctx.cancel, deadline if n else None)
            stop.trial = trial
            self.current_total = int(record["steps"])
            name = f"trial {n + 1}/{s.trials}"
            phase = {"name": name}
            recipe = ClassificationRecipe(self._sub_ctx(spec, phase, stop), **self.recipe_kw)  # type: ignore[arg-type]
            recipe.setup()
            finished = True
            try:
                recipe.train()
            except JobCancelled:
                if self.ctx.cancel.is_set():
                    raise
                finished = False
            ran = recipe.progress.step
            self.examples_seen += recipe.examples_seen
            tracker = recipe.tracker
            pruned = not finished and stop.pruned
            cut = not finished and not pruned  # the time budget
            record.update(
                steps_run=float(ran),
                pruned=1.0 if pruned else 0.0,
                budget_stopped=1.0 if cut else 0.0,
                best_step=float(tracker.best_step),
            )
            if tracker.best_value is None:  # stopped by the budget before its first evaluation
                study.tell(trial, state=TrialState.FAIL)
                note = f"stopped by the search budget at step {ran}, before its first evaluation; not scored"
            else:
                record["score"] = float(tracker.best_value)
                for key in ("accuracy", "macro_f1", "eval_loss"):
                    if key in recipe.best_metrics:
                        record[key] = recipe.best_metrics[key]
                if pruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    note = (
                        f"pruned at step {ran}: {self.metric} worse than the median of the earlier trials "
                        f"(best {record['score']:.4f} at step {tracker.best_step})"
                    )
                else:
                    study.tell(trial, record["score"])
                    better = self.best_record is None or (
                        record["score"] < self.best_record["score"]
                        if self.minimise
                        else record["score"] > self.best_record["score"]
                    )
                    note = f"{self.metric} {record['score']:.4f} at step {tracker.best_step}"
                    if cut:
                        note += f" (stopped by the search budget at step {ran})"
                    note += " (best so far)" if better else f" (best: trial {int(self.best_record['trial'])})"  # type: ignore[index]
                    if better:
                        self.best, self.best_record, self.best_phase = recipe, record, phase
            stop.trial = None  # told: later evaluations (the published one's baseline) are not the trial's
            self.records.append(record)
            self.step_offset += ran
            self.current_total = 0
            self._emit(EventType.EVALUATION, f"{name}: {_fmt_params(record)}: {note}", dict(record))
            log.info("search trial", **{k: v for k, v in record.items()})
            if recipe is not self.best:
                del recipe
                gc.collect()
            if cut:
                self.budget_stopped = True
                break
        self.search_seconds = time.monotonic() - started
        assert self.best_record is not None  # the first trial always finishes
        if self.kfold:  # the published adapter is trained anew; the trial's is not kept
            self.best = None
            gc.collect()
        self._emit(
            EventType.PROGRESS,
            f"search done: {len(self.records)} trials in {self.search_seconds:.0f} s, best trial "
            f"{int(self.best_record['trial'])} ({_fmt_params(self.best_record)}: {self.metric} "
            f"{self.best_record['score']:.4f})",
        )

    # ---------------------------------------------------------------- the outcome on disk (kfold)
    def _result_path(self) -> Path | None:
        if not self.kfold or self.ctx.checkpoint_dir is None:
            return None
        return self.ctx.checkpoint_dir / RESULT_FILE

    def _save_result(self) -> None:
        path = self._result_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {
            "records": self.records,
            "best": self.best_record,
            "steps": self.step_offset,
            "seconds": self.search_seconds,
        }
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _load_result(self) -> dict[str, Any] | None:
        path = self._result_path()
        if path is None or not path.is_file():
            return None
        return json.loads(path.read_text())

    # ---------------------------------------------------------------- finalize
    def search_metrics(self) -> dict[str, float]:
        best = self.best_record
        assert best is not None
        return {
            "search_trials": float(len(self.records)),
            "search_trials_pruned": float(sum(r["pruned"] for r in self.records)),
            "search_budget_stopped": 1.0 if self.budget_stopped else 0.0,
            "search_best_trial": best["trial"],
            "search_best_score": best["score"],
            "search_best_learning_rate": best["learning_rate"],
            "search_best_epochs": best["epochs"],
            "search_best_max_steps": best["max_steps"],
            "search_best_lora_rank": best["lora_rank"],
            "search_seconds": self.search_seconds,
            "search_steps": float(sum(r["steps_run"] for r in self.records)),
        }

    def finalize(self, directory: Path) -> TrainResult:
        if self.cv is not None:
            result = self.cv.finalize(directory)
            result.metrics.update(self.search_metrics())
            result.metrics["total_steps"] = float(self.step_offset + self.cv.total_steps)
            result.meta = replace(result.meta, metrics=result.metrics)
            (directory / ADAPTER_META).write_text(result.meta.to_json())  # with the search's metrics
            path = self._result_path()
            if path is not None:
                path.unlink(missing_ok=True)
            return result
        best = self.best
        assert best is not None and self.best_record is not None
        self.best_phase["name"] = f"best trial {int(self.best_record['trial'])}"
        # The published adapter gets the job's own evaluation settings: calibration, uncertainty, baseline.
        best.spec = replace(
            best.spec,
            hyperparameters=replace(
                best.spec.hyperparameters, evaluation=self.spec.hyperparameters.evaluation
            ),
        )
        metrics = best.finish()
        metrics.update(self.search_metrics())
        elapsed = time.monotonic() - self._started
        metrics["train_seconds"] = elapsed
        metrics["train_examples_per_second"] = self.examples_seen / elapsed if elapsed else 0.0
        metrics["eval_seconds"] = best.eval_seconds
        metrics["checkpoint_seconds"] = 0.0
        metrics["total_steps"] = float(self.step_offset)
        self.ctx.on_progress(JobProgress(step=self.step_offset, total_steps=self.step_offset))
        return TrainResult(metrics, best.save(directory, metrics))

    def run(self, directory: Path) -> TrainResult:
        return run_recipe(self, directory)
