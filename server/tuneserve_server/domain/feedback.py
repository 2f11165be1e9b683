"""Feedback domain types: what a prediction served (kept so that feedback can refer to it by
id), the feedback on it, each version's live quality, and the per-adapter setting that says
whether served inputs are kept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuneserve_server.domain.jobs import TaskType

# Bounds of what a caller may send with feedback.
MAX_COMMENT_CHARS = 1000
RATING_MIN, RATING_MAX = 1, 5


@dataclass(frozen=True)
class ServedPrediction:
    """One served row, as the predictions table keeps it. `input_text` / `output_text` are
    None unless the adapter's store_inputs setting was on when the row was written."""

    id: str
    namespace: str
    adapter_name: str
    adapter_version: int
    task: TaskType
    label: str = ""  # classification: the served label
    score: float = 0.0  # its probability
    input_text: str | None = None
    output_text: str | None = None  # generation: the served text
    created_at: datetime | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    namespace: str
    prediction_id: str
    adapter_name: str
    adapter_version: int
    task: TaskType
    served_label: str
    served_score: float
    label: str  # classification: the right label ("" when the feedback is a rating only)
    rating: int | None
    corrected_text: str
    input_text: str  # "" when neither stored nor given
    served_text: str
    comment: str
    key_id: str = ""
    predicted_at: datetime | None = None
    created_at: datetime | None = None

    @property
    def correct(self) -> bool:
        return bool(self.label) and self.label == self.served_label


@dataclass(frozen=True)
class FeedbackStats:
    """Live quality of one adapter version from its feedback."""

    answered: int = 0  # classification feedback with a label
    correct: int = 0
    rated: int = 0
    rating_sum: int = 0
    corrected: int = 0  # generations with a corrected text

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0

    @property
    def mean_rating(self) -> float:
        return self.rating_sum / self.rated if self.rated else 0.0


@dataclass(frozen=True)
class FeedbackSettings:
    namespace: str
    adapter_name: str
    store_inputs: bool = False
    updated_at: datetime | None = None  # None: never set
