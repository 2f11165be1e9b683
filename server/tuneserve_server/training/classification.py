"""The classification recipe: LoRA on the encoder plus a linear head over mean-pooled tokens.

setup -> train -> evaluate -> save, driven by the worker. The loop tokenizes once and pads
each batch to its own longest row (Banking77 queries are ~14 tokens; padding everything to
max_seq_length would waste most of the work)."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F

from tuneserve_server.modeling import (
    AdapterMeta,
    BaseModelSource,
    load_encoder,
    mean_pool,
    save_head,
)
from tuneserve_server.observability.metrics import (
    TRAIN_EXAMPLES_PER_SECOND,
    TRAIN_LAST_CHECKPOINT,
    TRAIN_LOSS,
    TRAIN_STEP,
    TRAIN_TOTAL_STEPS,
)
from tuneserve_server.training import checkpoint
from tuneserve_server.training.checkpoint import TrainPosition
from tuneserve_server.training.jobs import JobProgress, JobSpec, LabelledText, TaskType
from tuneserve_server.training.metrics import accuracy, macro_f1


class JobCancelled(Exception):
    """Raised inside the loop when the job's cancel flag is set."""


class JobPreempted(Exception):
    """Raised inside the loop when the worker is shutting down; a checkpoint was saved."""


@dataclass
class TrainResult:
    metrics: dict[str, float]
    meta: AdapterMeta


ProgressSink = Callable[[JobProgress], None]
log = structlog.get_logger("tuneserve.training")


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class ClassificationRecipe:
    def __init__(
        self,
        spec: JobSpec,
        source: BaseModelSource,
        *,
        device: str = "cpu",
        job_id: str = "",
        cancel: threading.Event | None = None,
        preempt: threading.Event | None = None,
        on_progress: ProgressSink | None = None,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 0,
    ) -> None:
        self.spec = spec
        self.source = source
        self.device = device
        self.job_id = job_id
        self.cancel = cancel or threading.Event()
        self.preempt = preempt or threading.Event()
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resumed_from_step = 0
        self.on_progress = on_progress or (lambda p: None)
        self.labels = tuple(sorted({ex.label for ex in spec.train}))
        self.label_ids = {label: i for i, label in enumerate(self.labels)}

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from peft import LoraConfig, get_peft_model

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
        hidden = encoder.config.hidden_size
        self.head = torch.nn.Linear(hidden, len(self.labels)).to(self.device)

    def _encode(self, rows: tuple[LabelledText, ...]) -> list[dict[str, list[int]]]:
        enc = self.tokenizer(
            [r.text for r in rows],
            truncation=True,
            max_length=self.spec.hyperparameters.optimizer.max_seq_length,
        )
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]

    def _collate(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(features, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch).last_hidden_state
        return self.head(mean_pool(out, batch["attention_mask"]))

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        opt = self.spec.hyperparameters.optimizer
        features = self._encode(self.spec.train)
        targets = torch.tensor([self.label_ids[r.label] for r in self.spec.train])
        steps_per_epoch = math.ceil(len(features) / opt.batch_size)
        total = steps_per_epoch * opt.epochs
        if opt.max_steps:
            total = min(total, opt.max_steps)
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        optimizer = torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(total * opt.warmup_ratio), total)
        pos = TrainPosition()
        if self.checkpoint_dir is not None:
            restored = checkpoint.load(self.checkpoint_dir, self.model, self.head, optimizer, schedule)
            if restored is not None:
                pos = restored
                self.resumed_from_step = pos.step
                log.info("resumed from checkpoint", step=pos.step, epoch=pos.epoch)
        rng = random.Random(opt.seed)
        self.model.train()
        self.head.train()
        self.examples_seen = pos.examples_seen
        TRAIN_STEP.set(pos.step)
        TRAIN_TOTAL_STEPS.set(total)
        TRAIN_LOSS.set(math.nan if pos.loss_ema is None else pos.loss_ema)
        TRAIN_EXAMPLES_PER_SECOND.set(0)
        self.on_progress(JobProgress(pos.step, total, pos.epoch, pos.loss_ema))
        started, seen_at_start = time.monotonic(), pos.examples_seen
        self.examples_this_run = 0
        for epoch in range(1, opt.epochs + 1):
            # Every epoch's order is drawn even when skipped, so a resumed job sees exactly
            # the batches the interrupted one would have.
            batches = _batches(len(features), opt.batch_size, rng)
            if epoch < pos.epoch:
                continue
            for number, idx in enumerate(batches):
                if epoch == pos.epoch and number < pos.batches_done:
                    continue
                if pos.step >= total:
                    break
                if self.preempt.is_set():
                    self._checkpoint(optimizer, schedule, pos)
                    raise JobPreempted()
                if self.cancel.is_set():
                    raise JobCancelled()
                batch = self._collate([features[i] for i in idx])
                loss = F.cross_entropy(self._logits(batch), targets[idx].to(self.device))
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                pos = TrainPosition(
                    step=pos.step + 1,
                    epoch=epoch,
                    batches_done=number + 1,
                    loss_ema=value if pos.loss_ema is None else 0.9 * pos.loss_ema + 0.1 * value,
                    examples_seen=pos.examples_seen + len(idx),
                )
                self.examples_seen = pos.examples_seen
                self.examples_this_run = pos.examples_seen - seen_at_start
                elapsed = time.monotonic() - started
                TRAIN_STEP.set(pos.step)
                TRAIN_LOSS.set(pos.loss_ema)
                if elapsed > 0:
                    TRAIN_EXAMPLES_PER_SECOND.set((pos.examples_seen - seen_at_start) / elapsed)
                self.on_progress(JobProgress(pos.step, total, epoch, pos.loss_ema))
                if self.checkpoint_every and pos.step % self.checkpoint_every == 0 and pos.step < total:
                    self._checkpoint(optimizer, schedule, pos)

    def _checkpoint(self, optimizer, schedule, pos: TrainPosition) -> None:  # noqa: ANN001
        if self.checkpoint_dir is None:
            return
        checkpoint.save(self.checkpoint_dir, self.model, self.head, optimizer, schedule, pos)
        TRAIN_LAST_CHECKPOINT.set(time.time())

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        self.head.eval()
        rows = self.spec.validation
        features = self._encode(rows)
        y_true = [self.label_ids[r.label] for r in rows]
        y_pred: list[int] = []
        loss_sum = 0.0
        for i in range(0, len(features), 64):
            batch = self._collate(features[i : i + 64])
            logits = self._logits(batch).float()
            y = torch.tensor(y_true[i : i + 64], device=logits.device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            y_pred += logits.argmax(-1).tolist()
        return {
            "accuracy": accuracy(y_true, y_pred),
            "macro_f1": macro_f1(y_true, y_pred, len(self.labels)),
            "eval_loss": loss_sum / max(len(rows), 1),
            "validation_examples": float(len(rows)),
        }

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
            job_id=self.job_id,
        )
        (directory / "tuneserve.json").write_text(meta.to_json())
        return meta

    def run(self, directory: Path) -> TrainResult:
        start = time.monotonic()
        self.setup()
        self.train()
        train_s = time.monotonic() - start
        metrics = self.evaluate()
        metrics["train_seconds"] = train_s
        metrics["train_examples_per_second"] = self.examples_this_run / train_s if train_s else 0.0
        if self.resumed_from_step:
            metrics["resumed_from_step"] = float(self.resumed_from_step)
        return TrainResult(metrics, self.save(directory, metrics))
