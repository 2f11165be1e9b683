"""K-fold cross-validation for small classification sets (issue #17): an orchestration around the
classification recipe, used for jobs whose spec says `validation_scheme == "kfold"` (the submit
path chooses it when the hold-out split would be too small to measure or calibrate on).

    folds    for each of the k stratified folds (training/folds.py): a ClassificationRecipe
             trained on the other folds and evaluated on this one (best checkpoint by the job's
             metric, early stopping as asked); its best evaluation's logits of the held-out rows
             are that fold's out-of-fold (OOF) predictions
    final    a ClassificationRecipe trained on EVERY row, for the folds' mean best point in
             epochs (mean best step / steps per epoch of the fold, times the steps per epoch of
             all rows), its schedule ending there; no evaluation during it (nothing is held out)
    finalize the job's metrics are the folds' (mean and sd over the folds); the temperature, the
             uncertainty outputs (conformal scores, abstention threshold, OOD threshold) are fitted
             on the OOF logits of every held-out row; the baseline (training/baseline.py) is
             cross-validated on the same folds; then the final adapter is saved

Progress runs over all k + 1 trainings as one step count, each event says which fold it is;
cancel and preemption work between optimiser steps as in the recipe. A fold interrupted by a
preemption resumes from its own checkpoint (a subdirectory of the job's); a finished fold's OOF
logits and metrics are kept in the job's checkpoint directory, so a resumed job skips the
folds already done. Without a checkpoint directory a resumed job starts over.

Known approximations (docs/README): the OOD detector's threshold is set on the final adapter's
embeddings of the (training) rows, in-sample, so it tends to flag somewhat more in-domain texts
than `ood_false_positive_rate`; the conformal sets and abstention use the OOF probabilities and
keep their guarantees up to the difference between the fold models and the final one."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import structlog
import torch
from safetensors.torch import load_file, save_file

from tuneserve_server.domain.jobs import EventType, JobEvent, JobProgress, JobSpec
from tuneserve_server.training import calibration
from tuneserve_server.training.baseline import MAX_BASELINE_ROWS, LogisticBaseline, verdict
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.folds import ALWAYS_TRAIN, assign_folds
from tuneserve_server.training.metrics import accuracy, macro_f1
from tuneserve_server.training.outcomes import TrainResult
from tuneserve_server.training.recipe import RecipeContext, run_recipe

log = structlog.get_logger("tuneserve.training")

NEVER = 10**9  # eval_every_steps of the final run: it evaluates once, at its last step


class ClassificationJob:
    """The classification Recipe the worker registers: the plain recipe for a hold-out job, the
    k-fold orchestration when the spec says "kfold", the hyperparameter search (search.py) when
    the spec has search trials; every phase is the chosen one's. A job
    whose optimizer settings were chosen from the data size says so first (one event)."""

    def __init__(
        self,
        ctx: RecipeContext,
        *,
        progress_interval_s: float = 2.0,
        progress_every_steps: int = 0,
        group_by_length: bool = True,
    ) -> None:
        spec = ctx.spec
        if spec.auto_hyperparameters:
            opt = spec.hyperparameters.optimizer
            chosen = ", ".join(f"{name} {getattr(opt, name):g}" for name in spec.auto_hyperparameters)
            ctx.emit(
                EventType.PROGRESS,
                progress=JobProgress(),
                message=f"hyperparameters chosen for {len(spec.train)} training rows (auto; "
                f"training/auto_defaults.py): {chosen}",
            )
        kw = {
            "progress_interval_s": progress_interval_s,
            "progress_every_steps": progress_every_steps,
            "group_by_length": group_by_length,
        }
        kfold = spec.hyperparameters.evaluation.validation_scheme == "kfold"
        if spec.hyperparameters.search.trials:
            # A search wraps either scheme (search.py imports this module: imported here).
            from tuneserve_server.training.search import HyperparameterSearch

            self.recipe = HyperparameterSearch(ctx, **kw)
        elif kfold:
            self.recipe = CrossValidatedClassification(ctx, **kw)
        else:
            self.recipe = ClassificationRecipe(ctx, **kw)

    def setup(self) -> None:
        self.recipe.setup()

    def train(self) -> None:
        self.recipe.train()

    def finalize(self, directory: Path) -> TrainResult:
        return self.recipe.finalize(directory)


def _plan(spec: JobSpec) -> tuple[int, int]:
    """(steps per epoch, total steps) of a recipe on `spec`, without building a model."""
    return ClassificationRecipe(RecipeContext(spec, source=None)).plan()  # type: ignore[arg-type]


class CrossValidatedClassification:
    """The Recipe of a k-fold classification job (see the module docstring)."""

    def __init__(self, ctx: RecipeContext, **recipe_kw: object) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.recipe_kw = recipe_kw
        ev = self.spec.hyperparameters.evaluation
        self.k = ev.folds
        rows = self.spec.train
        self.assignment = assign_folds(rows, self.k, self.spec.hyperparameters.optimizer.seed)
        # As the recipe orders them: continued training keeps the init version's labels too.
        init_labels = set(ctx.init.labels) if ctx.init is not None else set()
        self.labels = tuple(sorted({ex.label for ex in rows} | init_labels))
        self.held = [i for i, f in enumerate(self.assignment) if f != ALWAYS_TRAIN]
        self.fold_specs = [self._fold_spec(f) for f in range(self.k)]
        self.fold_plans = [_plan(s) for s in self.fold_specs]
        self.final_plan = _plan(self._final_spec(0))
        self.oof = torch.zeros(len(rows), len(self.labels))
        self.fold_results: list[dict] = []
        self.step_offset = 0
        self.final: ClassificationRecipe | None = None
        self.resumed_from_step = 0
        self._started = time.monotonic()

    # ---------------------------------------------------------------- specs
    def _fold_spec(self, fold: int) -> JobSpec:
        rows = self.spec.train
        ev = self.spec.hyperparameters.evaluation
        hp = replace(
            self.spec.hyperparameters,
            evaluation=replace(ev, calibrate=False, fit_uncertainty=False, baseline=False),
        )
        return replace(
            self.spec,
            train=tuple(ex for ex, f in zip(rows, self.assignment, strict=True) if f != fold),
            validation=tuple(ex for ex, f in zip(rows, self.assignment, strict=True) if f == fold),
            hyperparameters=hp,
        )

    def _final_spec(self, steps: int) -> JobSpec:
        hp = self.spec.hyperparameters
        ev = replace(
            hp.evaluation,
            calibrate=False,
            fit_uncertainty=False,
            baseline=False,
            eval_every_steps=NEVER,
            early_stopping_patience=0,
        )
        opt = replace(hp.optimizer, max_steps=steps) if steps else hp.optimizer
        # The recipe evaluates once, at its last step; on one row (its metrics are not used).
        return replace(
            self.spec,
            validation=self.spec.train[:1],
            hyperparameters=replace(hp, optimizer=opt, evaluation=ev),
        )

    @property
    def total_steps(self) -> int:
        return sum(t for _, t in self.fold_plans) + self.final_plan[1]

    # ---------------------------------------------------------------- events
    def _global(self, p: JobProgress | None) -> JobProgress | None:
        if p is None:
            return None
        step = self.step_offset + p.step
        elapsed = time.monotonic() - self._started
        done = step - self.resumed_from_step
        eta = (self.total_steps - step) * elapsed / done if done > 0 else None
        return replace(p, step=step, total_steps=self.total_steps, eta_seconds=eta)

    def _fold_ctx(
        self, spec: JobSpec, name: str, directory: Path | None, *, evaluations: bool = True
    ) -> RecipeContext:
        def on_progress(p: JobProgress) -> None:
            self.ctx.on_progress(self._global(p))  # type: ignore[arg-type]

        def on_event(e: JobEvent) -> None:
            if e.type is EventType.EVALUATION and not evaluations:
                return  # the final run evaluates on nothing: no event with empty metrics
            self.ctx.on_event(
                replace(
                    e,
                    progress=self._global(e.progress),
                    message=f"{name}: {e.message}" if e.message else name,
                )
            )

        def on_resume(step: int) -> None:
            self.resumed_from_step = self.step_offset + step
            self.ctx.on_resume(self.step_offset + step)

        return replace(
            self.ctx,
            spec=spec,
            checkpoint_dir=directory,
            on_progress=on_progress,
            on_event=on_event,
            on_resume=on_resume,
        )

    def _emit(self, type_: EventType, message: str, metrics: dict[str, float] | None = None) -> None:
        progress = JobProgress(step=self.step_offset, total_steps=self.total_steps)
        self.ctx.emit(type_, progress=progress, message=message, metrics=metrics or {})

    # ---------------------------------------------------------------- fold results on disk
    def _done_dir(self) -> Path | None:
        return None if self.ctx.checkpoint_dir is None else self.ctx.checkpoint_dir / "cv-folds"

    def _sub_dir(self, name: str) -> Path | None:
        return None if self.ctx.checkpoint_dir is None else self.ctx.checkpoint_dir / name

    def _save_fold(self, fold: int, logits: torch.Tensor, result: dict) -> None:
        directory = self._done_dir()
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{fold}.tmp"
        save_file({"logits": logits.contiguous()}, str(tmp), metadata={"result": json.dumps(result)})
        os.replace(tmp, directory / f"{fold}.safetensors")

    def _load_fold(self, fold: int) -> tuple[torch.Tensor, dict] | None:
        directory = self._done_dir()
        path = None if directory is None else directory / f"{fold}.safetensors"
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            result = json.loads(f.metadata()["result"])
        return load_file(str(path))["logits"], result

    # ---------------------------------------------------------------- phases
    def setup(self) -> None:
        self._started = time.monotonic()
        counts = [sum(1 for f in self.assignment if f == k) for k in range(self.k)]
        self._emit(
            EventType.PROGRESS,
            f"{self.k}-fold cross-validation on {len(self.spec.train)} rows (held out per fold: "
            f"{', '.join(map(str, counts))}; {len(self.spec.train) - len(self.held)} rows of labels too "
            "rare to hold out stay in training), then the adapter is trained on every row",
        )

    def train(self) -> None:
        for fold in range(self.k):
            spec = self.fold_specs[fold]
            idx = [i for i, f in enumerate(self.assignment) if f == fold]
            done = self._load_fold(fold)
            if done is None:
                self.ctx.interruption_point(lambda: None)  # a finished fold is already on disk
                sub = self._sub_dir(f"fold-{fold}")
                own = sub is not None and (sub.exists() or sub.with_name(sub.name + ".old").exists())
                if self.step_offset and not self.resumed_from_step and not own:  # after whole folds
                    self.resumed_from_step = self.step_offset
                    self.ctx.on_resume(self.step_offset)
                name = f"fold {fold + 1}/{self.k}"
                recipe = ClassificationRecipe(
                    self._fold_ctx(spec, name, self._sub_dir(f"fold-{fold}")), **self.recipe_kw
                )  # type: ignore[arg-type]
                recipe.setup()
                recipe.train()
                metrics = recipe.finish()
                logits = recipe.best_state["logits"]  # type: ignore[index]
                spe = recipe.plan()[0]
                result = {
                    "accuracy": metrics["accuracy"],
                    "macro_f1": metrics["macro_f1"],
                    "eval_loss": metrics["eval_loss"],
                    "best_step": metrics["best_step"],
                    "best_epochs": metrics["best_step"] / spe,
                    "validation_examples": float(len(idx)),
                }
                self._remap(recipe, logits, idx)
                self._save_fold(fold, self.oof[idx], result)
                shutil.rmtree(self._sub_dir(f"fold-{fold}") or "/nonexistent", ignore_errors=True)
                self._emit(
                    EventType.EVALUATION,
                    f"{name}: {len(idx)} held-out rows, accuracy {result['accuracy']:.4f}, macro-F1 "
                    f"{result['macro_f1']:.4f} at step {int(result['best_step'])}",
                    {**result, "fold": float(fold + 1)},
                )
                del recipe
            else:
                self.oof[idx], result = done
            self.fold_results.append(result)
            self.step_offset += self.fold_plans[fold][1]
        mean_epochs = statistics.mean(r["best_epochs"] for r in self.fold_results)
        spe_all, full = self.final_plan
        steps = max(1, min(full, round(mean_epochs * spe_all)))
        self.final_steps = steps
        self.final_plan = (spe_all, steps)
        self._emit(
            EventType.PROGRESS,
            f"training the published adapter on all {len(self.spec.train)} rows for {steps} steps "
            f"(the folds' mean best point: {mean_epochs:.2f} epochs)",
        )
        final = ClassificationRecipe(
            self._fold_ctx(self._final_spec(steps), "all rows", self._sub_dir("final"), evaluations=False),
            **self.recipe_kw,  # type: ignore[arg-type]
        )
        final.setup()
        final.train()
        self.final = final

    def _remap(self, recipe: ClassificationRecipe, logits: torch.Tensor, idx: list[int]) -> None:
        """A fold's logits in the job's label order (a fold's training rows hold every label: the
        folds keep one of each in training, so the orders agree; checked, not assumed)."""
        if recipe.labels != self.labels:
            cols = [recipe.labels.index(label) for label in self.labels]
            logits = logits[:, cols]
        self.oof[idx] = logits.float()

    def _targets(self, idx: list[int]) -> torch.Tensor:
        ids = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([ids[self.spec.train[i].label] for i in idx], dtype=torch.long)

    def finalize(self, directory: Path) -> TrainResult:
        final = self.final
        assert final is not None
        final.finish()  # the last step's weights (nothing held out to pick another)
        hp = self.spec.hyperparameters
        rows = self.spec.train
        metrics: dict[str, float] = {"validation_scheme": 1.0, "folds": float(self.k)}
        for name in ("accuracy", "macro_f1", "eval_loss"):
            values = [r[name] for r in self.fold_results]
            metrics[name] = statistics.mean(values)
            metrics[f"{name}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        oof, y = self.oof[self.held], self._targets(self.held)
        pred = oof.argmax(-1).tolist()
        metrics["oof_accuracy"] = accuracy(y.tolist(), pred)
        metrics["oof_macro_f1"] = macro_f1(y.tolist(), pred, len(self.labels))
        metrics["validation_examples"] = float(len(self.held))
        metrics["fold_best_step_mean"] = statistics.mean(r["best_step"] for r in self.fold_results)
        metrics["best_step"] = float(self.final_steps)
        metrics["best_epoch"] = float(math.ceil(self.final_steps / self.final_plan[0]))
        metrics["evaluations"] = float(sum(1 for _ in self.fold_results))
        metrics["stopped_early"] = 0.0
        wanted = hp.evaluation.calibrate
        fit = wanted and len(y) >= calibration.MIN_ROWS
        if wanted and not fit:
            final._warn(
                f"temperature scaling skipped: {len(y)} out-of-fold rows are too few to fit it "
                f"(needs {calibration.MIN_ROWS}); Predict uses plain softmax probabilities"
            )
        metrics.update(calibration.calibration_report(oof, y, fit))
        metrics["calibration_rows"] = float(len(y))
        final.temperature = metrics["temperature"]
        if hp.evaluation.fit_uncertainty:
            # The recipe fits on `spec.validation`: here, the held-out rows with their OOF logits.
            final.spec = replace(final.spec, validation=tuple(rows[i] for i in self.held), hyperparameters=hp)
            if hasattr(final, "_val_features"):
                del final._val_features
            metrics.update(final._fit_uncertainty(oof, y))
        if hp.evaluation.baseline and len(y):
            metrics.update(self._baseline(final, metrics))
        elapsed = time.monotonic() - self._started
        metrics["train_seconds"] = elapsed
        metrics["train_examples_per_second"] = final.examples_seen / elapsed if elapsed else 0.0
        metrics["eval_seconds"] = final.eval_seconds
        metrics["checkpoint_seconds"] = final.checkpoint_seconds
        metrics["total_steps"] = float(self.total_steps)
        if self.resumed_from_step:
            metrics["resumed_from_step"] = float(self.resumed_from_step)
        meta = final.save(directory, metrics)
        shutil.rmtree(self._done_dir() or "/nonexistent", ignore_errors=True)
        return TrainResult(metrics, meta)

    def _baseline(self, final: ClassificationRecipe, metrics: dict[str, float]) -> dict[str, float]:
        """The baseline cross-validated on the same folds: frozen base embeddings of every row once,
        one logistic regression per fold on its training rows, scored on its held-out rows."""
        started = time.monotonic()
        rows = self.spec.train
        x = final._fit_embeddings(final._encode(rows), adapter=False)  # the base weights alone
        y_all = self._targets(list(range(len(rows))))
        pred = torch.full((len(rows),), -1, dtype=torch.long)
        per_fold = []
        for fold in range(self.k):
            train_idx = [i for i, f in enumerate(self.assignment) if f != fold][:MAX_BASELINE_ROWS]
            held_idx = [i for i, f in enumerate(self.assignment) if f == fold]
            model = LogisticBaseline.fit(x[train_idx], y_all[train_idx], len(self.labels))
            pred[held_idx] = model.predict(x[held_idx])
            per_fold.append(macro_f1(y_all[held_idx].tolist(), pred[held_idx].tolist(), len(self.labels)))
        y_true, y_pred = y_all[self.held].tolist(), pred[self.held].tolist()
        out = {
            "baseline_accuracy": accuracy(y_true, y_pred),
            "baseline_macro_f1": macro_f1(y_true, y_pred, len(self.labels)),
            "baseline_macro_f1_sd": statistics.stdev(per_fold) if len(per_fold) > 1 else 0.0,
            "baseline_train_rows": float(len(rows)),
            "baseline_seconds": time.monotonic() - started,
        }
        adapter = metrics.get("oof_macro_f1", 0.0)
        out["baseline_margin_macro_f1"] = adapter - out["baseline_macro_f1"]
        self._emit(
            EventType.EVALUATION,
            f"baseline (logistic regression on the frozen base embeddings), cross-validated on the same "
            f"{self.k} folds: macro-F1 {out['baseline_macro_f1']:.4f}, accuracy {out['baseline_accuracy']:.4f}; "
            f"the adapter's folds {adapter:.4f} / {metrics.get('oof_accuracy', 0.0):.4f}",
            {"accuracy": metrics["oof_accuracy"], "macro_f1": adapter, **out},
        )
        warning = verdict(adapter, out["baseline_macro_f1"])
        if warning:
            final._warn(warning)
        return out

    def run(self, directory: Path) -> TrainResult:
        return run_recipe(self, directory)
