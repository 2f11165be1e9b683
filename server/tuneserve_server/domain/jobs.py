"""Job domain types: the spec a caller submits, the job record and its state machine."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from tuneserve_server.domain.aliases import PromotionSettings


class TaskType(str, enum.Enum):
    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"
    PREFERENCE = "preference"  # DPO on a causal LM; its adapters are causal-LM adapters

    @property
    def family(self) -> TaskType:
        """The base-model family the task trains on (what a deployment serves)."""
        return TaskType.CAUSAL_LM if self is TaskType.PREFERENCE else self


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float = 2e-3
    batch_size: int = 32
    epochs: int = 4
    max_steps: int = 0
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    max_seq_length: int = 128
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class EvaluationSettings:
    eval_every_steps: int = 0  # 0: at the end of every epoch
    metric_for_best: str = ""  # "": the task's default (macro_f1 / eval_loss)
    early_stopping_patience: int = 0  # 0: never stop early
    calibrate: bool = True
    # Classification uncertainty (prediction sets, abstention, out-of-domain), fitted on
    # validation; a coverage target > 0 replaces the precision target.
    fit_uncertainty: bool = True
    abstain_target_precision: float = 0.95
    abstain_target_coverage: float = 0.0
    ood_false_positive_rate: float = 0.05
    # Classification: also fit logistic regression on the frozen base embeddings and report it
    # beside the adapter (a WARNING when the adapter does not beat it).
    baseline: bool = True
    # Classification: "holdout", "kfold" (k-fold cross-validation on the training rows, the
    # published adapter trained on all of them), or "auto": kfold when no validation rows were
    # given and the hold-out would have fewer than `min_holdout_rows` rows. A queued job's spec
    # holds the scheme chosen ("auto" only in jobs queued before the setting existed: holdout).
    validation_scheme: str = "auto"
    folds: int = 5
    min_holdout_rows: int = 200


@dataclass(frozen=True)
class CausalLMSettings:
    train_on_prompt: bool = False
    sample_generations: int = 3


PREFERENCE_LOSSES = ("sigmoid", "ipo")


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float = 0.1
    loss_type: str = ""  # "" = "sigmoid"; or "ipo"
    label_smoothing: float = 0.0


SEARCH_PARAMETERS = ("learning_rate", "steps", "lora_rank")
DEFAULT_SEARCH_PARAMETERS = ("learning_rate", "steps")


@dataclass(frozen=True)
class SearchSettings:
    """Classification: a hyperparameter search inside the job (training/search.py); trials 0 is
    no search. budget_seconds 0: no time limit (the trials are still capped by the server's
    max_search_trials). parameters: a subset of SEARCH_PARAMETERS; () is the default pair."""

    trials: int = 0
    budget_seconds: float = 0.0
    parameters: tuple[str, ...] = ()

    @property
    def searched(self) -> tuple[str, ...]:
        return self.parameters or DEFAULT_SEARCH_PARAMETERS


@dataclass(frozen=True)
class Hyperparameters:
    lora: LoraSettings = field(default_factory=LoraSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    causal_lm: CausalLMSettings = field(default_factory=CausalLMSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    search: SearchSettings = field(default_factory=SearchSettings)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # Written only when set, so a spec without a search keeps the fingerprint it always had.
        if self.search == SearchSettings():
            del out["search"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparameters:
        # Rows written before a section existed read back with that section's defaults.
        lora = dict(data.get("lora", {}))
        lora["target_modules"] = tuple(lora.get("target_modules", ()))
        search = dict(data.get("search", {}))
        search["parameters"] = tuple(search.get("parameters", ()))
        return cls(
            LoraSettings(**lora),
            OptimizerSettings(**data.get("optimizer", {})),
            EvaluationSettings(**data.get("evaluation", {})),
            CausalLMSettings(**data.get("causal_lm", {})),
            PreferenceSettings(**data.get("preference", {})),
            SearchSettings(**search),
        )


@dataclass(frozen=True)
class LabelledText:
    """A classification example."""

    text: str
    label: str


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class CausalExample:
    """A causal-LM example: prompt + completion, or a conversation whose last turn is the
    assistant reply to learn."""

    prompt: str = ""
    completion: str = ""
    messages: tuple[ChatTurn, ...] = ()

    def conversation(self) -> tuple[ChatTurn, ...]:
        """The example as chat turns; the last one is the assistant reply."""
        if self.messages:
            return self.messages
        return (ChatTurn("user", self.prompt), ChatTurn("assistant", self.completion))

    def to_json(self) -> dict[str, Any]:
        if self.messages:
            return {"messages": [[m.role, m.content] for m in self.messages]}
        return {"prompt": self.prompt, "completion": self.completion}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CausalExample:
        if "messages" in data:
            return cls(messages=tuple(ChatTurn(r, c) for r, c in data["messages"]))
        return cls(prompt=data["prompt"], completion=data["completion"])


@dataclass(frozen=True)
class PreferenceExample:
    """A preference pair: a prompt (or the conversation so far, ending before the reply)
    and two assistant replies to it, the chosen (better) one and the rejected one."""

    prompt: str = ""
    chosen: str = ""
    rejected: str = ""
    messages: tuple[ChatTurn, ...] = ()  # the prompt as turns; none of them the reply

    def prompt_turns(self) -> tuple[ChatTurn, ...]:
        """The prompt as chat turns (what comes before either reply)."""
        return self.messages if self.messages else (ChatTurn("user", self.prompt),)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chosen": self.chosen, "rejected": self.rejected}
        if self.messages:
            out["messages"] = [[m.role, m.content] for m in self.messages]
        else:
            out["prompt"] = self.prompt
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreferenceExample:
        return cls(
            prompt=data.get("prompt", ""),
            chosen=data["chosen"],
            rejected=data["rejected"],
            messages=tuple(ChatTurn(r, c) for r, c in data.get("messages", ())),
        )


Example = LabelledText | CausalExample | PreferenceExample


def _example_json(e: Example) -> Any:
    return [e.text, e.label] if isinstance(e, LabelledText) else e.to_json()


def _example_from_json(data: Any) -> Example:
    if isinstance(data, dict):
        return PreferenceExample.from_json(data) if "chosen" in data else CausalExample.from_json(data)
    return LabelledText(*data)


@dataclass(frozen=True)
class JobSpec:
    """What a caller asked for, validated, with defaults resolved."""

    namespace: str
    adapter_name: str
    task: TaskType
    request_id: str
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    hyperparameters: Hyperparameters
    dataset_id: str = ""
    validation_dataset_id: str = ""
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    # Continued training: the version to start from, resolved and pinned at Train time
    # ("name@3"; "" from scratch), and what the caller wrote ("name@prod").
    init_from: str = ""
    init_from_requested: str = ""
    # if_better: the pinned evaluation rows both versions are scored on (the eval dataset's
    # rows, or the adapter's stored evaluation set), and where they came from.
    promotion_eval: tuple[Example, ...] = ()
    promotion_eval_source: str = ""
    # The optimizer settings the caller left unset and the service chose from the data size
    # (training/auto_defaults.py), e.g. ("epochs", "learning_rate"): reported when the job runs.
    auto_hyperparameters: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        # Written only when set, so a spec without them keeps the fingerprint it always had.
        if self.promotion != PromotionSettings():
            extra["promotion"] = self.promotion.to_dict()
        if self.init_from:
            extra["init_from"] = self.init_from
            extra["init_from_requested"] = self.init_from_requested
        if self.promotion_eval:
            extra["promotion_eval"] = [_example_json(e) for e in self.promotion_eval]
            extra["promotion_eval_source"] = self.promotion_eval_source
        return {
            **extra,
            "namespace": self.namespace,
            "adapter_name": self.adapter_name,
            "task": self.task.value,
            "request_id": self.request_id,
            "train": [_example_json(e) for e in self.train],
            "validation": [_example_json(e) for e in self.validation],
            "hyperparameters": self.hyperparameters.to_dict(),
            "dataset_id": self.dataset_id,
            "validation_dataset_id": self.validation_dataset_id,
            "auto_hyperparameters": list(self.auto_hyperparameters),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            namespace=data["namespace"],
            adapter_name=data["adapter_name"],
            task=TaskType(data["task"]),
            request_id=data["request_id"],
            train=tuple(_example_from_json(e) for e in data["train"]),
            validation=tuple(_example_from_json(e) for e in data["validation"]),
            hyperparameters=Hyperparameters.from_dict(data["hyperparameters"]),
            dataset_id=data.get("dataset_id", ""),
            validation_dataset_id=data.get("validation_dataset_id", ""),
            promotion=PromotionSettings.from_dict(data.get("promotion")),
            init_from=data.get("init_from", ""),
            init_from_requested=data.get("init_from_requested", ""),
            promotion_eval=tuple(_example_from_json(e) for e in data.get("promotion_eval", ())),
            promotion_eval_source=data.get("promotion_eval_source", ""),
            auto_hyperparameters=tuple(data.get("auto_hyperparameters", ())),
        )


@dataclass(frozen=True)
class JobProgress:
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None
    learning_rate: float | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Job:
    id: str
    namespace: str
    adapter_name: str
    task: TaskType
    state: JobState
    request_id: str
    hyperparameters: Hyperparameters
    train_examples: int
    validation_examples: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = field(default_factory=JobProgress)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    adapter_version: int = 0
    attempts: int = 0
    cancel_requested: bool = False
    dataset_id: str = ""
    validation_dataset_id: str = ""
    data_report: dict[str, Any] = field(default_factory=dict)  # DataReport.to_dict()
    # Causal LM: [{"prompt", "reference", "generated"}, ...] from the final adapter.
    sample_generations: list[dict[str, str]] = field(default_factory=list)
    resumed_from_step: int = 0
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    # What happened to `default` when the job succeeded: {"promoted", "reason", and for
    # if_better "metric", "new_score", "current_score", "compared_version", ...}.
    promotion_result: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # the pinned version continued training started from ("" scratch)
    init_from_requested: str = ""


class EventType(str, enum.Enum):
    STATE = "state"
    PROGRESS = "progress"
    EVALUATION = "evaluation"
    CHECKPOINT = "checkpoint"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log; `sequence` is 1, 2, 3, ... per job, without gaps."""

    job_id: str
    type: EventType
    sequence: int = 0  # assigned by the store on append
    time: datetime | None = None
    state: JobState | None = None
    progress: JobProgress | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
