"""What the feedback flows ask of the store (SqlStore implements it: storage/sql_feedback.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tuneserve_server.domain.feedback import FeedbackRecord, FeedbackSettings, FeedbackStats, ServedPrediction


class FeedbackStore(Protocol):
    def insert_predictions(self, rows: Sequence[ServedPrediction]) -> int: ...

    def get_prediction(self, namespace: str, prediction_id: str) -> ServedPrediction: ...

    def sweep_predictions(self, retention_s: float, max_per_namespace: int) -> int: ...

    def count_predictions(self, namespace: str) -> int: ...

    def feedback_settings(self, namespace: str, name: str) -> FeedbackSettings: ...

    def store_inputs_of(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]: ...

    def set_feedback_settings(self, namespace: str, name: str, store_inputs: bool) -> FeedbackSettings: ...

    def upsert_feedback(
        self, record: FeedbackRecord, *, max_per_namespace: int
    ) -> tuple[FeedbackRecord, bool]: ...

    def list_feedback(
        self,
        namespace: str,
        *,
        adapter_name: str = "",
        version: int | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[FeedbackRecord], str]: ...

    def feedback_of(
        self, namespace: str, adapter_name: str, version: int | None = None
    ) -> list[FeedbackRecord]: ...

    def feedback_stats(self, namespace: str, adapter_name: str) -> dict[int, FeedbackStats]: ...

    def job_training_rows(self, namespace: str, job_id: str) -> list[tuple[str, str]]: ...
