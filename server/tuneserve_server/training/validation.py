"""Turns a caller's Train request (and the datasets it names) into a JobSpec and the data
report it passed, or an InvalidRequest naming every bad field.

Runs at submit time (and for ValidateDataset), before anything is queued. Field paths follow
the proto (`training_examples[3].classification.label`, `hyperparameters.lora.rank`)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tuneserve_server.domain.aliases import check_promotion
from tuneserve_server.domain.errors import DataRejected, FailedPrecondition, Violations
from tuneserve_server.domain.jobs import (
    PREFERENCE_LOSSES,
    SEARCH_PARAMETERS,
    CausalExample,
    CausalLMSettings,
    EvaluationSettings,
    Example,
    Hyperparameters,
    JobSpec,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    PreferenceExample,
    PreferenceSettings,
    SearchSettings,
    TaskType,
)
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.domain.naming import is_valid_name, namespace_of
from tuneserve_server.training import auto_defaults
from tuneserve_server.training.data_report import (
    DataReport,
    ReportThresholds,
    build_report,
    normalise,
    render_causal,
)
from tuneserve_server.training.datafile import ParsedRows
from tuneserve_server.training.evaluation import METRICS
from tuneserve_server.training.folds import MAX_FOLDS, MIN_FOLDS, usable_folds

DEFAULT_VALIDATION_FRACTION = 0.1
# A kfold job's search trials are scored on this fraction of its training rows (search_split).
SEARCH_HOLDOUT_FRACTION = 0.2
MAX_SEARCH_BUDGET_S = 86_400.0


InlineExample = tuple[str, str] | CausalExample | PreferenceExample | None


@dataclass
class TrainInput:
    """The request as the servicer hands it over: plain values, proto types stripped.
    An example is (text, label) for classification, a CausalExample for causal LM, a
    PreferenceExample for preference, or None where the proto example has none of them."""

    namespace: str
    adapter_name: str
    task: TaskType | None
    request_id: str
    train: Sequence[InlineExample]
    validation: Sequence[InlineExample]
    validation_fraction: float | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    causal_lm: dict[str, Any] = field(default_factory=dict)
    preference: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    dataset_id: str = ""
    validation_dataset_id: str = ""
    # {"policy", "metric", "tolerance", "eval_dataset_id"} (domain/aliases.check_promotion)
    promotion: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # "name@version" / "name@alias"; the services resolve it


# Defaults that differ from the dataclass defaults (tuned for MiniLM classification) by task
# family, for settings the caller leaves unset. Causal LM (SmolLM2-135M here): batch 8 and
# rank 8 keep a step at ~4 s on CPU, and 256 tokens fit a support reply; measured to learn a
# reply format in ~24 steps at lr 2e-3 (examples/demo_generate.py).
TASK_DEFAULTS: dict[TaskType, dict[str, dict[str, Any]]] = {
    TaskType.CAUSAL_LM: {
        "optimizer": {"batch_size": 8, "epochs": 3, "max_seq_length": 256},
        "lora": {"rank": 8, "alpha": 16.0},
    },
    # Preference (DPO) on the same base: each step runs the policy and (once per pair, cached)
    # the reference on chosen and rejected, so half the causal-LM batch; a lower learning rate
    # than SFT because DPO moves the policy away from where SFT left it.
    TaskType.PREFERENCE: {
        "optimizer": {"batch_size": 4, "epochs": 2, "max_seq_length": 256, "learning_rate": 5e-4},
        "lora": {"rank": 8, "alpha": 16.0},
    },
}

# name -> (low, high, low inclusive, high inclusive, description)
_OPTIMIZER_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, 1.0, False, True),
    "batch_size": (1, 1024, True, True),
    "epochs": (1, 100, True, True),
    "max_steps": (0, 1_000_000, True, True),
    "warmup_ratio": (0.0, 0.5, True, True),
    "weight_decay": (0.0, 1.0, True, True),
    "seed": (0, 2**32 - 1, True, True),
    "max_seq_length": (8, 8192, True, True),
    "gradient_accumulation_steps": (1, 1024, True, True),
}
_EVALUATION_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "eval_every_steps": (0, 1_000_000, True, True),
    "early_stopping_patience": (0, 1000, True, True),
    "folds": (MIN_FOLDS, MAX_FOLDS, True, True),
    "min_holdout_rows": (0, 100_000, True, True),
}
VALIDATION_SCHEMES = ("auto", "holdout", "kfold")
_CAUSAL_LM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "sample_generations": (0, 100, True, True),
}
_PREFERENCE_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "beta": (0.0, 10.0, False, True),
    "label_smoothing": (0.0, 0.5, True, False),
}
_LORA_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "alpha": (0.0, 4096.0, False, True),
    "dropout": (0.0, 1.0, True, False),
}


def _in_range(value: float, rng: tuple[float, float, bool, bool]) -> bool:
    low, high, low_inc, high_inc = rng
    return (value >= low if low_inc else value > low) and (value <= high if high_inc else value < high)


def _range_text(rng: tuple[float, float, bool, bool]) -> str:
    low, high, low_inc, high_inc = rng
    return f"must be in {'[' if low_inc else '('}{low:g}, {high:g}{']' if high_inc else ')'}"


_ROLES = ("system", "user", "assistant")


def _classification(
    row: tuple[str, str], path: str, limits: TrainLimits, v: Violations
) -> LabelledText | None:
    text, label = row
    bad = False
    if not text.strip():
        v.add(f"{path}.classification.text", "must not be empty")
        bad = True
    elif len(text) > limits.max_text_chars:
        v.add(f"{path}.classification.text", f"longer than {limits.max_text_chars} characters")
        bad = True
    if not label.strip():
        v.add(f"{path}.classification.label", "must not be empty")
        bad = True
    return None if bad else LabelledText(text, label.strip())


def _causal(ex: CausalExample, path: str, limits: TrainLimits, v: Violations) -> CausalExample | None:
    before = len(v.items)
    if ex.messages:
        if ex.prompt or ex.completion:
            v.add(f"{path}.causal_lm", "give prompt and completion, or messages, not both")
        for j, turn in enumerate(ex.messages):
            if turn.role not in _ROLES:
                v.add(f"{path}.causal_lm.messages[{j}].role", f"must be one of {', '.join(_ROLES)}")
            if not turn.content.strip():
                v.add(f"{path}.causal_lm.messages[{j}].content", "must not be empty")
            elif len(turn.content) > limits.max_text_chars:
                v.add(
                    f"{path}.causal_lm.messages[{j}].content",
                    f"longer than {limits.max_text_chars} characters",
                )
        if ex.messages[-1].role != "assistant":
            v.add(
                f"{path}.causal_lm.messages", "must end with the assistant reply to learn (role 'assistant')"
            )
    else:
        for name in ("prompt", "completion"):
            value = getattr(ex, name)
            if not value.strip():
                v.add(f"{path}.causal_lm.{name}", "must not be empty")
            elif len(value) > limits.max_text_chars:
                v.add(f"{path}.causal_lm.{name}", f"longer than {limits.max_text_chars} characters")
    return ex if len(v.items) == before else None


def _preference(
    ex: PreferenceExample, path: str, limits: TrainLimits, v: Violations
) -> PreferenceExample | None:
    before = len(v.items)
    if ex.messages:
        if ex.prompt:
            v.add(f"{path}.preference", "give prompt or messages, not both")
        for j, turn in enumerate(ex.messages):
            if turn.role not in _ROLES:
                v.add(f"{path}.preference.messages[{j}].role", f"must be one of {', '.join(_ROLES)}")
            if len(turn.content) > limits.max_text_chars:
                v.add(
                    f"{path}.preference.messages[{j}].content",
                    f"longer than {limits.max_text_chars} characters",
                )
        if ex.messages[-1].role == "assistant":
            v.add(
                f"{path}.preference.messages",
                "must end before the reply (the replies are chosen and rejected, not an assistant turn)",
            )
        if not any(t.content.strip() for t in ex.messages):
            v.add(f"{path}.preference.messages", "must not be empty")
    names = ("chosen", "rejected") if ex.messages else ("prompt", "chosen", "rejected")
    for name in names:
        value = getattr(ex, name)
        if not value.strip():
            v.add(f"{path}.preference.{name}", "must not be empty")
        elif len(value) > limits.max_text_chars:
            v.add(f"{path}.preference.{name}", f"longer than {limits.max_text_chars} characters")
    return ex if len(v.items) == before else None


def _examples(
    rows: Sequence[InlineExample],
    field_name: str,
    task: TaskType | None,
    limits: TrainLimits,
    v: Violations,
) -> list[tuple[int, Example]]:
    """Inline examples are the caller's own values: a bad one is a field error (a file's bad
    rows, by contrast, are dropped and reported)."""
    out: list[tuple[int, Example]] = []
    for i, row in enumerate(rows):
        path = f"{field_name}[{i}]"
        if task is TaskType.PREFERENCE:
            ok = (
                _preference(row, path, limits, v)
                if isinstance(row, PreferenceExample)
                else v.add(path, "must be a preference example (prompt or messages, chosen and rejected)")
            )
        elif task is TaskType.CAUSAL_LM:
            ok = (
                _causal(row, path, limits, v)
                if isinstance(row, CausalExample)
                else v.add(path, "must be a causal_lm example (prompt and completion, or messages)")
            )
        elif isinstance(row, tuple):
            ok = _classification(row, path, limits, v)
        else:
            ok = v.add(path, "must be a classification example (text and label)")
        if len(v.items) >= 20:  # enough to act on; do not build a megabyte error
            break
        if ok is not None:
            out.append((i + 1, ok))
    return out


def split_rows(
    rows: Sequence[tuple[int, Example]],
    fraction: float,
    seed: int,
    keep_in_training: int = ReportThresholds.min_examples_per_label,
) -> tuple[list[tuple[int, Example]], list[tuple[int, Example]]]:
    """The validation hold-out: about `fraction` of each label (classification; causal LM is
    one group), always leaving at least `keep_in_training` rows of a label in training (the
    data report's minimum): a label with that few examples stays whole in training, not
    validated (the report warns, `label_not_validated`), rather than being split into a label
    too rare to train on. Rows with the same normalised text go to the same side, so repeated
    texts never leak from training into validation."""
    groups: dict[tuple[str, str], list[tuple[int, Example]]] = {}
    for row in rows:
        ex = row[1]
        if isinstance(ex, LabelledText):
            label, text = ex.label, ex.text
        elif isinstance(ex, PreferenceExample):  # pairs of one prompt stay together
            label, text = "", "\n".join(t.content for t in ex.prompt_turns())
        else:
            label, text = "", render_causal(ex)
        groups.setdefault((label, normalise(text)), []).append(row)
    by_label: dict[str, list[list[tuple[int, Example]]]] = defaultdict(list)
    for (label, _), group in groups.items():
        by_label[label].append(group)
    rng = random.Random(seed)
    train: list[tuple[int, Example]] = []
    held: list[tuple[int, Example]] = []
    for label in sorted(by_label):
        label_groups = by_label[label][:]
        rng.shuffle(label_groups)
        size = sum(len(g) for g in label_groups)
        want = round(size * fraction)
        keep = max(1, keep_in_training)
        want = min(max(want, 1), size - keep) if size > keep else 0
        taken = 0
        for group in label_groups:
            if taken < want and len(label_groups) > 1 and taken + len(group) <= max(want, 1):
                held += group
                taken += len(group)
            else:
                train += group
    rng.shuffle(train)
    return train, held


def _hyperparameters(req: TrainInput, limits: TrainLimits, v: Violations) -> Hyperparameters:
    lora_kw: dict[str, Any] = {}
    rank = req.lora.get("rank")
    if rank is not None:
        if not 1 <= rank <= limits.max_lora_rank:
            v.add("hyperparameters.lora.rank", f"must be in [1, {limits.max_lora_rank}]")
        lora_kw["rank"] = int(rank)
    for name, rng in _LORA_RANGES.items():
        value = req.lora.get(name)
        if value is not None:
            if not _in_range(value, rng):
                v.add(f"hyperparameters.lora.{name}", _range_text(rng))
            lora_kw[name] = float(value)
    targets = tuple(req.lora.get("target_modules") or ())
    unknown = [t for t in targets if t not in limits.linear_modules]
    if unknown:
        v.add(
            "hyperparameters.lora.target_modules",
            f"{', '.join(unknown)} not in the base model (has {', '.join(sorted(limits.linear_modules))})",
        )
    lora_kw["target_modules"] = targets or limits.default_targets
    defaults = TASK_DEFAULTS.get(req.task or limits.served_task, {})
    for name, value in defaults.get("lora", {}).items():
        lora_kw.setdefault(name, value)

    opt_kw: dict[str, Any] = {}
    for name, rng in _OPTIMIZER_RANGES.items():
        value = req.optimizer.get(name)
        if value is not None:
            if not _in_range(value, rng):
                v.add(f"hyperparameters.optimizer.{name}", _range_text(rng))
            opt_kw[name] = value
    for name, value in defaults.get("optimizer", {}).items():
        opt_kw.setdefault(name, value)
    max_len = opt_kw.get("max_seq_length")
    if max_len is not None and max_len > limits.max_positions:
        v.add(
            "hyperparameters.optimizer.max_seq_length",
            f"the base model takes at most {limits.max_positions} tokens",
        )
    eval_kw = _ranged(req.evaluation, _EVALUATION_RANGES, "evaluation", v)
    metric = req.evaluation.get("metric_for_best")
    if metric:
        if metric not in METRICS:
            v.add(
                "hyperparameters.evaluation.metric_for_best",
                f"must be one of {', '.join(METRICS)}, or empty for the task's default",
            )
        eval_kw["metric_for_best"] = metric
    scheme = req.evaluation.get("validation_scheme")
    if scheme:
        if scheme not in VALIDATION_SCHEMES:
            v.add(
                "hyperparameters.evaluation.validation_scheme",
                f"must be one of {', '.join(VALIDATION_SCHEMES)}, or empty for auto",
            )
        elif scheme == "kfold" and limits.served_task is not TaskType.CLASSIFICATION:
            v.add("hyperparameters.evaluation.validation_scheme", "kfold is for classification only")
        eval_kw["validation_scheme"] = scheme
    for flag in ("calibrate", "fit_uncertainty", "baseline"):
        if req.evaluation.get(flag) is not None:
            eval_kw[flag] = bool(req.evaluation[flag])
    eval_kw.update(_abstention_targets(req.evaluation, v))
    lm_kw = _ranged(req.causal_lm, _CAUSAL_LM_RANGES, "causal_lm", v)
    if req.causal_lm.get("train_on_prompt") is not None:
        lm_kw["train_on_prompt"] = bool(req.causal_lm["train_on_prompt"])
    return Hyperparameters(
        LoraSettings(**lora_kw),
        OptimizerSettings(**opt_kw),
        EvaluationSettings(**eval_kw),
        CausalLMSettings(**lm_kw),
        _preference_settings(req.preference, v),
        _search_settings(req, limits, v),
    )


def _search_settings(req: TrainInput, limits: TrainLimits, v: Violations) -> SearchSettings:
    """hyperparameters.search: trials within the server's cap, a finite non-negative budget, known
    parameters, trials on classification only. Budget and parameters do nothing without trials
    (accepted: a job's hyperparameters as the server echoes them hold every field)."""
    values = req.search
    trials, budget = values.get("trials"), values.get("budget_seconds")
    params = [str(p).strip() for p in values.get("parameters") or ()]
    kw: dict[str, Any] = {}
    if trials is not None:
        if not 0 <= trials <= limits.max_search_trials:
            v.add(
                "hyperparameters.search.trials",
                f"must be in [0, {limits.max_search_trials}] (the server's max_search_trials)",
            )
        kw["trials"] = int(trials)
    if budget is not None:
        if not 0.0 <= budget <= MAX_SEARCH_BUDGET_S:  # NaN fails too
            v.add("hyperparameters.search.budget_seconds", f"must be in [0, {MAX_SEARCH_BUDGET_S:g}] seconds")
        kw["budget_seconds"] = float(budget)
    unknown = [p for p in params if p not in SEARCH_PARAMETERS]
    if unknown:
        v.add(
            "hyperparameters.search.parameters",
            f"{', '.join(unknown) or 'an empty name'} unknown; use {', '.join(SEARCH_PARAMETERS)}",
        )
    elif len(set(params)) != len(params):
        v.add("hyperparameters.search.parameters", "names a parameter twice")
    kw["parameters"] = tuple(params)
    if kw.get("trials") and req.task is not None and req.task is not TaskType.CLASSIFICATION:
        v.add("hyperparameters.search.trials", "the search is for classification jobs only")
    return SearchSettings(**kw)


def search_split(rows: Sequence[Example], seed: int) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """A kfold job's rows for its search trials: (train, held out), split like a hold-out
    (split_rows: stratified, repeated texts kept on one side) with SEARCH_HOLDOUT_FRACTION."""
    train, held = split_rows(list(enumerate(rows)), SEARCH_HOLDOUT_FRACTION, seed)
    return tuple(ex for _, ex in train), tuple(ex for _, ex in held)


def _preference_settings(values: dict[str, Any], v: Violations) -> PreferenceSettings:
    kw = _ranged(values, _PREFERENCE_RANGES, "preference", v, convert=float)
    loss = (values.get("loss_type") or "").strip().lower()
    if loss and loss not in PREFERENCE_LOSSES:
        v.add(
            "hyperparameters.preference.loss_type", f"must be one of {', '.join(PREFERENCE_LOSSES)}, or empty"
        )
    elif loss:
        kw["loss_type"] = loss
    if loss == "ipo" and kw.get("label_smoothing"):
        v.add(
            "hyperparameters.preference.label_smoothing",
            "applies to the sigmoid loss only; leave it 0 for ipo",
        )
    return PreferenceSettings(**kw)


_UNCERTAINTY_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "abstain_target_precision": (0.0, 1.0, True, False),
    "abstain_target_coverage": (0.0, 1.0, True, True),
    "ood_false_positive_rate": (0.0, 0.5, False, True),
}


def _abstention_targets(values: dict[str, Any], v: Violations) -> dict[str, float]:
    """The uncertainty targets given; a coverage target replaces the default precision one."""
    out = _ranged(values, _UNCERTAINTY_RANGES, "evaluation", v, convert=float)
    precision, coverage = out.get("abstain_target_precision"), out.get("abstain_target_coverage")
    if precision and coverage:
        v.add(
            "hyperparameters.evaluation.abstain_target_coverage",
            "set at most one of abstain_target_precision and abstain_target_coverage above 0",
        )
    elif coverage and precision is None:
        out["abstain_target_precision"] = 0.0
    return out


def _ranged(
    values: dict[str, Any],
    ranges: dict[str, tuple[float, float, bool, bool]],
    section: str,
    v: Violations,
    convert: Callable[[Any], Any] = int,
) -> dict[str, Any]:
    """The given settings of one section (integers unless `convert` says otherwise), each
    checked against its range."""
    out: dict[str, Any] = {}
    for name, rng in ranges.items():
        value = values.get(name)
        if value is not None:
            if not _in_range(value, rng):
                v.add(f"hyperparameters.{section}.{name}", _range_text(rng))
            out[name] = convert(value)
    return out


# Which request field a report issue points at, by where the rows came from.
_VALIDATION_ISSUES = {"unseen_validation_label", "leakage"}


def _report_violations(report: DataReport, req: TrainInput) -> Violations:
    out = Violations()
    for issue in report.errors:
        if issue.code in _VALIDATION_ISSUES and (req.validation or req.validation_dataset_id):
            where = "validation_dataset_id" if req.validation_dataset_id else "validation_examples"
        else:
            where = "dataset_id" if req.dataset_id else "training_examples"
        out.add(where, issue.message)
    return out


def build_job_spec(req: TrainInput, limits: TrainLimits) -> JobSpec:
    """`prepare_job` for inline examples, without the report."""
    return prepare_job(req, limits)[0]


def prepare_job(
    req: TrainInput,
    limits: TrainLimits,
    train_file: ParsedRows | None = None,
    validation_file: ParsedRows | None = None,
) -> tuple[JobSpec, DataReport]:
    """Check a Train request and its data; the JobSpec to queue and the data report it
    passed. `train_file` / `validation_file`: the parsed datasets named by dataset_id /
    validation_dataset_id (the caller loads them). Field errors raise InvalidRequest; data
    that fails the report's hard checks raises DataRejected carrying the whole report."""
    v = Violations()
    namespace = namespace_of(req.namespace)
    if not req.request_id:
        v.add("request_id", "is required (a unique key per Train call, e.g. a UUID)")
    elif len(req.request_id) > 128:
        v.add("request_id", "longer than 128 characters")
    if not is_valid_name(req.adapter_name):
        v.add("adapter_name", "use 1-63 of a-z 0-9 . _ -, starting with a letter or digit")
    if req.task is None:
        v.add("task", "is required (TASK_TYPE_CLASSIFICATION, TASK_TYPE_CAUSAL_LM or TASK_TYPE_PREFERENCE)")
    elif req.task.family is not limits.served_task:
        raise FailedPrecondition(
            f"this server serves {limits.base_model}, a {limits.served_task.value} model; "
            f"it cannot train a {req.task.value} adapter"
        )
    if req.dataset_id and req.train:
        v.add("training_examples", "give training_examples or dataset_id, not both")
    elif not req.train and not req.dataset_id:
        v.add("training_examples", "must not be empty (or name an uploaded dataset in dataset_id)")
    elif len(req.train) > limits.max_train_examples:
        v.add("training_examples", f"more than {limits.max_train_examples} examples")
    if req.validation_dataset_id and req.validation:
        v.add("validation_examples", "give validation_examples or validation_dataset_id, not both")
    train = _examples(req.train, "training_examples", req.task, limits, v)
    validation = _examples(req.validation, "validation_examples", req.task, limits, v)
    hyper = _hyperparameters(req, limits, v)

    fraction = req.validation_fraction
    has_validation = bool(req.validation or req.validation_dataset_id)
    if fraction is not None:
        if has_validation:
            v.add("validation_fraction", "give validation examples or validation_fraction, not both")
        elif not 0.0 < fraction <= 0.5:
            v.add("validation_fraction", "must be in (0, 0.5]")
    promotion = check_promotion(
        str(req.promotion.get("policy") or ""),
        str(req.promotion.get("metric") or ""),
        req.promotion.get("tolerance"),
        str(req.promotion.get("eval_dataset_id") or ""),
        req.task.value if req.task is not None else None,
        v,
    )
    if hyper.evaluation.validation_scheme == "kfold" and (has_validation or fraction is not None):
        v.add(
            "hyperparameters.evaluation.validation_scheme",
            "kfold cross-validates on the training rows: give no validation examples, "
            "validation_dataset_id or validation_fraction with it",
        )
    v.raise_if_any("invalid Train request")

    total_rows = len(req.train) + len(req.validation)
    dropped: dict[str, list[int]] = {}
    for parsed in (train_file, validation_file):
        if parsed is not None:
            total_rows += parsed.total_rows
            for reason, rows in parsed.dropped.items():
                dropped.setdefault(reason, []).extend(rows)
    if train_file is not None:
        train = list(train_file.examples)
    if validation_file is not None:
        validation = list(validation_file.examples)
    if len(train) > limits.max_train_examples:
        field_name = "dataset_id" if req.dataset_id else "training_examples"
        v.add(field_name, f"more than {limits.max_train_examples} examples")
    scheme = "holdout"
    if not has_validation and train:
        held_train, held = split_rows(train, fraction or DEFAULT_VALIDATION_FRACTION, hyper.optimizer.seed)
        ev = hyper.evaluation
        if req.task is TaskType.CLASSIFICATION and (
            ev.validation_scheme == "kfold"
            or (ev.validation_scheme == "auto" and fraction is None and len(held) < ev.min_holdout_rows)
        ):
            scheme = "kfold"
            folds = usable_folds([ex for _, ex in train], ev.folds)  # type: ignore[misc]
            if folds < MIN_FOLDS:
                v.add("training_examples", "too few distinct examples to cross-validate (or hold out)")
            hyper = replace(hyper, evaluation=replace(ev, folds=max(folds, MIN_FOLDS)))
        else:
            train, validation = held_train, held
            if not validation:
                v.add("training_examples", "too few examples to hold out a validation split")
    hyper = replace(hyper, evaluation=replace(hyper.evaluation, validation_scheme=scheme))
    if (
        scheme == "kfold"
        and hyper.search.trials
        and not search_split([ex for _, ex in train], hyper.optimizer.seed)[1]
    ):
        v.add(
            "hyperparameters.search.trials",
            "too few examples to hold out a split for the search trials (kfold jobs score them on "
            f"{SEARCH_HOLDOUT_FRACTION:.0%} of the training rows)",
        )
    v.raise_if_any("invalid training data")
    hyper, auto = _auto_optimizer(req, hyper, len(train))

    assert req.task is not None
    report = build_report(
        req.task,
        train,
        validation,
        total_rows=total_rows,
        dropped=dropped,
        token_lengths=limits.count_tokens,
        max_seq_length=hyper.optimizer.max_seq_length,
    )
    if not report.ok:
        violations = _report_violations(report, req)
        raise DataRejected(violations.message("training data rejected"), violations.items, report.to_dict())
    spec = JobSpec(
        namespace=namespace,
        adapter_name=req.adapter_name,
        task=req.task,
        request_id=req.request_id,
        train=tuple(ex for _, ex in train),
        validation=tuple(ex for _, ex in validation),
        hyperparameters=hyper,
        dataset_id=req.dataset_id,
        validation_dataset_id=req.validation_dataset_id,
        promotion=promotion,
        auto_hyperparameters=auto,
    )
    return spec, report


def _auto_optimizer(
    req: TrainInput, hyper: Hyperparameters, train_rows: int
) -> tuple[Hyperparameters, tuple[str, ...]]:
    """Classification with no step budget given (neither epochs nor max_steps): the settings the
    caller left unset follow the data size (training/auto_defaults.py). Which ones were chosen."""
    given = {k for k, value in req.optimizer.items() if value is not None}
    if req.task is not TaskType.CLASSIFICATION or given & {"epochs", "max_steps"}:
        return hyper, ()
    opt = hyper.optimizer
    chosen = auto_defaults.resolve(train_rows, opt.batch_size, opt.gradient_accumulation_steps)
    auto = tuple(name for name in auto_defaults.AUTO_FIELDS if name not in given)
    opt = replace(opt, **{name: chosen[name] for name in auto})
    return replace(hyper, optimizer=opt), auto
