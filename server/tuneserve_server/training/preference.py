"""The preference recipe: DPO (and IPO) with LoRA on a causal-LM base, one model in memory.

The policy is the base model with a new LoRA adapter; the reference is the same base with
the adapter switched off (peft's `disable_adapter()`), so no second copy of the weights is
loaded. The reference log-probabilities of each pair are computed once, the first time the
pair is met (no gradient, eval mode), kept in a cache indexed by the pair and reused every
epoch; they travel with checkpoints so a resumed job does not recompute them.

Warm start (the usual SFT -> DPO pipeline, `init_from` naming an SFT adapter, `ctx.init`):
the policy starts from its LoRA factors (warm_start.load_lora_weights, what every recipe's
continued training uses; the services pinned rank, alpha and targets to the init version's)
and the reference is the same adapter loaded once more, frozen ("reference"); the reference
pass switches to it instead of disabling the adapter. The saved adapter holds only the policy.

Each pair is tokenized as (prompt, chosen, rejected): the prompt is rendered with the chat
template up to the assistant header (exactly what serving sends), each reply is followed by
the template's end-of-turn marker. Sequences longer than max_seq_length are cut the way the
causal-LM recipe cuts them (the prompt from the left first, then the replies from the right).
A sequence's log-probability is the sum over its reply tokens only.

Losses (`hyperparameters.preference`), with d = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)):
    sigmoid  -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)   (DPO; eps =
             label_smoothing, the conservative cDPO form; eps = 0 is plain DPO)
    ipo      (d' - 1 / (2 beta))^2 where d' uses log-probs averaged over each reply's tokens
These match TRL's DPOTrainer (loss_type "sigmoid" / "ipo"); tests/unit/training/test_dpo_parity.py
checks loss and LoRA gradients against it.

Metrics (final evaluation on the validation pairs; also at eval_every_steps):
    eval_loss                     the loss above on validation
    rewards/chosen, rewards/rejected  mean beta * (log pi - log ref) of each reply
    rewards/accuracy, rewards/margin  fraction with chosen reward > rejected reward; mean gap
    logps/chosen, logps/rejected  mean summed reply log-prob under the policy
    ref_logps/chosen, ref_logps/rejected  the same under the reference
    preference_accuracy           fraction of pairs where the policy gives chosen the higher
                                  log-prob; ref_preference_accuracy the same for the reference
    train_rewards/accuracy, train_rewards/margin  over the last epoch's training batches"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F

from tuneserve_server.domain.jobs import (
    EventType,
    PreferenceExample,
    PreferenceSettings,
    TaskType,
)
from tuneserve_server.modeling import ADAPTER_META, AdapterMeta, default_target_modules
from tuneserve_server.modeling_lm import completion_suffix, load_causal_lm, render_prompt
from tuneserve_server.observability.metrics import TRAIN_LAST_CHECKPOINT
from tuneserve_server.training import checkpoint
from tuneserve_server.training.checkpoint import Extras, TrainPosition
from tuneserve_server.training.fast_steps import use_fast_dropout
from tuneserve_server.training.optimiser_loop import OptimiserLoop, make_optimizer, total_steps
from tuneserve_server.training.outcomes import TrainResult
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.warm_start import InitAdapter, load_lora_weights

log = structlog.get_logger("tuneserve.training")

EVAL_BATCH = 8  # pairs per evaluation forward (16 sequences)
POLICY, REFERENCE = "default", "reference"  # adapter names (peft's default for the trained one)


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool


def encode_pair(tokenizer, example: PreferenceExample, max_len: int, *, suffix: str) -> EncodedPair:
    prompt = render_prompt(tokenizer, [(t.role, t.content) for t in example.prompt_turns()])
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(example.chosen + suffix, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(example.rejected + suffix, add_special_tokens=False)["input_ids"]
    longest = max(len(c_ids), len(r_ids))
    truncated = len(p_ids) + longest > max_len
    if truncated:
        keep_prompt = max(max_len - longest, max_len // 2, 1)
        p_ids = p_ids[-keep_prompt:] if len(p_ids) > keep_prompt else p_ids
        room = max(max_len - len(p_ids), 1)
        c_ids, r_ids = c_ids[:room], r_ids[:room]
    return EncodedPair(list(p_ids), list(c_ids), list(r_ids), truncated)


def collate_pairs(
    rows: list[EncodedPair], pad_id: int, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """One batch of 2n sequences, right-padded: the n prompt+chosen rows, then the n
    prompt+rejected rows; `completion_mask` marks the reply tokens."""
    seqs = [r.prompt_ids + r.chosen_ids for r in rows] + [r.prompt_ids + r.rejected_ids for r in rows]
    masks = [[0] * len(r.prompt_ids) + [1] * len(r.chosen_ids) for r in rows] + [
        [0] * len(r.prompt_ids) + [1] * len(r.rejected_ids) for r in rows
    ]
    width = max(len(s) for s in seqs)
    return {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device),
        "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device),
    }


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its reply tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].to(logits.dtype)
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


@dataclass(frozen=True)
class PairLoss:
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # beta * (log pi - log ref), detached
    rejected_rewards: torch.Tensor


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    settings: PreferenceSettings,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> PairLoss:
    """The per-pair loss of the module docstring (IPO needs the reply token counts)."""
    beta = settings.beta
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if (settings.loss_type or "sigmoid") == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the reply token counts")
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        delta = chosen_ratio - rejected_ratio
        eps = settings.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    return PairLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def warm_start(model, init: InitAdapter) -> None:
    """Start the policy ("default") from the stored adapter's LoRA factors and load that adapter
    once more as the frozen reference ("reference")."""
    load_lora_weights(model, init)
    model.load_adapter(str(init.directory), adapter_name=REFERENCE, is_trainable=False)
    model.base_model.set_adapter(POLICY)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(f".{POLICY}." in name)


class PreferenceRecipe:
    """The Recipe for TaskType.PREFERENCE (see the module docstring). It trains in the dtype the
    model loads in (as the causal-LM recipe does) and so ignores ctx.precision."""

    def __init__(self, ctx: RecipeContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.source = ctx.source
        self.device = ctx.device
        self.resumed_from_step = 0
        self.examples_this_run = 0
        self._setup_started = time.monotonic()
        self._train_seconds = 0.0
        # index -> (ref log p(chosen), ref log p(rejected)); "t" train rows, "v" validation rows
        self.ref_cache: dict[str, tuple[float, float]] = {}
        self.reference_forwards = 0  # pairs the reference was run on (each at most once)
        self._train_stats: list[tuple[float, float]] = []  # (accuracy, margin) per batch, this epoch

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
        if self.ctx.init is not None:  # SFT -> DPO: policy and reference start as the SFT adapter
            warm_start(self.model, self.ctx.init)
        self.pad_id = self.tokenizer.pad_token_id or 0
        suffix = completion_suffix(self.tokenizer)
        max_len = hp.optimizer.max_seq_length
        self.train_rows = [encode_pair(self.tokenizer, ex, max_len, suffix=suffix) for ex in self.spec.train]
        self.val_rows = [
            encode_pair(self.tokenizer, ex, max_len, suffix=suffix) for ex in self.spec.validation
        ]
        self.truncated = sum(r.truncated for r in (*self.train_rows, *self.val_rows))
        if self.truncated:
            log.warning("pairs truncated to max_seq_length", rows=self.truncated, max_seq_length=max_len)

    # ---------------------------------------------------------------- reference
    @contextmanager
    def reference(self) -> Iterator[None]:
        """The model as the reference: the frozen SFT adapter when warm-started, else the base
        (the adapter disabled)."""
        if REFERENCE in self.model.peft_config:
            self.model.base_model.set_adapter(REFERENCE)
            try:
                yield
            finally:
                self.model.base_model.set_adapter(POLICY)
                for name, p in self.model.named_parameters():  # set_adapter toggles requires_grad
                    if "lora_" in name:
                        p.requires_grad_(f".{POLICY}." in name)
        else:
            with self.model.disable_adapter():
                yield

    @torch.no_grad()
    def reference_logps(
        self, split: str, rows: list[EncodedPair], idx: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's log-probs of the pairs `idx` of `rows`, computed only for pairs not
        seen before (adapter disabled, eval mode) and cached."""
        missing = [i for i in idx if f"{split}{i}" not in self.ref_cache]
        if missing:
            was_training = self.model.training
            self.model.eval()
            try:
                with self.reference():
                    for start in range(0, len(missing), EVAL_BATCH):
                        part = missing[start : start + EVAL_BATCH]
                        logps, _ = sequence_logps(
                            self.model, collate_pairs([rows[i] for i in part], self.pad_id, self.device)
                        )
                        chosen, rejected = logps.chunk(2)
                        for i, c, r in zip(part, chosen.tolist(), rejected.tolist(), strict=True):
                            self.ref_cache[f"{split}{i}"] = (c, r)
                        self.reference_forwards += len(part)
            finally:
                self.model.train(was_training)
        values = [self.ref_cache[f"{split}{i}"] for i in idx]
        return (
            torch.tensor([c for c, _ in values], device=self.device, dtype=torch.float32),
            torch.tensor([r for _, r in values], device=self.device, dtype=torch.float32),
        )

    def _batch_loss(
        self, split: str, rows: list[EncodedPair], idx: list[int]
    ) -> tuple[PairLoss, torch.Tensor, torch.Tensor]:
        ref_c, ref_r = self.reference_logps(split, rows, idx)
        logps, tokens = sequence_logps(
            self.model, collate_pairs([rows[i] for i in idx], self.pad_id, self.device)
        )
        pol_c, pol_r = logps.chunk(2)
        tok_c, tok_r = tokens.chunk(2)
        settings = self.spec.hyperparameters.preference
        return (
            preference_loss(pol_c, pol_r, ref_c, ref_r, settings, tok_c, tok_r),
            pol_c.detach(),
            pol_r.detach(),
        )

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        opt = self.spec.hyperparameters.optimizer
        total = total_steps(opt, len(self.train_rows))
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, schedule = make_optimizer(params, opt, total)
        pos = TrainPosition()
        if self.ctx.checkpoint_dir is not None:
            restored = checkpoint.load_with_extras(
                self.ctx.checkpoint_dir, self.model, None, optimizer, schedule
            )
            if restored is not None:
                pos, extras = restored
                cache = (extras.state or {}).get("ref_cache", {})
                self.ref_cache = {k: (float(v[0]), float(v[1])) for k, v in cache.items()}
                self.resumed_from_step = pos.step
                log.info(
                    "resumed from checkpoint", step=pos.step, epoch=pos.epoch, cached_references=len(cache)
                )
                self.ctx.on_resume(pos.step)
        self.model.train()
        every_eval = self.spec.hyperparameters.evaluation.eval_every_steps

        def batch_loss(idx: list[int]) -> torch.Tensor:
            out, _, _ = self._batch_loss("t", self.train_rows, list(idx))
            margin = out.chosen_rewards - out.rejected_rewards
            self._train_stats.append((float((margin > 0).float().mean()), float(margin.mean())))
            return out.losses.mean()

        def new_epoch(_: int) -> None:
            self._train_stats = []

        def after_step(pos: TrainPosition) -> None:
            if every_eval and pos.step % every_eval == 0 and pos.step < total and self.val_rows:
                self.ctx.emit(EventType.EVALUATION, metrics={"step": float(pos.step), **self.evaluate()})
                self.model.train()

        loop = OptimiserLoop(
            self.ctx, opt, len(self.train_rows), params, optimizer, schedule, total, self.resumed_from_step
        )
        loop.run(
            pos,
            batch_loss=batch_loss,
            save_checkpoint=partial(self._checkpoint, optimizer, schedule),
            on_epoch=new_epoch,
            after_step=after_step,
        )
        self.examples_this_run = loop.examples_this_run
        self._train_seconds = time.monotonic() - self._setup_started

    def _checkpoint(self, optimizer, schedule, pos: TrainPosition) -> None:
        if self.ctx.checkpoint_dir is None:
            return
        extras = Extras(state={"ref_cache": {k: list(v) for k, v in self.ref_cache.items()}})
        checkpoint.save(self.ctx.checkpoint_dir, self.model, None, optimizer, schedule, pos, extras)
        TRAIN_LAST_CHECKPOINT.set(time.time())
        self.ctx.emit(EventType.CHECKPOINT, message=f"checkpoint at step {pos.step}")

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics: dict[str, float] = {
            "validation_examples": float(len(self.val_rows)),
            "truncated_rows": float(self.truncated),
        }
        if self._train_stats:
            metrics["train_rewards/accuracy"] = sum(a for a, _ in self._train_stats) / len(self._train_stats)
            metrics["train_rewards/margin"] = sum(m for _, m in self._train_stats) / len(self._train_stats)
        if not self.val_rows:
            return metrics
        losses, rc, rr, pc, pr, fc, fr = ([] for _ in range(7))
        for start in range(0, len(self.val_rows), EVAL_BATCH):
            idx = list(range(start, min(start + EVAL_BATCH, len(self.val_rows))))
            out, pol_c, pol_r = self._batch_loss("v", self.val_rows, idx)
            ref_c, ref_r = self.reference_logps("v", self.val_rows, idx)
            losses += out.losses.tolist()
            rc += out.chosen_rewards.tolist()
            rr += out.rejected_rewards.tolist()
            pc += pol_c.tolist()
            pr += pol_r.tolist()
            fc += ref_c.tolist()
            fr += ref_r.tolist()
        n = len(losses)

        def mean(xs: list[float]) -> float:
            return sum(xs) / len(xs)

        metrics.update(
            {
                "eval_loss": mean(losses),
                "rewards/chosen": mean(rc),
                "rewards/rejected": mean(rr),
                "rewards/accuracy": sum(c > r for c, r in zip(rc, rr, strict=True)) / n,
                "rewards/margin": mean([c - r for c, r in zip(rc, rr, strict=True)]),
                "logps/chosen": mean(pc),
                "logps/rejected": mean(pr),
                "ref_logps/chosen": mean(fc),
                "ref_logps/rejected": mean(fr),
                "preference_accuracy": sum(c > r for c, r in zip(pc, pr, strict=True)) / n,
                "ref_preference_accuracy": sum(c > r for c, r in zip(fc, fr, strict=True)) / n,
                "ref_eval_loss": self._reference_loss(),
            }
        )
        return metrics

    def _reference_loss(self) -> float:
        """The loss of the reference itself (policy = reference): log 2 for sigmoid without
        smoothing, (1 / (2 beta))^2 for ipo; the number eval_loss starts from."""
        s = self.spec.hyperparameters.preference
        if (s.loss_type or "sigmoid") == "ipo":
            return (1 / (2 * s.beta)) ** 2
        return math.log(2.0)

    # ---------------------------------------------------------------- save
    def save(self, directory: Path, metrics: dict[str, float]) -> AdapterMeta:
        self.model.save_pretrained(str(directory), selected_adapters=[POLICY])
        meta = AdapterMeta(
            task=TaskType.CAUSAL_LM,  # a DPO adapter is a causal-LM adapter: it serves like one
            base_model=self.source.model_id,
            labels=(),
            lora_rank=self.spec.hyperparameters.lora.rank,
            target_modules=self.targets,
            metrics=metrics,
            job_id=self.ctx.job_id,
        )
        (directory / ADAPTER_META).write_text(meta.to_json())
        return meta

    def finalize(self, directory: Path) -> TrainResult:
        train_s = self._train_seconds
        metrics = self.evaluate()
        metrics["train_seconds"] = train_s
        metrics["train_examples_per_second"] = self.examples_this_run / train_s if train_s else 0.0
        metrics["reference_forwards"] = float(self.reference_forwards)
        if self.resumed_from_step:
            metrics["resumed_from_step"] = float(self.resumed_from_step)
        self.ctx.emit(EventType.EVALUATION, metrics=dict(metrics))
        return TrainResult(metrics, self.save(directory, metrics))

    def run(self, directory: Path) -> TrainResult:
        return run_recipe(self, directory)
