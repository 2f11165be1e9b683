"""Limits a deployment puts on what callers may submit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuneserve_server.domain.jobs import TaskType


@dataclass(frozen=True)
class TrainLimits:
    """What the serving deployment accepts; built from Settings and the loaded base model."""

    served_task: TaskType
    base_model: str
    max_train_examples: int
    max_text_chars: int
    max_lora_rank: int
    linear_modules: frozenset[str]
    default_targets: tuple[str, ...]
    max_positions: int = 512
    max_search_trials: int = 20  # hyperparameters.search.trials at most this many
    # Token counter for the data report's length checks (a tokenizer of the served base that
    # is safe to call off the torch thread); None: lengths are not measured.
    count_tokens: Callable[[list[str]], list[int]] | None = None


# Causal LM: the most alternatives a request may ask for at each generated token
# (`top_logprobs`; OpenAI's own bound). GetServerInfo reports it.
MAX_TOP_LOGPROBS = 20
