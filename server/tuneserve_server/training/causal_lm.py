"""The causal-LM recipe: LoRA on a decoder LM, trained on prompt -> completion pairs or chat
conversations rendered with the model's chat template.

The phases of the Recipe contract (recipe.py): setup -> train -> finalize (loss and perplexity
on the validation completions and the base model's loss on the same tokens, sample generations
(greedy, a few validation prompts), save).

Each example is tokenized as (prompt, completion): the prompt is every turn before the last
rendered with the chat template up to the assistant header (exactly what serving sends),
the completion is the last (assistant) turn plus the template's end-of-turn marker, so the
adapter learns to stop. The loss covers only completion tokens unless train_on_prompt.
Rows longer than max_seq_length are cut (the prompt from the left first, then the completion
from the right) and counted in metrics["truncated_rows"]."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
import torch

from tuneserve_server.domain.jobs import (
    CausalExample,
    EventType,
    TaskType,
)
from tuneserve_server.modeling import (
    ADAPTER_META,
    AdapterMeta,
    default_target_modules,
)
from tuneserve_server.modeling_lm import (
    completion_suffix,
    load_causal_lm,
    render_prompt,
)
from tuneserve_server.observability.metrics import TRAIN_LAST_CHECKPOINT
from tuneserve_server.training import checkpoint
from tuneserve_server.training.checkpoint import TrainPosition
from tuneserve_server.training.fast_steps import use_fast_dropout
from tuneserve_server.training.optimiser_loop import OptimiserLoop, make_optimizer, total_steps
from tuneserve_server.training.outcomes import TrainResult
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.warm_start import load_lora_weights

log = structlog.get_logger("tuneserve.training")

IGNORE = -100
EVAL_BATCH = 16
SAMPLE_MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool


def encode_example(
    tokenizer, example: CausalExample, max_len: int, *, train_on_prompt: bool, suffix: str
) -> Encoded:
    turns = example.conversation()
    prompt = render_prompt(tokenizer, [(t.role, t.content) for t in turns[:-1]])
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(turns[-1].content + suffix, add_special_tokens=False)["input_ids"]
    truncated = len(p_ids) + len(c_ids) > max_len
    if truncated:
        keep_prompt = max(max_len - len(c_ids), max_len // 2, 1)
        p_ids = p_ids[-keep_prompt:] if len(p_ids) > keep_prompt else p_ids
        c_ids = c_ids[: max(max_len - len(p_ids), 0)]
    labels = (list(p_ids) if train_on_prompt else [IGNORE] * len(p_ids)) + list(c_ids)
    return Encoded(list(p_ids) + list(c_ids), labels, len(p_ids), truncated)


class CausalLMRecipe:
    """The Recipe for TaskType.CAUSAL_LM (see the module docstring). It trains in the dtype the
    model loads in and so ignores ctx.precision."""

    def __init__(self, ctx: RecipeContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.source = ctx.source
        self.device = ctx.device
        self.resumed_from_step = 0
        self.examples_this_run = 0
        self.sample_generations: list[dict[str, str]] = []
        self._setup_started = time.monotonic()
        self._train_seconds = 0.0

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from peft import LoraConfig, get_peft_model

        self._setup_started = time.monotonic()
        hp = self.spec.hyperparameters
        torch.manual_seed(hp.optimizer.seed)
        self.tokenizer, lm = load_causal_lm(self.source.path, self.device, self.ctx.model_cache_dir)
        lm.config.use_cache = False
        self.targets = tuple(hp.lora.target_modules) or default_target_modules(lm)
        config = LoraConfig(
            r=hp.lora.rank,
            lora_alpha=hp.lora.alpha,
            lora_dropout=hp.lora.dropout,
            target_modules=list(self.targets),
            bias="none",
        )
        self.model = get_peft_model(lm, config)
        use_fast_dropout(self.model)  # the same Bernoulli masks, ~4x cheaper on CPU (fast_steps.py)
        if self.ctx.init is not None:  # continued training: the stored LoRA factors
            load_lora_weights(self.model, self.ctx.init)
        self.suffix = completion_suffix(self.tokenizer)
        opt = hp.optimizer
        self.train_rows = self._encode(self.spec.train)
        self.val_rows = self._encode(self.spec.validation)
        self.truncated = sum(r.truncated for r in self.train_rows) + sum(r.truncated for r in self.val_rows)
        if self.truncated:
            log.warning(
                "rows truncated to max_seq_length", rows=self.truncated, max_seq_length=opt.max_seq_length
            )

    def _encode(self, rows: tuple) -> list[Encoded]:
        hp = self.spec.hyperparameters
        return [
            encode_example(
                self.tokenizer,
                r,
                hp.optimizer.max_seq_length,
                train_on_prompt=hp.causal_lm.train_on_prompt,
                suffix=self.suffix,
            )
            for r in rows
        ]

    def _collate(self, rows: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(r.input_ids) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = [r.input_ids + [pad] * (width - len(r.input_ids)) for r in rows]
        labels = [r.labels + [IGNORE] * (width - len(r.labels)) for r in rows]
        mask = [[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
            "labels": torch.tensor(labels, device=self.device),
        }

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        opt = self.spec.hyperparameters.optimizer
        total = total_steps(opt, len(self.train_rows))
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, schedule = make_optimizer(params, opt, total)
        pos = TrainPosition()
        if self.ctx.checkpoint_dir is not None:
            restored = checkpoint.load(self.ctx.checkpoint_dir, self.model, None, optimizer, schedule)
            if restored is not None:
                pos = restored
                self.resumed_from_step = pos.step
                log.info("resumed from checkpoint", step=pos.step, epoch=pos.epoch)
                self.ctx.on_resume(pos.step)
        self.model.train()
        loop = OptimiserLoop(
            self.ctx, opt, len(self.train_rows), params, optimizer, schedule, total, self.resumed_from_step
        )
        loop.run(
            pos,
            batch_loss=lambda idx: self.model(**self._collate([self.train_rows[i] for i in idx])).loss,
            save_checkpoint=partial(self._checkpoint, optimizer, schedule),
        )
        self.examples_this_run = loop.examples_this_run
        self._train_seconds = time.monotonic() - self._setup_started

    def _checkpoint(self, optimizer, schedule, pos: TrainPosition) -> None:
        if self.ctx.checkpoint_dir is None:
            return
        checkpoint.save(self.ctx.checkpoint_dir, self.model, None, optimizer, schedule, pos)
        TRAIN_LAST_CHECKPOINT.set(time.time())
        self.ctx.emit(EventType.CHECKPOINT, message=f"checkpoint at step {pos.step}")

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def _loss(self, rows: list[Encoded]) -> tuple[float, int]:
        """Summed token loss over the labelled tokens of `rows`, and how many tokens."""
        total, tokens = 0.0, 0
        for i in range(0, len(rows), EVAL_BATCH):
            batch = self._collate(rows[i : i + EVAL_BATCH])
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            total += float(
                torch.nn.functional.cross_entropy(
                    shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum"
                )
            )
            tokens += int((shift_labels != IGNORE).sum())
        return total, tokens

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics: dict[str, float] = {
            "validation_examples": float(len(self.val_rows)),
            "truncated_rows": float(self.truncated),
        }
        if not self.val_rows:
            return metrics
        total, tokens = self._loss(self.val_rows)
        with self.model.disable_adapter():
            base_total, _ = self._loss(self.val_rows)
        loss = total / max(tokens, 1)
        base = base_total / max(tokens, 1)
        metrics.update(
            eval_loss=loss,
            perplexity=math.exp(min(loss, 50.0)),
            base_eval_loss=base,
            base_perplexity=math.exp(min(base, 50.0)),
            eval_tokens=float(tokens),
        )
        return metrics

    @torch.no_grad()
    def generate_samples(self) -> list[dict[str, str]]:
        """Greedy completions of the first N validation prompts with the trained adapter."""
        n = min(self.spec.hyperparameters.causal_lm.sample_generations, len(self.spec.validation))
        if n <= 0:
            return []
        self.model.eval()
        examples = self.spec.validation[:n]
        prompts = [
            render_prompt(self.tokenizer, [(t.role, t.content) for t in ex.conversation()[:-1]])
            for ex in examples
        ]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        limit = min(
            SAMPLE_MAX_NEW_TOKENS, max(len(r.input_ids) - r.prompt_len for r in self.val_rows[:n]) + 16
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=limit,
            do_sample=False,
            pad_token_id=pad,
            use_cache=True,
        )
        samples = []
        for ex, row in zip(examples, out[:, width:], strict=True):
            turns = ex.conversation()
            samples.append(
                {
                    "prompt": turns[-2].content if len(turns) >= 2 else "",
                    "reference": turns[-1].content,
                    "generated": self.tokenizer.decode(row, skip_special_tokens=True).strip(),
                }
            )
        return samples

    # ---------------------------------------------------------------- save
    def save(self, directory: Path, metrics: dict[str, float]) -> AdapterMeta:
        self.model.save_pretrained(str(directory))
        hp = self.spec.hyperparameters
        meta = AdapterMeta(
            task=TaskType.CAUSAL_LM,
            base_model=self.source.model_id,
            labels=(),
            lora_rank=hp.lora.rank,
            target_modules=self.targets,
            metrics=metrics,
            job_id=self.ctx.job_id,
        )
        (directory / ADAPTER_META).write_text(meta.to_json())
        return meta

    def finalize(self, directory: Path) -> TrainResult:
        """Evaluate, sample generations and write the adapter into `directory`."""
        train_s = self._train_seconds  # setup and the loop, not the evaluation
        metrics = self.evaluate()
        metrics["train_seconds"] = train_s
        metrics["train_examples_per_second"] = self.examples_this_run / train_s if train_s else 0.0
        if self.resumed_from_step:
            metrics["resumed_from_step"] = float(self.resumed_from_step)
        self.ctx.emit(EventType.EVALUATION, metrics=dict(metrics))
        self.sample_generations = self.generate_samples()
        self.model.config.use_cache = False
        return TrainResult(metrics, self.save(directory, metrics), sample_generations=self.sample_generations)

    def run(self, directory: Path) -> TrainResult:
        """Every phase in order, as the worker drives them."""
        return run_recipe(self, directory)
