"""The client's FeedbackService calls (a mixin of Client) and their result types."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneserve.v1 import feedback_pb2, feedback_pb2_grpc
from tuneserve_client._pb import time_of
from tuneserve_client.reports import Dataset, dataset_from_pb
from tuneserve_client.types import task_from_pb

EXPORT_KINDS = {
    "auto": feedback_pb2.FEEDBACK_EXPORT_KIND_UNSPECIFIED,
    "labels": feedback_pb2.FEEDBACK_EXPORT_KIND_LABELS,
    "completions": feedback_pb2.FEEDBACK_EXPORT_KIND_COMPLETIONS,
    "preference_pairs": feedback_pb2.FEEDBACK_EXPORT_KIND_PREFERENCE_PAIRS,
}


@dataclass(frozen=True)
class Feedback:
    id: str
    prediction_id: str
    adapter_name: str
    adapter_version: int
    task: str
    served_label: str
    served_score: float
    label: str
    correct: bool
    rating: int | None
    corrected_text: str
    input: str
    served_text: str
    comment: str
    predicted_at: datetime | None
    created_at: datetime | None


@dataclass(frozen=True)
class FeedbackConflict:
    text: str
    feedback_label: str
    training_label: str
    adapter_version: int


@dataclass(frozen=True)
class FeedbackExport:
    """ExportFeedback's result: a stored dataset (labels / completions) or JSONL bytes
    (preference pairs), with what was left out and the conflicts with training labels."""

    dataset: Dataset | None
    jsonl: bytes
    rows: int
    skipped: int
    conflicts_with_training: int = 0
    conflicts: list[FeedbackConflict] = field(default_factory=list)


@dataclass(frozen=True)
class FeedbackSettings:
    adapter_name: str
    store_inputs: bool
    update_time: datetime | None


def feedback_from_pb(pb: feedback_pb2.Feedback) -> Feedback:
    return Feedback(
        id=pb.id,
        prediction_id=pb.prediction_id,
        adapter_name=pb.adapter_name,
        adapter_version=pb.adapter_version,
        task=task_from_pb(pb.task),
        served_label=pb.served_label,
        served_score=pb.served_score,
        label=pb.label,
        correct=pb.correct,
        rating=pb.rating if pb.HasField("rating") else None,
        corrected_text=pb.corrected_text,
        input=pb.input,
        served_text=pb.served_text,
        comment=pb.comment,
        predicted_at=time_of(pb, "predicted_at"),
        created_at=time_of(pb, "created_at"),
    )


def _settings_from_pb(pb: feedback_pb2.FeedbackSettings) -> FeedbackSettings:
    return FeedbackSettings(pb.adapter_name, pb.store_inputs, time_of(pb, "update_time"))


class FeedbackMixin:
    """Client methods of FeedbackService (Client supplies the channel and the plumbing)."""

    namespace: str
    _channel: Any
    _call: Callable[..., Any]
    _pages: Callable[..., Any]

    @property
    def _feedback(self) -> feedback_pb2_grpc.FeedbackServiceStub:
        stub = self.__dict__.get("_feedback_stub")
        if stub is None:
            stub = self.__dict__["_feedback_stub"] = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        return stub

    def submit_feedback(
        self,
        prediction_id: str,
        *,
        label: str = "",
        correct: bool = False,
        rating: int | None = None,
        corrected_text: str = "",
        input: str = "",
        served_text: str = "",
        comment: str = "",
        timeout: float | None = None,
    ) -> Feedback:
        """Answer a prediction (its `prediction_id` from predict/generate/stream): the right
        `label` or `correct=True` (classification), a `rating` 1..5 and/or a
        `corrected_text` (generation). Where the adapter does not store inputs, pass the
        `input` (and for a corrected generation the `served_text`)."""
        request = feedback_pb2.SubmitFeedbackRequest(
            namespace=self.namespace,
            prediction_id=prediction_id,
            label=label,
            correct=correct,
            corrected_text=corrected_text,
            input=input,
            served_text=served_text,
            comment=comment,
        )
        if rating is not None:
            request.rating = rating
        return feedback_from_pb(self._call(self._feedback.SubmitFeedback, request, timeout).feedback)

    def list_feedback(
        self, adapter: str = "", *, page_size: int | None = None, timeout: float | None = None
    ) -> Iterator[Feedback]:
        """Feedback, newest first, of every adapter or of `adapter` ("name" or
        "name@version"); pages are fetched lazily."""
        request = feedback_pb2.ListFeedbackRequest(
            namespace=self.namespace, adapter=adapter, page_size=page_size or 0
        )
        return self._pages(self._feedback.ListFeedback, request, "feedback", feedback_from_pb, timeout)

    def export_feedback(
        self, adapter: str, *, kind: str = "auto", display_name: str = "", timeout: float | None = None
    ) -> FeedbackExport:
        """An adapter's feedback as training data: kind "labels" (classification) or
        "completions" (causal LM) store a dataset (train from `result.dataset.id`);
        "preference_pairs" returns {"prompt","chosen","rejected"} JSONL in `result.jsonl`;
        "auto" picks labels or completions by the adapter's task."""
        if kind not in EXPORT_KINDS:
            raise ValueError(f"unknown export kind {kind!r}; one of {', '.join(EXPORT_KINDS)}")
        request = feedback_pb2.ExportFeedbackRequest(
            namespace=self.namespace, adapter=adapter, kind=EXPORT_KINDS[kind], display_name=display_name
        )
        r = self._call(self._feedback.ExportFeedback, request, timeout)
        return FeedbackExport(
            dataset=dataset_from_pb(r.dataset) if r.HasField("dataset") else None,
            jsonl=r.jsonl,
            rows=r.rows,
            skipped=r.skipped,
            conflicts_with_training=r.conflicts_with_training,
            conflicts=[
                FeedbackConflict(c.text, c.feedback_label, c.training_label, c.adapter_version)
                for c in r.conflicts
            ],
        )

    def feedback_settings(self, adapter_name: str, *, timeout: float | None = None) -> FeedbackSettings:
        request = feedback_pb2.GetFeedbackSettingsRequest(namespace=self.namespace, adapter_name=adapter_name)
        return _settings_from_pb(self._call(self._feedback.GetFeedbackSettings, request, timeout).settings)

    def set_feedback_settings(
        self, adapter_name: str, *, store_inputs: bool, timeout: float | None = None
    ) -> FeedbackSettings:
        """Store (or stop storing) the inputs of `adapter_name`'s predictions, so feedback
        needs no `input`. Off by default: inputs may be personal data."""
        request = feedback_pb2.SetFeedbackSettingsRequest(
            namespace=self.namespace, adapter_name=adapter_name, store_inputs=store_inputs
        )
        return _settings_from_pb(self._call(self._feedback.SetFeedbackSettings, request, timeout).settings)
