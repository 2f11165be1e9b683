"""Run stored adapter versions (and the bare base model, for a causal LM) on a fixed set of rows,
and compare them pairwise: the worker side of an evaluation, reusable wherever training code
needs a verdict on versions (a promotion gate).

    outcome = evaluate_targets(source, task, [EvalTarget("intents@2", dir2),
                                              EvalTarget("intents@3", dir3)], rows)
    outcome.compare("intents@2", "intents@3")   # McNemar + paired bootstrap

The base model is loaded once; each version's LoRA weights are wrapped onto it with peft and
unloaded again afterwards (classification also loads the version's head and applies its
fitted temperature, so probabilities are those Predict serves). Torch work only; no store, no
engine. Cancellation is checked between batches (JobCancelled)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneserve_server.domain.jobs import CausalExample, Example, LabelledText, TaskType
from tuneserve_server.modeling import AdapterMeta, BaseModelSource, load_encoder, load_head, mean_pool
from tuneserve_server.training import eval_stats
from tuneserve_server.training.outcomes import JobCancelled

BASE = "base"  # the target name of the bare base model
IGNORE = -100


class EvaluationError(ValueError):
    """A target cannot be evaluated here (wrong task, another base model, unreadable files)."""


@dataclass(frozen=True)
class EvalTarget:
    """What to evaluate: `name` is how results refer to it ("intents@3"); `directory` holds the
    adapter files (AdapterStore.open), None for the bare base model (causal LM only)."""

    name: str
    directory: Path | None


@dataclass(frozen=True)
class EvalOptions:
    device: str = "cpu"
    batch_size: int = 64  # classification rows per forward pass
    lm_batch_size: int = 8  # causal-LM rows per forward pass / generate call
    max_seq_length: int = 128
    model_cache_dir: Path | None = None  # causal LM: the GGUF conversion cache
    sample_generations: int = 3  # causal LM: how many generations each target keeps
    max_new_tokens: int = 64  # causal LM: generation bound per row
    bins: int = eval_stats.ECE_BINS
    resamples: int = eval_stats.DEFAULT_RESAMPLES
    seed: int = eval_stats.DEFAULT_SEED


Progress = Callable[[int, int], None]  # (work units done, total)


@dataclass
class TargetOutcome:
    """One target's metrics and details (what is stored), and its per-row outcome (what the
    paired tests need)."""

    target: str
    metrics: dict[str, float]
    detail: dict[str, Any]  # per_label / labels / confusion / reliability, or samples
    rows: Any = field(repr=False, default=None)  # ClassificationRows | LMRows

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "metrics": self.metrics, **self.detail}


@dataclass(frozen=True)
class LMRows:
    nll_sum: tuple[float, ...]  # summed token NLL of each row's completion
    tokens: tuple[int, ...]
    exact: tuple[bool, ...]
    contains: tuple[bool, ...]


@dataclass
class EvaluationOutcome:
    task: TaskType
    targets: list[TargetOutcome]
    options: EvalOptions = field(default_factory=EvalOptions)

    def target(self, name: str) -> TargetOutcome:
        for t in self.targets:
            if t.target == name:
                return t
        raise KeyError(name)

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """B against A on the same rows: McNemar on accuracy (causal LM: exact match) and the
        paired bootstrap of macro-F1 and NLL (causal LM: eval loss); differences are B - A."""
        return compare_outcomes(self.task, self.target(a), self.target(b), self.options)

    def comparisons(self) -> list[dict[str, Any]]:
        """Every pair in target order (A the earlier one)."""
        names = [t.target for t in self.targets]
        return [self.compare(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.value,
            "targets": [t.to_dict() for t in self.targets],
            "comparisons": self.comparisons(),
        }


# Metrics where lower is better (a promotion gate's "no regression" points the other way).
LOWER_IS_BETTER = frozenset({"nll", "ece", "eval_loss", "perplexity"})


@dataclass(frozen=True)
class GateDecision:
    """Whether `candidate` may replace `current` on `metric`: it may when it does not regress
    by more than `tolerance` (absolute). `comparison` is compare(current, candidate)."""

    promote: bool
    metric: str
    current: float
    candidate: float
    tolerance: float
    reason: str
    comparison: dict[str, Any]


def gate(
    outcome: EvaluationOutcome, current: str, candidate: str, metric: str, tolerance: float = 0.0
) -> GateDecision:
    """The if_better decision on an evaluation of both targets (a promotion gate's verdict)."""
    cur = outcome.target(current).metrics[metric]
    cand = outcome.target(candidate).metrics[metric]
    lower = metric in LOWER_IS_BETTER
    promote = cand <= cur + tolerance if lower else cand >= cur - tolerance
    direction = "lower" if lower else "higher"
    reason = (
        f"{candidate} {metric} {cand:.4f} vs {current} {cur:.4f} ({direction} is better, tolerance "
        f"{tolerance:g}): {'no regression beyond the tolerance' if promote else 'regressed beyond the tolerance'}"
    )
    return GateDecision(promote, metric, cur, cand, tolerance, reason, outcome.compare(current, candidate))


def compare_outcomes(task: TaskType, a: TargetOutcome, b: TargetOutcome, options: EvalOptions) -> dict:
    boot = {"resamples": options.resamples, "seed": options.seed}
    if task is TaskType.CLASSIFICATION:
        ra, rb = a.rows, b.rows
        n = len(ra.y_true)
        tests = [
            eval_stats.paired_bootstrap(
                "macro_f1",
                eval_stats.macro_f1_statistic(ra.y_true, ra.y_pred),
                eval_stats.macro_f1_statistic(rb.y_true, rb.y_pred),
                n,
                **boot,
            )
        ]
        na, nb = ra.row_nll(), rb.row_nll()
        both = ~(np.isnan(na) | np.isnan(nb))
        if both.any():
            ones = np.ones(int(both.sum()))
            tests.append(
                eval_stats.paired_bootstrap(
                    "nll",
                    eval_stats.ratio_statistic(na[both], ones),
                    eval_stats.ratio_statistic(nb[both], ones),
                    int(both.sum()),
                    **boot,
                )
            )
        paired, metric = eval_stats.mcnemar(ra.correct, rb.correct), "accuracy"
    else:
        ra, rb = a.rows, b.rows
        n = len(ra.tokens)
        tests = [
            eval_stats.paired_bootstrap(
                "eval_loss",
                eval_stats.ratio_statistic(ra.nll_sum, ra.tokens),
                eval_stats.ratio_statistic(rb.nll_sum, rb.tokens),
                n,
                **boot,
            )
        ]
        paired, metric = eval_stats.mcnemar(ra.exact, rb.exact), "exact_match"
    return {
        "a": a.target,
        "b": b.target,
        "rows": n,
        "mcnemar": {
            "metric": metric,
            "a": a.metrics[metric],
            "b": b.metrics[metric],
            "difference": b.metrics[metric] - a.metrics[metric],
            **paired,
        },
        "bootstrap": [t.to_dict() for t in tests],
    }


def _check(meta: AdapterMeta, target: EvalTarget, task: TaskType, source: BaseModelSource) -> None:
    if meta.task is not task:
        raise EvaluationError(f"{target.name} is a {meta.task.value} adapter, not {task.value}")
    if meta.base_model != source.model_id:
        raise EvaluationError(
            f"{target.name} was trained on {meta.base_model}; this worker serves {source.model_id}"
        )


class _Ticker:
    def __init__(self, total: int, on_progress: Progress | None, cancel: threading.Event | None) -> None:
        self.done, self.total, self.on_progress, self.cancel = 0, total, on_progress, cancel

    def step(self, units: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled()
        self.done += units
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def evaluate_targets(
    source: BaseModelSource,
    task: TaskType,
    targets: Sequence[EvalTarget],
    rows: Sequence[Example],
    options: EvalOptions = EvalOptions(),
    *,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> EvaluationOutcome:
    """Every target's predictions and metrics on `rows` (classification: LabelledText rows,
    causal LM: CausalExample rows). Blocking torch work."""
    if not targets:
        raise EvaluationError("nothing to evaluate: no targets")
    if not rows:
        raise EvaluationError("nothing to evaluate: no rows")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise EvaluationError(f"targets named twice: {names}")
    if task is TaskType.CLASSIFICATION:
        if any(t.directory is None for t in targets):
            raise EvaluationError("a classification base model has no head: evaluate adapter versions")
        run = _classification
    else:
        run = _causal_lm
    ticker = _Ticker(len(targets) * len(rows) * (2 if task is TaskType.CAUSAL_LM else 1), on_progress, cancel)
    with torch.inference_mode():
        outcomes = run(source, list(targets), list(rows), options, ticker)
    return EvaluationOutcome(task, outcomes, options)


# ---------------------------------------------------------------- classification
def _classification(source, targets, rows, options, ticker) -> list[TargetOutcome]:
    from peft import PeftModel

    if not all(isinstance(r, LabelledText) for r in rows):
        raise EvaluationError("classification rows need a text and a label")
    tokenizer, encoder = load_encoder(source, options.device)
    enc = tokenizer([r.text for r in rows], truncation=True, max_length=options.max_seq_length)
    features = [{k: enc[k][i] for k in enc} for i in range(len(rows))]
    order = sorted(range(len(rows)), key=lambda i: len(features[i]["input_ids"]))
    gold = tuple(r.label for r in rows)
    out = []
    for target in targets:
        meta = AdapterMeta.read(target.directory)
        _check(meta, target, TaskType.CLASSIFICATION, source)
        model = PeftModel.from_pretrained(encoder, str(target.directory)).to(options.device).eval()
        head = load_head(target.directory, options.device)
        try:
            probs = np.zeros((len(rows), len(meta.labels)))
            for i in range(0, len(order), options.batch_size):
                idx = order[i : i + options.batch_size]
                batch = tokenizer.pad([features[j] for j in idx], return_tensors="pt")
                batch = {k: v.to(options.device) for k, v in batch.items()}
                hidden = model(**batch).last_hidden_state
                logits = head(mean_pool(hidden, batch["attention_mask"])).double()
                probs[idx] = torch.softmax(logits / meta.temperature, dim=-1).cpu().numpy()
                ticker.step(len(idx))
        finally:
            encoder = model.unload()  # the LoRA layers out again, base weights untouched
        label_index = {label: k for k, label in enumerate(meta.labels)}
        top = probs.argmax(axis=1)
        result = eval_stats.ClassificationRows(
            y_true=gold,
            y_pred=tuple(meta.labels[k] for k in top),
            confidence=tuple(float(probs[i, k]) for i, k in enumerate(top)),
            p_true=tuple(
                float(probs[i, label_index[g]]) if g in label_index else None for i, g in enumerate(gold)
            ),
        )
        detail = eval_stats.classification_metrics(result, options.bins)
        out.append(TargetOutcome(target.name, detail.pop("metrics"), detail, result))
    return out


# ---------------------------------------------------------------- causal LM
def normalise(text: str) -> str:
    """What exact match compares: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _causal_lm(source, targets, rows, options, ticker) -> list[TargetOutcome]:
    from peft import PeftModel

    from tuneserve_server.modeling_lm import completion_suffix, load_causal_lm, render_prompt
    from tuneserve_server.training.causal_lm import encode_example

    if not all(isinstance(r, CausalExample) for r in rows):
        raise EvaluationError("causal-LM rows need a prompt and a completion (or messages)")
    tokenizer, lm = load_causal_lm(source.path, options.device, options.model_cache_dir)
    suffix = completion_suffix(tokenizer)
    encoded = [
        encode_example(tokenizer, r, options.max_seq_length, train_on_prompt=False, suffix=suffix)
        for r in rows
    ]
    prompts = [
        tokenizer(
            render_prompt(tokenizer, [(t.role, t.content) for t in r.conversation()[:-1]]),
            add_special_tokens=False,
        )["input_ids"][-options.max_seq_length :]
        for r in rows
    ]
    references = [r.conversation()[-1].content for r in rows]
    pad = tokenizer.pad_token_id or 0
    out = []
    for target in targets:
        if target.directory is None:
            model = lm
        else:
            meta = AdapterMeta.read(target.directory)
            _check(meta, target, TaskType.CAUSAL_LM, source)
            model = PeftModel.from_pretrained(lm, str(target.directory)).to(options.device).eval()
        try:
            nll_sum, tokens = _lm_losses(model, encoded, pad, options, ticker)
            generated = _lm_generate(model, prompts, encoded, pad, tokenizer, options, ticker)
        finally:
            if target.directory is not None:
                lm = model.unload()
        exact = tuple(normalise(g) == normalise(r) for g, r in zip(generated, references))
        contains = tuple(normalise(r) in normalise(g) for g, r in zip(generated, references))
        loss = sum(nll_sum) / max(sum(tokens), 1)
        metrics = {
            "rows": float(len(rows)),
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": sum(exact) / len(rows),
            "contains_reference": sum(contains) / len(rows),
            "eval_tokens": float(sum(tokens)),
            "truncated_rows": float(sum(e.truncated for e in encoded)),
        }
        samples = [
            {
                "prompt": (r.conversation()[-2].content if len(r.conversation()) >= 2 else ""),
                "reference": ref,
                "generated": g,
            }
            for r, ref, g in list(zip(rows, references, generated))[: options.sample_generations]
        ]
        out.append(
            TargetOutcome(
                target.name,
                metrics,
                {"samples": samples},
                LMRows(tuple(nll_sum), tuple(tokens), exact, contains),
            )
        )
    return out


def _lm_losses(model, encoded, pad, options, ticker) -> tuple[list[float], list[int]]:
    nll_sum: list[float] = []
    tokens: list[int] = []
    for i in range(0, len(encoded), options.lm_batch_size):
        chunk = encoded[i : i + options.lm_batch_size]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chunk])
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in chunk])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk])
        logits = model(input_ids=ids.to(options.device), attention_mask=mask.to(options.device)).logits
        shift = labels[:, 1:].to(options.device)
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shift, ignore_index=IGNORE, reduction="none"
        )
        nll_sum += per_token.sum(dim=1).double().cpu().tolist()
        tokens += (shift != IGNORE).sum(dim=1).cpu().tolist()
        ticker.step(len(chunk))
    return nll_sum, tokens


def _lm_generate(model, prompts, encoded, pad, tokenizer, options, ticker) -> list[str]:
    out: list[str] = []
    for i in range(0, len(prompts), options.lm_batch_size):
        chunk = prompts[i : i + options.lm_batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=options.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=options.device)
        longest = max(len(e.input_ids) - e.prompt_len for e in encoded[i : i + len(chunk)])
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(1, min(options.max_new_tokens, longest + 8)),
            do_sample=False,
            pad_token_id=pad,
            use_cache=True,
        )
        out += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in generated[:, width:]]
        ticker.step(len(chunk))
    return out
