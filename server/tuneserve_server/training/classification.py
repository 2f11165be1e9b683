"""The classification recipe: LoRA on the encoder plus a linear head over mean-pooled tokens.

The phases of the Recipe contract (recipe.py): setup -> train (evaluating on the held-out split
every epoch or every N optimiser steps, keeping the best weights, stopping early when asked) ->
finalize (restore the best weights, fit the temperature on the validation logits, save).

The loop tokenizes once and pads each batch to its own longest row; batches are drawn from
length-sorted buckets (Banking77 queries are ~14 tokens, with a long tail: padding a random
batch to its longest row, let alone to max_seq_length, wastes most of the work)."""

from __future__ import annotations

import contextlib
import math
import random
import time
from functools import partial
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F

from tuneserve_server.domain.jobs import (
    EventType,
    JobProgress,
    LabelledText,
    TaskType,
)
from tuneserve_server.modeling import (
    AdapterMeta,
    load_encoder,
    mean_pool,
    save_head,
)
from tuneserve_server.modeling_packed import packed_forward, packed_mean_pool, supports_packed
from tuneserve_server.observability.metrics import (
    TRAIN_EXAMPLES_PER_SECOND,
    TRAIN_LAST_CHECKPOINT,
    TRAIN_LOSS,
    TRAIN_STEP,
    TRAIN_TOTAL_STEPS,
)
from tuneserve_server.training import calibration, checkpoint
from tuneserve_server.training.baseline import MAX_BASELINE_ROWS, LogisticBaseline, verdict
from tuneserve_server.training.batching import length_grouped_batches, shuffled_batches
from tuneserve_server.training.checkpoint import Extras, TrainPosition
from tuneserve_server.training.evaluation import BestTracker, resolve_metric
from tuneserve_server.training.fast_steps import FrozenWeights, adamw, inference_weights, use_fast_dropout
from tuneserve_server.training.metrics import accuracy, macro_f1
from tuneserve_server.training.outcomes import TrainResult
from tuneserve_server.training.precision import training_autocast_dtype
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.uncertainty import MAX_COVARIANCE_ROWS, UncertaintyModel, text_uniforms
from tuneserve_server.warm_start import load_lora_weights, warm_head

log = structlog.get_logger("tuneserve.training")

EVAL_BATCH = 64
# Below this many validation rows no conformal level, abstention target or OOD rate is worth
# promising (a 0.9 set needs 9 rows; the abstention target needs 25 answered).
MIN_UNCERTAINTY_ROWS = 20


class ClassificationRecipe:
    """The Recipe for TaskType.CLASSIFICATION (see the module docstring)."""

    def __init__(
        self,
        ctx: RecipeContext,
        *,
        progress_interval_s: float = 2.0,
        progress_every_steps: int = 0,
        group_by_length: bool = True,
    ) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.source = ctx.source
        self.device = ctx.device
        self.resumed_from_step = 0
        self.progress_interval_s = progress_interval_s
        self.progress_every_steps = progress_every_steps
        self.group_by_length = group_by_length
        # Evaluation always runs in float32: the temperature is fitted on the logits serving sees.
        self.autocast_dtype = training_autocast_dtype(ctx.device, ctx.precision)
        # Continued training keeps the init version's labels (those the new data lacks keep
        # their trained head rows and stay predictable) and adds the new data's.
        init_labels = set(ctx.init.labels) if ctx.init is not None else set()
        self.labels = tuple(sorted({ex.label for ex in ctx.spec.train} | init_labels))
        self.label_ids = {label: i for i, label in enumerate(self.labels)}
        ev = ctx.spec.hyperparameters.evaluation
        self.tracker = BestTracker(
            resolve_metric(ev.metric_for_best, TaskType.CLASSIFICATION), ev.early_stopping_patience
        )
        # The best evaluation's LoRA weights ("adapter.*"), head ("head.*") and validation
        # logits ("logits"), and its metrics: what is published, not the last step's.
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, float] = {}
        self.stopped_early = False
        self.temperature = 1.0
        self.uncertainty: UncertaintyModel | None = None
        self.eval_seconds = 0.0
        self.checkpoint_seconds = 0.0
        self.loop_seconds = 0.0  # forward, backward and optimiser steps only
        self.examples_this_run = 0
        self.total_steps = 0
        self.progress = JobProgress()
        self._frozen: FrozenWeights | None = None  # during train() under autocast
        self._last_progress_event = -math.inf
        self._run_started = time.monotonic()
        self._setup_started = time.monotonic()

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from peft import LoraConfig, get_peft_model

        self._setup_started = time.monotonic()
        hp = self.spec.hyperparameters
        torch.manual_seed(hp.optimizer.seed)
        self.tokenizer, encoder = load_encoder(self.source, self.device)
        config = LoraConfig(
            r=hp.lora.rank,
            lora_alpha=hp.lora.alpha,
            lora_dropout=hp.lora.dropout,
            target_modules=list(hp.lora.target_modules),
            bias="none",
        )
        self.model = get_peft_model(encoder, config)
        use_fast_dropout(self.model)  # the same Bernoulli masks, ~4x cheaper on CPU (fast_steps.py)
        hidden = encoder.config.hidden_size
        self.head = torch.nn.Linear(hidden, len(self.labels)).to(self.device)
        if self.ctx.init is not None:  # continued training: the stored LoRA and head rows
            load_lora_weights(self.model, self.ctx.init)
            fresh = warm_head(self.head, self.labels, self.ctx.init)
            self.ctx.emit(
                EventType.CHECKPOINT,  # as a resume from a checkpoint is
                message=f"started from {self.spec.init_from}"
                + (f"; new labels with fresh head rows: {', '.join(fresh)}" if fresh else ""),
            )

    def _encode(self, rows: tuple[LabelledText, ...]) -> list[dict[str, list[int]]]:
        enc = self.tokenizer(
            [r.text for r in rows],
            truncation=True,
            max_length=self.spec.hyperparameters.optimizer.max_seq_length,
        )
        return [{k: enc[k][i] for k in enc} for i in range(len(rows))]

    def _collate(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(features, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch).last_hidden_state
        return self.head(mean_pool(out, batch["attention_mask"]))

    def _targets(self, rows: tuple[LabelledText, ...]) -> torch.Tensor:
        return torch.tensor([self.label_ids[r.label] for r in rows], dtype=torch.long)

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.ctx.emit(EventType.WARNING, progress=self.progress, message=message)

    # ---------------------------------------------------------------- train
    def accumulate_gradients(
        self, group: list[list[int]], features: list[dict[str, list[int]]], targets: torch.Tensor
    ) -> float:
        """Forward and backward over the batches of one optimiser step. Each batch's summed
        loss is divided by the rows of the whole group, so the gradients are those of the mean
        loss over every row, however the rows are split into batches. Returns that mean."""
        rows = sum(len(idx) for idx in group)
        total = 0.0
        for idx in group:
            batch = self._collate([features[i] for i in idx])
            with self._autocast():
                logits = self._logits(batch)
            loss = F.cross_entropy(logits.float(), targets[idx].to(self.device), reduction="sum") / rows
            loss.backward()
            total += float(loss.detach())
        return total

    def _autocast(self) -> torch.autocast:
        """The training forward pass's autocast (disabled when it trains in float32)."""
        return torch.autocast(
            "cuda" if self.device.startswith("cuda") else "cpu",
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def _epoch_batches(self, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
        if self.group_by_length:
            return length_grouped_batches(lengths, batch_size, rng)
        return shuffled_batches(len(lengths), batch_size, rng)

    def plan(self) -> tuple[int, int]:
        """(optimiser steps per epoch, total optimiser steps) for this job's data."""
        opt = self.spec.hyperparameters.optimizer
        accum = max(1, opt.gradient_accumulation_steps)
        steps_per_epoch = math.ceil(math.ceil(len(self.spec.train) / opt.batch_size) / accum)
        total = steps_per_epoch * opt.epochs
        return steps_per_epoch, min(total, opt.max_steps) if opt.max_steps else total

    def train(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        hp = self.spec.hyperparameters
        opt, ev = hp.optimizer, hp.evaluation
        accum = max(1, opt.gradient_accumulation_steps)
        features = self._train_features = self._encode(self.spec.train)
        lengths = [len(f["input_ids"]) for f in features]
        targets = self._targets(self.spec.train)
        _, total = self.plan()
        self.total_steps = total
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        optimizer = adamw(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(total * opt.warmup_ratio), total)
        pos = TrainPosition()
        if self.ctx.checkpoint_dir is not None:
            restored = checkpoint.load_with_extras(
                self.ctx.checkpoint_dir, self.model, self.head, optimizer, schedule
            )
            if restored is not None:
                pos, extras = restored
                self._restore_extras(extras)
                self.resumed_from_step = pos.step
                log.info("resumed from checkpoint", step=pos.step, epoch=pos.epoch)
                self.ctx.on_resume(pos.step)
        rng = random.Random(opt.seed)
        self.model.train()
        self.head.train()
        self.examples_seen = pos.examples_seen
        TRAIN_STEP.set(pos.step)
        TRAIN_TOTAL_STEPS.set(total)
        TRAIN_LOSS.set(math.nan if pos.loss_ema is None else pos.loss_ema)
        TRAIN_EXAMPLES_PER_SECOND.set(0)
        self._run_started, seen_at_start = time.monotonic(), pos.examples_seen
        self.examples_this_run = 0
        self._report_progress(pos, schedule, event=True)
        # Under autocast the frozen base weights are cast once for the loop, not every step
        # (fast_steps.py); evaluations swap the float32 ones back in, and the loop's end, however
        # it ends (done, early stop, cancel, preemption, failure), puts them back for good.
        if self.autocast_dtype is not None:
            self._frozen = FrozenWeights(self.model, self.autocast_dtype)
            self._frozen.low()
        try:
            for epoch in range(1, opt.epochs + 1):
                # Every epoch's order is drawn even when skipped, so a resumed job sees exactly
                # the batches the interrupted one would have.
                batches = self._epoch_batches(lengths, opt.batch_size, rng)
                if epoch < pos.epoch:
                    continue
                skip = pos.batches_done if epoch == pos.epoch else 0
                last_group = (len(batches) - 1) // accum * accum
                for first in range(0, len(batches), accum):
                    if first < skip:
                        continue
                    if pos.step >= total:
                        break
                    # Interruptions land between optimiser steps, never inside an accumulation.
                    self.ctx.interruption_point(partial(self._checkpoint, optimizer, schedule, pos))
                    group = batches[first : first + accum]
                    step_started = time.monotonic()
                    value = self.accumulate_gradients(group, features, targets)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                    self.loop_seconds += time.monotonic() - step_started
                    pos = TrainPosition(
                        step=pos.step + 1,
                        epoch=epoch,
                        batches_done=first + len(group),
                        loss_ema=value if pos.loss_ema is None else 0.9 * pos.loss_ema + 0.1 * value,
                        examples_seen=pos.examples_seen + sum(len(idx) for idx in group),
                    )
                    self.examples_seen = pos.examples_seen
                    self.examples_this_run = pos.examples_seen - seen_at_start
                    TRAIN_STEP.set(pos.step)
                    TRAIN_LOSS.set(pos.loss_ema)
                    self._report_progress(pos, schedule)
                    due = (
                        pos.step == total
                        or (ev.eval_every_steps > 0 and pos.step % ev.eval_every_steps == 0)
                        or (ev.eval_every_steps == 0 and first == last_group)
                    )
                    if due:
                        self._evaluate_and_track(pos)
                        if self.tracker.should_stop:
                            self.stopped_early = True
                            self._warn(
                                f"stopped early at step {pos.step}: {self.tracker.metric} did not improve "
                                f"for {self.tracker.patience} evaluations; keeping step "
                                f"{self.tracker.best_step} ({self.tracker.metric} {self.tracker.best_value:.4f})"
                            )
                            break
                    every = self.ctx.checkpoint_every
                    if every and pos.step % every == 0 and pos.step < total:
                        self._checkpoint(optimizer, schedule, pos)
                if self.stopped_early or pos.step >= total:
                    break
        finally:
            if self._frozen is not None:
                self._frozen.release()
                self._frozen = None
        self.final_position = pos

    def _report_progress(self, pos: TrainPosition, schedule, event: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._run_started
        steps_this_run = pos.step - self.resumed_from_step
        eps = self.examples_this_run / elapsed if elapsed > 0 and self.examples_this_run else None
        eta = (self.total_steps - pos.step) * elapsed / steps_this_run if steps_this_run > 0 else None
        self.progress = JobProgress(
            step=pos.step,
            total_steps=self.total_steps,
            epoch=pos.epoch,
            train_loss=pos.loss_ema,
            learning_rate=float(schedule.get_last_lr()[0]),
            examples_per_second=eps,
            eta_seconds=eta,
        )
        if eps is not None:
            TRAIN_EXAMPLES_PER_SECOND.set(eps)
        self.ctx.on_progress(self.progress)
        event = (
            event
            or pos.step == self.total_steps
            or now - self._last_progress_event >= self.progress_interval_s
            or (self.progress_every_steps > 0 and pos.step % self.progress_every_steps == 0)
        )
        if event:
            self._last_progress_event = now
            self.ctx.emit(EventType.PROGRESS, progress=self.progress)

    def _checkpoint(self, optimizer, schedule, pos: TrainPosition) -> None:
        directory = self.ctx.checkpoint_dir
        if directory is None:
            return
        started = time.monotonic()
        extras = Extras(
            self.best_state, {"tracker": self.tracker.to_dict(), "best_metrics": self.best_metrics}
        )
        checkpoint.save(directory, self.model, self.head, optimizer, schedule, pos, extras)
        self.checkpoint_seconds += time.monotonic() - started
        TRAIN_LAST_CHECKPOINT.set(time.time())
        self.ctx.emit(
            EventType.CHECKPOINT,
            progress=self.progress,
            message=f"checkpoint at step {pos.step} saved to {directory}",
        )

    def _restore_extras(self, extras: Extras) -> None:
        state = extras.state or {}
        if "tracker" in state:
            self.tracker = BestTracker.from_dict(state["tracker"])
        self.best_metrics = {k: float(v) for k, v in (state.get("best_metrics") or {}).items()}
        self.best_state = extras.best

    # ---------------------------------------------------------------- evaluate
    def validation_logits(self) -> torch.Tensor:
        """Float32 logits of every validation row (in spec order), computed in eval mode in
        length-sorted batches; their pooled embeddings are kept in `_val_pooled` (the
        uncertainty fit reuses the best evaluation's)."""
        if not hasattr(self, "_val_features"):
            self._val_features = self._encode(self.spec.validation)
        pooled = self._val_pooled = self._eval_pass(self._val_features, self._pooled, self.head.in_features)
        with torch.no_grad():  # the head is trainable: float32 whatever FrozenWeights holds
            return self.head(pooled.to(self.device)).float().cpu()

    def _pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    def _eval_pass(self, features: list[dict[str, list[int]]], forward, width: int) -> torch.Tensor:
        """`forward` over `features` in eval mode and length-sorted batches: (rows, width)
        float32 on the CPU, in the order of `features`."""
        was_training = self.model.training
        self.model.eval()
        self.head.eval()
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        out = torch.zeros(len(features), width)
        frozen = self._frozen.in_full() if self._frozen is not None else contextlib.nullcontext()
        # The logits and embeddings of a BERT-family base come from serving's padding-free
        # forward (modeling_packed.py): what Predict computes, without the padding.
        packed = forward in (self._logits, self._pooled) and supports_packed(self.model.get_base_model())
        with torch.no_grad(), frozen:
            for i in range(0, len(order), EVAL_BATCH):
                idx = order[i : i + EVAL_BATCH]
                if packed:
                    pooled = self._packed_pooled([features[j]["input_ids"] for j in idx])
                    value = self.head(pooled) if forward == self._logits else pooled
                else:
                    value = forward(self._collate([features[j] for j in idx]))
                out[idx] = value.float().cpu()
        if was_training:
            self.model.train()
            self.head.train()
        return out

    def _packed_pooled(self, input_ids: list[list[int]]) -> torch.Tensor:
        """Mean-pooled embeddings of the sequences, through the packed forward (eval mode)."""
        hidden, packing = packed_forward(self.model.get_base_model(), input_ids, self.device)
        return packed_mean_pool(hidden, packing)

    def _metrics(self, logits: torch.Tensor) -> dict[str, float]:
        y = self._targets(self.spec.validation)
        y_true, y_pred = y.tolist(), logits.argmax(-1).tolist()
        return {
            "accuracy": accuracy(y_true, y_pred),
            "macro_f1": macro_f1(y_true, y_pred, len(self.labels)),
            "eval_loss": float(F.cross_entropy(logits, y, reduction="mean")) if len(y_true) else 0.0,
            "validation_examples": float(len(y_true)),
        }

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the weights as they are now."""
        return self._metrics(self.validation_logits())

    def _evaluate_and_track(self, pos: TrainPosition) -> None:
        started = time.monotonic()
        logits = self.validation_logits()
        metrics = self._metrics(logits)
        improved = self.tracker.update(metrics, pos.step, pos.epoch)
        if improved:
            self._snapshot(logits)
            self.best_metrics = dict(metrics)
        self.eval_seconds += time.monotonic() - started
        shown = dict(metrics)
        shown["best_step"] = float(self.tracker.best_step)
        shown[f"best_{self.tracker.metric}"] = float(self.tracker.best_value)  # type: ignore[arg-type]
        note = "new best" if improved else f"no improvement for {self.tracker.since_best} evaluation(s)"
        log.info("evaluated", step=pos.step, improved=improved, **metrics)
        self.ctx.emit(
            EventType.EVALUATION,
            progress=self.progress,
            metrics=shown,
            message=f"step {pos.step}: {self.tracker.metric} {metrics[self.tracker.metric]:.4f} ({note})",
        )

    def _snapshot(self, logits: torch.Tensor) -> None:
        from peft import get_peft_model_state_dict

        state = {f"adapter.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        state["head.weight"] = self.head.weight.detach().clone()
        state["head.bias"] = self.head.bias.detach().clone()
        state["logits"] = logits.detach().clone()
        self.best_state = state
        # The uncertainty fit's validation embeddings, for as long as these are the validation rows.
        pooled = getattr(self, "_val_pooled", None)
        self._best_pooled = (self.spec.validation, pooled) if pooled is not None else None

    def restore_best(self) -> None:
        """Load the best evaluation's weights into the model and head."""
        from peft import set_peft_model_state_dict

        assert self.best_state is not None
        adapter = {k[len("adapter.") :]: v for k, v in self.best_state.items() if k.startswith("adapter.")}
        set_peft_model_state_dict(self.model, adapter)
        with torch.no_grad():
            self.head.weight.copy_(self.best_state["head.weight"])
            self.head.bias.copy_(self.best_state["head.bias"])

    def finish(self) -> dict[str, float]:
        """Restore the best weights and fit the temperature; the metrics to publish."""
        if self.best_state is None:  # nothing was evaluated (cannot happen after train())
            logits = self.validation_logits()
            self._snapshot(logits)
            self.best_metrics = self._metrics(logits)
            self.tracker.update(self.best_metrics, getattr(self, "final_position", TrainPosition()).step, 0)
        self.restore_best()
        self.model.eval()
        self.head.eval()
        metrics = dict(self.best_metrics)
        metrics["best_step"] = float(self.tracker.best_step)
        metrics["best_epoch"] = float(self.tracker.best_epoch)
        metrics["evaluations"] = float(self.tracker.evaluations)
        metrics["stopped_early"] = 1.0 if self.stopped_early else 0.0
        if self.stopped_early:
            metrics["stopped_at_step"] = float(self.final_position.step)
        started = time.monotonic()
        logits = self.best_state["logits"]  # type: ignore[index]
        y = self._targets(self.spec.validation)
        wanted = self.spec.hyperparameters.evaluation.calibrate
        fit = wanted and len(y) >= calibration.MIN_ROWS
        if wanted and not fit:
            self._warn(
                f"temperature scaling skipped: {len(y)} validation rows are too few to fit it "
                f"(needs {calibration.MIN_ROWS}); Predict uses plain softmax probabilities"
            )
        metrics.update(calibration.calibration_report(logits, y, fit))
        self.temperature = metrics["temperature"]
        if self.spec.hyperparameters.evaluation.fit_uncertainty:
            metrics.update(self._fit_uncertainty(logits, y))
        self.eval_seconds += time.monotonic() - started
        if self.spec.hyperparameters.evaluation.baseline and len(y):
            metrics.update(self._baseline(metrics))
        return metrics

    def _sample_train_rows(self, limit: int) -> tuple[tuple[LabelledText, ...], list[dict[str, list[int]]]]:
        """The training rows, or `limit` of them drawn with the job's seed (in file order), and
        their token ids (the training loop's, when it ran in this process)."""
        rows = self.spec.train
        if not hasattr(self, "_train_features"):
            self._train_features = self._encode(rows)
        keep = list(range(len(rows)))
        if len(rows) > limit:
            keep = sorted(random.Random(self.spec.hyperparameters.optimizer.seed).sample(keep, limit))
        return tuple(rows[i] for i in keep), [self._train_features[i] for i in keep]

    def _fit_embeddings(self, features: list[dict[str, list[int]]], adapter: bool) -> torch.Tensor:
        """Pooled embeddings for the end-of-job fits (with the adapter: the OOD detector's class
        means and covariance, from training rows; without: the baseline's features). Computed at
        the training precision (bfloat16 autocast where the loop used it) with the LoRA products
        folded into the weights (fast_steps.inference_weights): one matmul per Linear. The
        validation rows, against which every request-time guarantee is checked, keep
        `_eval_pass`'s float32 path (what Predict computes)."""
        with inference_weights(self.model, self.autocast_dtype, adapter=adapter), self._autocast():
            return self._eval_pass(features, self._pooled, self.head.in_features)

    def _baseline(self, metrics: dict[str, float]) -> dict[str, float]:
        """Logistic regression on the frozen base model's pooled embeddings (training rows, up to
        MAX_BASELINE_ROWS), scored on the validation split like the adapter; a WARNING when the
        adapter does not beat it by baseline.MARGIN."""
        started = time.monotonic()
        rows, features = self._sample_train_rows(MAX_BASELINE_ROWS)
        if not hasattr(self, "_val_features"):
            self._val_features = self._encode(self.spec.validation)
        # The base weights alone, for the training and the validation rows alike.
        train_x = self._fit_embeddings(features, adapter=False)
        val_x = self._fit_embeddings(self._val_features, adapter=False)
        model = self.baseline_model = LogisticBaseline.fit(train_x, self._targets(rows), len(self.labels))
        y_true = self._targets(self.spec.validation).tolist()
        y_pred = model.predict(val_x).tolist()
        out = {
            "baseline_accuracy": accuracy(y_true, y_pred),
            "baseline_macro_f1": macro_f1(y_true, y_pred, len(self.labels)),
            "baseline_train_rows": float(len(rows)),
            "baseline_seconds": time.monotonic() - started,
        }
        out["baseline_margin_macro_f1"] = metrics.get("macro_f1", 0.0) - out["baseline_macro_f1"]
        log.info("baseline", **out)
        self.ctx.emit(
            EventType.EVALUATION,
            progress=self.progress,
            # Every EVALUATION event carries the adapter's accuracy / macro_f1; the baseline's beside.
            metrics={
                "accuracy": metrics.get("accuracy", 0.0),
                "macro_f1": metrics.get("macro_f1", 0.0),
                **out,
            },
            message=(
                f"baseline (logistic regression on the frozen base embeddings): macro-F1 "
                f"{out['baseline_macro_f1']:.4f}, accuracy {out['baseline_accuracy']:.4f}; the adapter "
                f"{metrics.get('macro_f1', 0.0):.4f} / {metrics.get('accuracy', 0.0):.4f}"
            ),
        )
        warning = verdict(metrics.get("macro_f1", 0.0), out["baseline_macro_f1"])
        if warning:
            self._warn(warning)
        return out

    def _fit_uncertainty(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Conformal calibration, abstention threshold and OOD detector of the published
        weights, on the temperature-scaled validation probabilities and pooled embeddings
        (of validation rows, and of up to MAX_COVARIANCE_ROWS training rows); their summary
        as metrics. Every request-time guarantee is checked against the rows kept here."""
        if len(y) < MIN_UNCERTAINTY_ROWS:
            self._warn(
                f"uncertainty outputs not fitted: {len(y)} validation rows are too few "
                f"(needs {MIN_UNCERTAINTY_ROWS}); Predict refuses confidence_level / return_uncertainty"
            )
            return {}
        ev = self.spec.hyperparameters.evaluation
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        width = self.head.in_features
        kept = getattr(self, "_best_pooled", None)
        if kept is not None and kept[0] is self.spec.validation:
            val_embeddings = kept[1]  # the best evaluation's pass (eval mode, the same weights)
        else:  # resumed after the best evaluation, or other rows (cross-validation's held-out ones)
            if not hasattr(self, "_val_features"):
                self._val_features = self._encode(self.spec.validation)
            val_embeddings = self._eval_pass(self._val_features, self._pooled, width)
        # MAX_COVARIANCE_ROWS bounds the time; plenty for the covariance.
        rows, features = self._sample_train_rows(MAX_COVARIANCE_ROWS)
        train_embeddings = self._fit_embeddings(features, adapter=True)
        self.uncertainty = UncertaintyModel.fit(
            probs,
            y,
            val_embeddings.double(),
            train_embeddings.double(),
            self._targets(rows),
            target_precision=ev.abstain_target_precision or None,
            target_coverage=ev.abstain_target_coverage or None,
            ood_fpr=ev.ood_false_positive_rate,
            label_names=self.labels,
            aps_u=text_uniforms([r.text for r in self.spec.validation]),  # Predict hashes its texts alike
        )
        return self.uncertainty.summary()

    # ---------------------------------------------------------------- save
    def save(self, directory: Path, metrics: dict[str, float]) -> AdapterMeta:
        self.model.save_pretrained(str(directory))
        save_head(directory, self.head)
        hp = self.spec.hyperparameters
        meta = AdapterMeta(
            task=TaskType.CLASSIFICATION,
            base_model=self.source.model_id,
            labels=self.labels,
            lora_rank=hp.lora.rank,
            target_modules=tuple(hp.lora.target_modules),
            metrics=metrics,
            job_id=self.ctx.job_id,
            temperature=self.temperature,
        )
        (directory / "tuneserve.json").write_text(meta.to_json())
        if self.uncertainty is not None:
            self.uncertainty.save(directory)
        return meta

    def finalize(self, directory: Path) -> TrainResult:
        """finish(), the run's timings, and the adapter written into `directory`."""
        metrics = self.finish()
        train_s = time.monotonic() - self._setup_started
        metrics["train_seconds"] = train_s
        metrics["train_examples_per_second"] = self.examples_this_run / train_s if train_s else 0.0
        metrics["eval_seconds"] = self.eval_seconds
        metrics["checkpoint_seconds"] = self.checkpoint_seconds
        metrics["train_loop_seconds"] = self.loop_seconds
        metrics["total_steps"] = float(self.total_steps)
        if self.resumed_from_step:
            metrics["resumed_from_step"] = float(self.resumed_from_step)
        return TrainResult(metrics, self.save(directory, metrics))

    def run(self, directory: Path) -> TrainResult:
        """Every phase in order, as the worker drives them."""
        return run_recipe(self, directory)
