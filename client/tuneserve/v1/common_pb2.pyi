from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_CLASSIFICATION: _ClassVar[TaskType]
    TASK_TYPE_CAUSAL_LM: _ClassVar[TaskType]
    TASK_TYPE_PREFERENCE: _ClassVar[TaskType]
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_CLASSIFICATION: TaskType
TASK_TYPE_CAUSAL_LM: TaskType
TASK_TYPE_PREFERENCE: TaskType

class ClassificationExample(_message.Message):
    __slots__ = ("text", "label")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    label: str
    def __init__(self, text: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CausalLMExample(_message.Message):
    __slots__ = ("prompt", "completion", "messages")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, prompt: _Optional[str] = ..., completion: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class PreferenceExample(_message.Message):
    __slots__ = ("prompt", "messages", "chosen", "rejected")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    chosen: str
    rejected: str
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., chosen: _Optional[str] = ..., rejected: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("classification", "causal_lm", "preference")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_LM_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    classification: ClassificationExample
    causal_lm: CausalLMExample
    preference: PreferenceExample
    def __init__(self, classification: _Optional[_Union[ClassificationExample, _Mapping]] = ..., causal_lm: _Optional[_Union[CausalLMExample, _Mapping]] = ..., preference: _Optional[_Union[PreferenceExample, _Mapping]] = ...) -> None: ...

class LoraConfig(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class OptimizerConfig(_message.Message):
    __slots__ = ("learning_rate", "batch_size", "epochs", "max_steps", "warmup_ratio", "weight_decay", "seed", "max_seq_length", "gradient_accumulation_steps")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    batch_size: int
    epochs: int
    max_steps: int
    warmup_ratio: float
    weight_decay: float
    seed: int
    max_seq_length: int
    gradient_accumulation_steps: int
    def __init__(self, learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., weight_decay: _Optional[float] = ..., seed: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ...) -> None: ...

class EvaluationConfig(_message.Message):
    __slots__ = ("eval_every_steps", "metric_for_best", "early_stopping_patience", "calibrate", "fit_uncertainty", "abstain_target_precision", "abstain_target_coverage", "ood_false_positive_rate", "baseline", "validation_scheme", "folds", "min_holdout_rows")
    EVAL_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FOR_BEST_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    FIT_UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_TARGET_PRECISION_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_TARGET_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    OOD_FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SCHEME_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    MIN_HOLDOUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    eval_every_steps: int
    metric_for_best: str
    early_stopping_patience: int
    calibrate: bool
    fit_uncertainty: bool
    abstain_target_precision: float
    abstain_target_coverage: float
    ood_false_positive_rate: float
    baseline: bool
    validation_scheme: str
    folds: int
    min_holdout_rows: int
    def __init__(self, eval_every_steps: _Optional[int] = ..., metric_for_best: _Optional[str] = ..., early_stopping_patience: _Optional[int] = ..., calibrate: _Optional[bool] = ..., fit_uncertainty: _Optional[bool] = ..., abstain_target_precision: _Optional[float] = ..., abstain_target_coverage: _Optional[float] = ..., ood_false_positive_rate: _Optional[float] = ..., baseline: _Optional[bool] = ..., validation_scheme: _Optional[str] = ..., folds: _Optional[int] = ..., min_holdout_rows: _Optional[int] = ...) -> None: ...

class CausalLMConfig(_message.Message):
    __slots__ = ("train_on_prompt", "sample_generations")
    TRAIN_ON_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    train_on_prompt: bool
    sample_generations: int
    def __init__(self, train_on_prompt: _Optional[bool] = ..., sample_generations: _Optional[int] = ...) -> None: ...

class PreferenceConfig(_message.Message):
    __slots__ = ("beta", "loss_type", "label_smoothing")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    beta: float
    loss_type: str
    label_smoothing: float
    def __init__(self, beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., label_smoothing: _Optional[float] = ...) -> None: ...

class SearchConfig(_message.Message):
    __slots__ = ("trials", "budget_seconds", "parameters")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    trials: int
    budget_seconds: float
    parameters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trials: _Optional[int] = ..., budget_seconds: _Optional[float] = ..., parameters: _Optional[_Iterable[str]] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("lora", "optimizer", "evaluation", "causal_lm", "preference", "search")
    LORA_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_LM_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    lora: LoraConfig
    optimizer: OptimizerConfig
    evaluation: EvaluationConfig
    causal_lm: CausalLMConfig
    preference: PreferenceConfig
    search: SearchConfig
    def __init__(self, lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationConfig, _Mapping]] = ..., causal_lm: _Optional[_Union[CausalLMConfig, _Mapping]] = ..., preference: _Optional[_Union[PreferenceConfig, _Mapping]] = ..., search: _Optional[_Union[SearchConfig, _Mapping]] = ...) -> None: ...
